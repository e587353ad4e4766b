"""ExternalEnv: episodes driven by a simulator from its own thread; the sampler answers with actions.

The simulator (a game server, another process behind ``relayrl.serving.PolicyServer``, anything) decides when
episodes start and end and asks for actions; the trainer's sampler reaches it as a ``PollingEnv``
(``relayrl/env/base_env.py``) whose ``env_id`` is the episode id. Subclass, implement ``run()``::

    class MySim(ExternalEnv):
        def run(self):                                       # runs in its own daemon thread, forever
            while True:
                eid = self.start_episode()
                obs = sim.reset()
                while True:
                    action = self.get_action(eid, obs)       # blocks until the sampler sent the action
                    obs, reward, done = sim.step(action)
                    self.log_returns(eid, reward)
                    if done:
                        self.end_episode(eid, obs)
                        break

and the sampler drives it (it calls ``start()``, or the first ``poll()`` does)::

    obs, rewards, terminateds, truncateds, infos, off_policy_actions = env.poll()    # blocks until news
    env.send_actions({eid: {agent_id: action} for eid in obs for agent_id in obs[eid]
                      if agent_id not in off_policy_actions.get(eid, {})})

A single-agent ``ExternalEnv`` reports every episode under the one agent id ``_DUMMY_AGENT_ID`` ("agent0");
``ExternalMultiAgentEnv`` takes and returns dicts keyed by agent id instead (the agents in an observation dict
act next, as in ``MultiAgentEnv``). ``log_action`` reports an action the simulator chose itself (off-policy:
``off_policy_actions``); ``log_returns`` adds reward to the step the next observation closes; ``end_episode``
closes the episode (``terminateds["__all__"]``; with ``truncated=True`` ``truncateds["__all__"]`` instead).
Calls for one episode must not overlap (one get_action at a time); different episodes may be driven by any
number of threads at once. An episode that has had no observation when it ends is dropped (nothing to learn).
"""

from __future__ import annotations

import collections
import math
import threading
import time
import traceback
import uuid
from collections.abc import Hashable, Mapping
from concurrent.futures import Future
from typing import Any, Callable

from relayrl.env.base_env import ALL, PollingEnv

_DUMMY_AGENT_ID = "agent0"  # the agent id of every single-agent ExternalEnv episode in poll() and send_actions()
_KEEP_ENDED = 100_000  # ended episode ids remembered: their reuse and late calls get a precise error


class ExternalEnvError(RuntimeError):
    """The external env cannot go on: run() raised or returned, it was closed, or nothing came for too long."""


class UnknownEpisodeError(LookupError):
    """A call named an episode id that was never started, or whose episode has ended."""


class TooManyEpisodesError(RuntimeError):
    """start_episode while ``max_concurrent`` episodes are running."""


class EpisodeStateError(RuntimeError):
    """A call that does not fit the episode's state (e.g. a second get_action while one is waiting)."""


