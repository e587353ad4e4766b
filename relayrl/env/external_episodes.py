"""The episodes of an external env (``external_env.py``) and the news its sampler has not polled yet: what the
simulator's calls change and ``poll()`` / ``send_actions()`` read, behind one lock. The errors are re-exported by
``relayrl.env.external_env``."""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import CancelledError
from typing import Any, Callable

from relayrl.env.base_env import ALL

logger = logging.getLogger(__name__)
_KEEP_ENDED = 100_000  # ended episode ids remembered: their reuse and late calls get a precise error


class ExternalEnvError(RuntimeError):
    """The external env cannot go on: run() raised or returned, it was closed, or nothing came for too long."""


class UnknownEpisodeError(LookupError):
    """A call named an episode id that was never started, or whose episode has ended."""


class TooManyEpisodesError(RuntimeError):
    """start_episode while ``max_concurrent`` episodes are running."""


class EpisodeStateError(RuntimeError):
    """A call that does not fit the episode's state (e.g. a second get_action while one is waiting)."""


class ActionFuture:
    """The action a get_action waits for, as a ``concurrent.futures.Future`` offers it (``result(timeout)``,
    ``done``, ``cancel``, ``add_done_callback``, ...) at a fraction of its cost: a plain lock, and an Event made only
    when a thread blocks on ``result`` (a server waits with a callback). Settled once, by ``_settle``."""

    __slots__ = ("_lock", "_state", "_value", "_callbacks", "_event")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _PENDING
        self._value: Any = None
        self._callbacks: list | None = None
        self._event: threading.Event | None = None

    def done(self) -> bool:
        return self._state is not _PENDING

    def cancelled(self) -> bool:
        return self._state is _CANCELLED

    def cancel(self) -> bool:
        return self._settle(_CANCELLED, None) or self._state is _CANCELLED

    def set_result(self, result: Any) -> bool:
        return self._settle(_RESULT, result)

    def set_exception(self, error: BaseException) -> bool:
        return self._settle(_ERROR, error)

    def add_done_callback(self, fn: Callable[[ActionFuture], Any]) -> None:
        with self._lock:
            if self._state is _PENDING:
                self._callbacks = [*(self._callbacks or ()), fn]
                return
        fn(self)

    def result(self, timeout: float | None = None) -> Any:
        if self._state is _PENDING:
            with self._lock:
                if self._state is _PENDING and self._event is None:
                    self._event = threading.Event()
            if self._event is not None:
                self._event.wait(timeout)
        if self._state is _RESULT:
            return self._value
        if self._state is _ERROR:
            raise self._value
        if self._state is _CANCELLED:
            raise CancelledError()
        raise TimeoutError(f"no action within {timeout} s")

    def _settle(self, state: object, value: Any) -> bool:
        with self._lock:
            if self._state is not _PENDING:
                return False
            self._state, self._value = state, value
            callbacks, event = self._callbacks, self._event
        if event is not None:
            event.set()
        for fn in callbacks or ():
            try:
                fn(self)
            except Exception:  # as concurrent.futures does: a callback's error is not the settler's
                logger.exception("a callback of a get_action's ActionFuture failed")
        return True


_PENDING, _RESULT, _ERROR, _CANCELLED = object(), object(), object(), object()
_NO_ACTIONS: dict = {}  # an observation without logged actions (read only: poll() hands out only logged ones)


class _Episode:
    __slots__ = ("episode_id", "training_enabled", "items", "waiting", "rewards", "infos", "last_obs", "last_call")

    def __init__(self, episode_id: str, training_enabled: bool):
        self.episode_id = episode_id
        self.training_enabled = training_enabled
        self.items: collections.deque = collections.deque()  # news not yet polled, oldest first
        self.waiting: ActionFuture | None = None  # the get_action whose action the sampler has not sent yet
        self.rewards: dict = {}  # agent -> reward logged since its last observation
        self.infos: dict = {}  # agent -> info logged since its last observation
        self.last_obs: dict = {}  # agent -> its latest observation (also: the agents seen)
        self.last_call = time.monotonic()


class _EpisodeBook:
    """The episodes of one external env and the news the sampler has not polled yet; thread safe (one lock)."""

    def __init__(self, owner: str, max_concurrent: int, unwrap: Callable[[dict], Any]):
        self.owner = owner
        self.max_concurrent = max_concurrent
        self.unwrap = unwrap  # the sampler's {agent: action} -> what get_action returns
        self.cond = threading.Condition()
        self.episodes: dict[str, _Episode] = {}
        self.ready: dict[str, None] = {}  # episode ids with news, in arrival order (an ordered set)
        self.owed: dict[str, tuple[ActionFuture, list]] = {}  # polled get_actions: env_id -> (future, agents to act)
        self.ended: collections.OrderedDict[str, bool] = collections.OrderedDict()  # id -> training_enabled
        self.finished: dict[str, _Episode] = {}  # ended episodes whose last news is not polled yet
        self.pending = 0  # observations queued and not polled yet, over all episodes
        self.waiting_for_room = 0  # log_action calls held back by max_pending_steps
        self.closed = False
        self.last_news = time.monotonic()

    # --- the simulator's side ---------------------------------------------------------------------------------
    def start(self, episode_id: str | None, training_enabled: bool) -> str:
        if episode_id is None:
            episode_id = uuid.uuid4().hex
        elif not isinstance(episode_id, str) or not episode_id:
            raise ValueError(f"{self.owner}: episode_id must be a non-empty str or None, got {episode_id!r}")
        with self.cond:
            self._check_open()
            if episode_id in self.episodes:
                raise EpisodeStateError(f"{self.owner}: episode {episode_id!r} is already running")
            if episode_id in self.ended:
                raise EpisodeStateError(f"{self.owner}: episode id {episode_id!r} was used by an ended episode")
            if len(self.episodes) >= self.max_concurrent:
                raise TooManyEpisodesError(
                    f"{self.owner}: {len(self.episodes)} episodes are running, max_concurrent={self.max_concurrent};"
                    " end one before starting another (or raise max_concurrent)"
                )
            self.episodes[episode_id] = _Episode(episode_id, bool(training_enabled))
        return episode_id

    def observe(
        self, episode_id: str, obs: dict, off_policy: dict | None = None, final: bool = False, truncated: bool = False
    ) -> ActionFuture | None:
        """Queues an observation (get_action: returns the future of its action; log_action; end_episode)."""
        self._check_obs(episode_id, obs, final)
        if off_policy is not None and set(off_policy) != set(obs):
            raise ValueError(
                f"{self.owner}: episode {episode_id!r}: log_action needs one action per agent observed, got actions"
                f" for {sorted(off_policy, key=str)} and observations of {sorted(obs, key=str)}"
            )
        with self.cond:
            ep = self._idle(episode_id)
            ep.last_call = time.monotonic()
            if final:
                self._end(ep)
                if not ep.last_obs:
                    del self.finished[episode_id]
                    return None  # no observation ever: nothing to learn from, nothing to report
                obs = dict(obs) or dict(ep.last_obs)
            future = None if final or off_policy is not None else ActionFuture()
            rewards = dict.fromkeys(obs, 0.0)
            infos = {a: {} for a in obs}
            if ep.rewards:
                rewards.update(ep.rewards)
                ep.rewards = {}
            if ep.infos:
                infos.update(ep.infos)
                ep.infos = {}
            ep.last_obs.update(obs)
            if final:
                agents = set(obs) | set(rewards)
                terminateds = {**{a: not truncated for a in agents}, ALL: not truncated}
                truncateds = {**{a: bool(truncated) for a in agents}, ALL: bool(truncated)}
            else:
                terminateds, truncateds = {ALL: False}, {ALL: False}
            logged = dict(off_policy) if off_policy else _NO_ACTIONS
            ep.items.append((dict(obs), rewards, terminateds, truncateds, infos, logged, future))
            self.pending += 1
            ep.waiting = future
            self.last_news = ep.last_call
            if episode_id not in self.owed:
                if not self.ready:  # poll() waits only while nothing is ready: one wake-up per batch of news
                    self.cond.notify_all()
                self.ready[episode_id] = None
            return future

    def ask(self, episode_id: str, obs: dict) -> tuple[dict, ActionFuture]:
        """A get_action that its caller answers itself (``answer``), not queued for ``poll()``: an env acting on
        the server's own thread (``relayrl serve``). The same checks and book-keeping as ``observe``; returns the
        rewards logged since the episode's last observation ({agent: reward}, only those logged) and the future."""
        self._check_obs(episode_id, obs, False)
        with self.cond:
            ep = self._idle(episode_id)
            ep.last_call = self.last_news = time.monotonic()
            ep.waiting = future = ActionFuture()
            ep.last_obs.update(obs)
            rewards = ep.rewards
            if rewards:
                ep.rewards = {}
            if ep.infos:
                ep.infos = {}
            return rewards, future

    def answer(self, asked: list) -> None:
        """Settles asked get_actions: ``asked`` holds (episode id, future, action) triples."""
        with self.cond:
            now = time.monotonic()
            for episode_id, future, _ in asked:
                self._answered(episode_id, future, now)
        for _, future, action in asked:
            _settle(future, result=action)

    def wait_for_room(self, max_pending: int) -> None:
        """Blocks while ``max_pending`` observations wait for the sampler (until it polls, or the env closes)."""
        with self.cond:
            while self.pending >= max_pending and not self.closed:
                self.waiting_for_room += 1
                try:
                    self.cond.wait(1.0)
                finally:
                    self.waiting_for_room -= 1

    def reward(self, episode_id: str, rewards: Mapping, infos: Mapping | None) -> None:
        for agent, r in rewards.items():
            if isinstance(r, bool) or not isinstance(r, (int, float)) and not hasattr(r, "__float__"):
                raise ValueError(f"{self.owner}: episode {episode_id!r}: reward of {agent!r} is {r!r}, not a number")
            if not math.isfinite(float(r)):
                raise ValueError(f"{self.owner}: episode {episode_id!r}: reward of {agent!r} is {float(r)}")
        with self.cond:
            ep = self._get(episode_id)
            for agent, r in rewards.items():
                if agent not in ep.last_obs:
                    raise EpisodeStateError(
                        f"{self.owner}: episode {episode_id!r}: reward for agent {agent!r}, which has had no"
                        " observation in this episode yet (a reward needs a step to land on)"
                    )
                ep.rewards[agent] = ep.rewards.get(agent, 0.0) + float(r)
            for agent, info in (infos or {}).items():
                ep.infos[agent] = info
            ep.last_call = time.monotonic()

    def end_idle(self, max_idle_s: float) -> list[str]:
        """Ends (truncated, at their last observation) the episodes that had no call for ``max_idle_s`` and are
        not waiting for an action; returns their ids."""
        now, idle = time.monotonic(), []
        with self.cond:
            for ep in list(self.episodes.values()):
                if ep.waiting is None and now - ep.last_call > max_idle_s:
                    idle.append(ep.episode_id)
        for episode_id in idle:
            try:
                self.observe(episode_id, {}, final=True, truncated=True)
            except (UnknownEpisodeError, EpisodeStateError):
                pass  # a call came in between
        return idle

    # --- the sampler's side -----------------------------------------------------------------------------------
    def poll(self, timeout_s: float, idle_s: float | None, check: Callable[[], None]) -> tuple:
        start = time.monotonic()
        with self.cond:
            while not self.ready:
                self._check_open()
                check()
                now = time.monotonic()
                if idle_s is not None and now - start >= idle_s:
                    return {}, {}, {}, {}, {}, {}  # no news for idle_s: the sampler hands back what it has
                left = self.last_news + timeout_s - now
                if left <= 0:
                    owed = f"; actions never sent for {sorted(self.owed)}" if self.owed else ""
                    raise ExternalEnvError(
                        f"{self.owner}: no episode sent anything for {timeout_s:.0f} s (poll_timeout_s);"
                        f" {len(self.episodes)} episodes running{owed}"
                    )
                self.cond.wait(min(left, 0.25, idle_s or 0.25))
            out: tuple[dict, ...] = ({}, {}, {}, {}, {}, {})
            for episode_id in list(self.ready):
                ep = self.episodes.get(episode_id) or self.finished[episode_id]
                obs, rewards, terminateds, truncateds, infos, off_policy, future = ep.items.popleft()
                self.pending -= 1
                out[0][episode_id], out[1][episode_id], out[2][episode_id] = obs, rewards, terminateds
                out[3][episode_id], out[4][episode_id] = truncateds, infos
                if off_policy:
                    out[5][episode_id] = off_policy
                if future is not None:
                    self.owed[episode_id] = (future, list(obs))
                if future is not None or not ep.items:
                    del self.ready[episode_id]
                if not ep.items and episode_id not in self.episodes:
                    self.finished.pop(episode_id, None)
            if self.waiting_for_room:
                self.cond.notify_all()
            return out

    def send(self, actions: Mapping) -> None:
        with self.cond:
            for env_id, agent_actions in actions.items():
                if env_id not in self.owed:
                    raise EpisodeStateError(
                        f"{self.owner}: send_actions for env_id {env_id!r}, which is not waiting for actions"
                        " (not polled, already answered, or its agents all had off-policy actions)"
                    )
                agents = self.owed[env_id][1]
                if not _one_per_agent(agent_actions, agents):
                    got = sorted(agent_actions, key=str) if isinstance(agent_actions, Mapping) else agent_actions
                    raise EpisodeStateError(
                        f"{self.owner}: send_actions for env_id {env_id!r} must hold exactly one action per agent"
                        f" polled, {agents}; got {got!r}"
                    )
            now = time.monotonic()
            for env_id, agent_actions in actions.items():
                future, _ = self.owed.pop(env_id)
                self._answered(env_id, future, now)
                _settle(future, result=self.unwrap(agent_actions))

    def training_enabled(self, episode_id: str) -> bool:
        with self.cond:
            ep = self.episodes.get(episode_id)
            if ep is not None:
                return ep.training_enabled
            if episode_id in self.ended:
                return self.ended[episode_id]
        raise UnknownEpisodeError(f"{self.owner}: unknown episode id {episode_id!r}")

    def close(self) -> None:
        with self.cond:
            self.closed = True
            for ep in self.episodes.values():
                if ep.waiting is not None:
                    _settle(ep.waiting, error=ExternalEnvError(f"{self.owner} was closed"))
            self.cond.notify_all()

    # --- parts ------------------------------------------------------------------------------------------------
    def _end(self, ep: _Episode) -> None:
        del self.episodes[ep.episode_id]
        self.finished[ep.episode_id] = ep
        self.ended[ep.episode_id] = ep.training_enabled
        while len(self.ended) > _KEEP_ENDED:
            self.ended.popitem(last=False)

    def _check_obs(self, episode_id: str, obs: Any, final: bool) -> None:
        """An observation dict of one or more agents (empty only for an episode's end), ``ALL`` not among them."""
        if not (type(obs) is dict or isinstance(obs, Mapping)) or (not obs and not final):
            raise ValueError(f"{self.owner}: episode {episode_id!r}: the observation dict is empty or not a dict")
        if ALL in obs:
            raise ValueError(f"{self.owner}: {ALL!r} is not an agent id")

    def _idle(self, episode_id: Any) -> _Episode:
        """The running episode ``episode_id``, which must not be waiting for an action (under ``cond``)."""
        ep = self._get(episode_id)
        if ep.waiting is not None:
            raise EpisodeStateError(
                f"{self.owner}: episode {episode_id!r}: get_action is still waiting for its action; calls for one"
                " episode must not overlap"
            )
        return ep

    def _answered(self, episode_id: str, future: ActionFuture, now: float) -> None:
        """The episode whose get_action ``future`` is answered waits no more; its queued news is ready (under
        ``cond``)."""
        ep = self.episodes.get(episode_id)
        if ep is not None and ep.waiting is future:
            ep.waiting = None
            ep.last_call = now
            if ep.items:
                self.ready[episode_id] = None

    def _get(self, episode_id: Any) -> _Episode:
        self._check_open()
        ep = self.episodes.get(episode_id)
        if ep is None:
            why = "has ended" if episode_id in self.ended else "was never started (call start_episode first)"
            raise UnknownEpisodeError(f"{self.owner}: episode {episode_id!r} {why}")
        return ep

    def _check_open(self) -> None:
        if self.closed:
            raise ExternalEnvError(f"{self.owner} is closed")


def _one_per_agent(actions: Any, agents: list) -> bool:
    """Whether ``actions`` is a dict keyed by exactly ``agents`` (distinct ids)."""
    if type(actions) is not dict and not isinstance(actions, Mapping):
        return False
    return len(actions) == len(agents) and all(a in actions for a in agents)


def _settle(future: ActionFuture, result: Any = None, error: BaseException | None = None) -> None:
    """Completes a get_action's future unless it was cancelled (its HTTP caller gave up) or already completed."""
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