class _Episode:
    __slots__ = ("episode_id", "training_enabled", "items", "waiting", "rewards", "infos", "last_obs", "last_call")

    def __init__(self, episode_id: str, training_enabled: bool):
        self.episode_id = episode_id
        self.training_enabled = training_enabled
        self.items: collections.deque = collections.deque()  # news not yet polled, oldest first
        self.waiting: Future | None = None  # the get_action whose action the sampler has not sent yet
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
        self.owed: dict[str, tuple[Future, list]] = {}  # polled get_actions: env_id -> (future, agents to act)
        self.ended: collections.OrderedDict[str, bool] = collections.OrderedDict()  # id -> training_enabled
        self.finished: dict[str, _Episode] = {}  # ended episodes whose last news is not polled yet
        self.closed = False

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
    ) -> Future | None:
        """Queues an observation (get_action: returns the Future of its action; log_action; end_episode)."""
        if not isinstance(obs, Mapping) or (not obs and not final):
            raise ValueError(f"{self.owner}: episode {episode_id!r}: the observation dict is empty or not a dict")
        if ALL in obs:
            raise ValueError(f"{self.owner}: {ALL!r} is not an agent id")
        if off_policy is not None and set(off_policy) != set(obs):
            raise ValueError(
                f"{self.owner}: episode {episode_id!r}: log_action needs one action per agent observed, got actions"
                f" for {sorted(off_policy, key=str)} and observations of {sorted(obs, key=str)}"
            )
        with self.cond:
            ep = self._get(episode_id)
            if ep.waiting is not None:
                raise EpisodeStateError(
                    f"{self.owner}: episode {episode_id!r}: get_action is still waiting for its action; calls for"
                    " one episode must not overlap"
                )
            ep.last_call = time.monotonic()
            if final:
                self._end(ep)
                if not ep.last_obs:
                    del self.finished[episode_id]
                    return None  # no observation ever: nothing to learn from, nothing to report
                obs = dict(obs) or dict(ep.last_obs)
            future = None if final or off_policy is not None else Future()
            rewards = {a: 0.0 for a in obs}
            rewards.update(ep.rewards)
            infos = {a: {} for a in obs}
            infos.update(ep.infos)
            ep.rewards, ep.infos = {}, {}
            ep.last_obs.update(obs)
            if final:
                agents = set(obs) | set(rewards)
                terminateds = {**{a: not truncated for a in agents}, ALL: not truncated}
                truncateds = {**{a: bool(truncated) for a in agents}, ALL: bool(truncated)}
            else:
                terminateds, truncateds = {ALL: False}, {ALL: False}
            ep.items.append((dict(obs), rewards, terminateds, truncateds, infos, dict(off_policy or {}), future))
            ep.waiting = future
            if episode_id not in self.owed:
                if not self.ready:  # poll() waits only while nothing is ready: one wake-up per batch of news
                    self.cond.notify_all()
                self.ready[episode_id] = None
            return future

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
    def poll(self, timeout_s: float, check: Callable[[], None]) -> tuple:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not self.ready:
                self._check_open()
                check()
                left = deadline - time.monotonic()
                if left <= 0:
                    owed = f"; actions never sent for {sorted(self.owed)}" if self.owed else ""
                    raise ExternalEnvError(
                        f"{self.owner}: no episode sent anything for {timeout_s:.0f} s (poll_timeout_s);"
                        f" {len(self.episodes)} episodes running{owed}"
                    )
                self.cond.wait(min(left, 0.25))
            out: tuple[dict, ...] = ({}, {}, {}, {}, {}, {})
            for episode_id in list(self.ready):
                ep = self.episodes.get(episode_id) or self.finished[episode_id]
                obs, rewards, terminateds, truncateds, infos, off_policy, future = ep.items.popleft()
                for column, value in zip(out, (obs, rewards, terminateds, truncateds, infos)):
                    column[episode_id] = value
                if off_policy:
                    out[5][episode_id] = off_policy
                if future is not None:
                    self.owed[episode_id] = (future, list(obs))
                if future is not None or not ep.items:
                    del self.ready[episode_id]
                if not ep.items and episode_id not in self.episodes:
                    self.finished.pop(episode_id, None)
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
                if not isinstance(agent_actions, Mapping) or set(agent_actions) != set(agents):
                    got = sorted(agent_actions, key=str) if isinstance(agent_actions, Mapping) else agent_actions
                    raise EpisodeStateError(
                        f"{self.owner}: send_actions for env_id {env_id!r} must hold exactly one action per agent"
                        f" polled, {agents}; got {got!r}"
                    )
            for env_id, agent_actions in actions.items():
                future, _ = self.owed.pop(env_id)
                ep = self.episodes.get(env_id)
                if ep is not None and ep.waiting is future:
                    ep.waiting = None
                    ep.last_call = time.monotonic()
                    if ep.items:
                        self.ready[env_id] = None
                _settle(future, result=self.unwrap(dict(agent_actions)))

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


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Completes a get_action's future unless it was cancelled (its HTTP caller gave up) or already completed."""
    if future.done() or not future.set_running_or_notify_cancel():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ExternalEnv(PollingEnv):
    """A single-agent env whose episodes a simulator drives from ``run()`` (see the module docstring).

    Args:
        action_space: the action space of the episodes (what ``get_action`` returns).
        observation_space: the observation space of the episodes (what the simulator passes in).
        max_concurrent: the most episodes running at once; ``start_episode`` beyond it raises
            TooManyEpisodesError.
        poll_timeout_s: ``poll()`` raises ExternalEnvError when no episode sent anything for this long.
    """

    multiagent = False

    def __init__(
        self,
        action_space: Any,
        observation_space: Any,
        max_concurrent: int = 100,
        *,
        poll_timeout_s: float = 3600.0,
    ):
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be an int >= 1, got {max_concurrent!r}")
        if not poll_timeout_s > 0:
            raise ValueError(f"poll_timeout_s must be > 0, got {poll_timeout_s!r}")
        self.action_space = action_space
        self.observation_space = observation_space
        self.max_concurrent = max_concurrent
        self.poll_timeout_s = float(poll_timeout_s)
        self.served_policy: Any = None  # a serving.ServedPolicy for local-inference clients (the worker sets it)
        self._book = _EpisodeBook(type(self).__name__, max_concurrent, self._unwrap)
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._error: tuple[BaseException, str] | None = None
        self._returned = False

    def run(self) -> None:
        """The simulator's loop: start episodes, ask for actions, log rewards, end episodes. Runs in a daemon
        thread started by ``start()``; it must not return (e.g. it calls ``PolicyServer.serve_forever()``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def start(self) -> None:
        """Starts ``run()`` in its daemon thread; once (later calls do nothing)."""
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}.run", daemon=True)
                self._thread.start()

    # --- the simulator's calls --------------------------------------------------------------------------------
    def start_episode(self, episode_id: str | None = None, training_enabled: bool = True) -> str:
        """Starts an episode and returns its id (a new uuid4 hex when None). ``training_enabled=False``: acted
        on but not learned from."""
        return self._book.start(episode_id, training_enabled)

    def get_action(self, episode_id: str, observation: Any) -> Any:
        """Records an observation and blocks until the sampler sent the action for it."""
        return self.request_action(episode_id, observation).result()

    def request_action(self, episode_id: str, observation: Any) -> Future:
        """``get_action`` without blocking: the Future of the action (for servers that wait asynchronously)."""
        return self._book.observe(episode_id, self._wrap(observation, "observation"))

    def log_action(self, episode_id: str, observation: Any, action: Any) -> None:
        """Records an observation and the action the simulator took itself (off-policy); does not block."""
        self._book.observe(episode_id, self._wrap(observation, "observation"), self._wrap(action, "action"))

    def log_returns(self, episode_id: str, reward: Any, info: Any = None) -> None:
        """Adds ``reward`` to the current step (the one the next observation closes); ``info`` is that step's."""
        rewards = self._wrap(reward, "reward")
        self._book.reward(episode_id, rewards, None if info is None else self._wrap(info, "info"))

    def end_episode(self, episode_id: str, observation: Any, *, truncated: bool = False) -> None:
        """Ends the episode with its last observation: terminated, or with ``truncated=True`` cut short (a time
        limit: the learner bootstraps from the last observation's value)."""
        self._book.observe(episode_id, self._wrap(observation, "observation"), final=True, truncated=truncated)

    def end_idle_episodes(self, max_idle_s: float) -> list[str]:
        """Ends, as truncated at their last observation, the episodes with no call for ``max_idle_s`` seconds that
        are not waiting for an action (their simulator went away); returns their ids."""
        return self._book.end_idle(max_idle_s)

    def running_episodes(self) -> list[str]:
        with self._book.cond:
            return list(self._book.episodes)

    @property
    def closed(self) -> bool:
        return self._book.closed

    def has_news(self) -> bool:
        """Whether ``poll()`` would return at once (an episode sent something the sampler has not polled)."""
        return bool(self._book.ready)

    def pending_steps(self) -> int:
        """Observations reported and not yet polled by the sampler (a PolicyServer holds clients to a limit)."""
        with self._book.cond:
            return sum(len(ep.items) for ep in (*self._book.episodes.values(), *self._book.finished.values()))

    # --- PollingEnv ---------------------------------------------------------------------------------------------
    def poll(self) -> tuple[dict, dict, dict, dict, dict, dict]:
        self.start()
        return self._book.poll(self.poll_timeout_s, self._check_thread)

    def send_actions(self, actions: dict) -> None:
        self._book.send(actions)

    def try_reset(self, env_id: Hashable) -> None:
        return None  # the simulator starts episodes; a new one arrives under a new env_id

    def training_enabled(self, env_id: Hashable) -> bool:
        return self._book.training_enabled(env_id)

    def observation_space_of(self, agent_id: Hashable) -> Any:
        return self.observation_space

    def action_space_of(self, agent_id: Hashable) -> Any:
        return self.action_space

    def close(self) -> None:
        """Fails every waiting get_action and every later call; run()'s thread (a daemon) is left to exit."""
        self._book.close()

    # --- parts ------------------------------------------------------------------------------------------------
    def _wrap(self, value: Any, what: str) -> dict:
        return {_DUMMY_AGENT_ID: value}

    def _unwrap(self, actions: dict) -> Any:
        return actions[_DUMMY_AGENT_ID]

    def _run(self) -> None:
        try:
            self.run()
        except BaseException as e:  # noqa: BLE001 - handed to the sampler's poll(), which re-raises it
            self._error = (e, traceback.format_exc())
        finally:
            self._returned = True
            with self._book.cond:
                self._book.cond.notify_all()

    def _check_thread(self) -> None:
        name = type(self).__name__
        if self._error is not None:
            error, tb = self._error
            raise ExternalEnvError(f"{name}.run() raised {type(error).__name__}: {error}\n{tb}") from error
        if self._returned and not self._book.episodes:
            raise ExternalEnvError(
                f"{name}.run() returned and no episode is running; run() must keep serving episodes"
                " (e.g. call PolicyServer.serve_forever())"
            )


class ExternalMultiAgentEnv(ExternalEnv):
    """``ExternalEnv`` with several agents per episode: observations, actions, rewards and infos are dicts keyed
    by agent id, and the agents in an observation dict act next (``get_action`` returns one action for each).

    Args:
        action_space: the action space shared by every agent, or a dict of them keyed by agent id.
        observation_space: the observation space shared by every agent, or a dict of them keyed by agent id.
        max_concurrent: the most episodes running at once; ``start_episode`` beyond it raises
            TooManyEpisodesError.
        poll_timeout_s: ``poll()`` raises ExternalEnvError when no episode sent anything for this long.
    """

    multiagent = True

    def observation_space_of(self, agent_id: Hashable) -> Any:
        return _space_of(self.observation_space, agent_id, "observation")

    def action_space_of(self, agent_id: Hashable) -> Any:
        return _space_of(self.action_space, agent_id, "action")

    # MultiAgentEnv's names, which the worker uses to give each policy its spaces
    get_observation_space = observation_space_of
    get_action_space = action_space_of

    def get_agent_ids(self) -> list[Hashable]:
        """The agent ids of per-agent space dicts; [] when every agent shares the spaces."""
        ids = [*(self.observation_space if isinstance(self.observation_space, Mapping) else [])]
        ids += [a for a in (self.action_space if isinstance(self.action_space, Mapping) else []) if a not in ids]
        return ids

    def _wrap(self, value: Any, what: str) -> dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{type(self).__name__}: the {what} must be a dict keyed by agent id, got {value!r}")
        return dict(value)

    def _unwrap(self, actions: dict) -> Any:
        return actions


def _space_of(spaces: Any, agent_id: Hashable, kind: str) -> Any:
    if isinstance(spaces, Mapping):
        if agent_id not in spaces:
            raise KeyError(f"no {kind} space for agent {agent_id!r}; the {kind} spaces are for {sorted(spaces)}")
        return spaces[agent_id]
    return spaces
