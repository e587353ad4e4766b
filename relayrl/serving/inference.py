"""Inference only: a trained worker's policies answer an ExternalEnv's episodes over HTTP; nothing is learned.

``relayrl serve CHECKPOINT`` is this module behind a command line (``serve_cli.py``)::

    env = inference_env(worker)                        # the spaces of the worker's policies
    actor = PolicyActor(worker, env)                   # acts on the server's event loop thread
    server = PolicyServer(env, "127.0.0.1", 9900).start()
    serve_forever(actor, server)                       # summaries until Ctrl+C / SIGTERM

The actions are computed on the PolicyServer's event loop thread, with no thread hand-off: a handler's get_action
queues its observation and schedules one flush for the loop iteration (``loop.call_soon``); the flush runs after
every request parsed in that iteration and does one batched forward pass per policy for all of them, so a
``/v1/batch`` of 64 get_actions is one forward pass of 64 rows and concurrent clients are batched as well.

Clients speak the same protocol as with a training server: ``get_action`` is answered by the checkpoint's policy
(greedy unless ``explore``; the observation filter frozen), a recurrent policy keeps its state per episode and agent
(advanced by logged actions too), a multi-agent checkpoint maps each agent to its policy with the checkpoint's
``policy_mapping_fn``. ``log_action`` / ``log_returns`` / ``end_episode`` are accepted and only counted
(``PolicyActor.stats``); local-inference clients pull the policy of a single-policy checkpoint.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Hashable
from typing import Any

import numpy as np

from relayrl.env.base_env import ALL
from relayrl.env.external_env import ActionFuture, ExternalEnv, ExternalMultiAgentEnv

logger = logging.getLogger(__name__)
_NONE: dict = {}  # no logged actions (read only)


class _Inline:
    """What makes a served env act on the event loop's thread (mixed into ExternalEnv / ExternalMultiAgentEnv):
    every call that brings news (get_action, log_action, end_episode, an idle episode's end), made by the
    PolicyServer on its loop, schedules one ``flush`` (``loop.call_soon``) unless one is due. A get_action is not
    queued for ``poll()``: the flush hands the get_actions of this loop iteration, with the queued logged steps and
    ended episodes (polled), to ``actor``, whose one batched forward pass per policy settles their futures on the
    loop's thread: no thread hand-off."""

    actor: Any = None  # the PolicyActor (set by it)
    acts_on_loop = True  # a PolicyServer's get_action yields once to the loop, then finds its action there
    _flush_due = False
    _asks: list  # get_actions since the last flush: (episode id, {agent: observation}, rewards, future)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._asks = []

    def start(self) -> None:
        """No run() thread: the PolicyServer's handlers drive the episodes."""

    def request_action(self, episode_id: str, observation: Any) -> ActionFuture:
        """Not queued for ``poll()``: the next flush answers it directly (``PolicyActor.step``'s asks)."""
        obs = self._wrap(observation, "observation")
        rewards, future = self._book.ask(episode_id, obs)
        self._asks.append((episode_id, obs, rewards, future))
        self._due()
        return future

    def log_action(self, episode_id: str, observation: Any, action: Any) -> None:
        super().log_action(episode_id, observation, action)
        self._due()

    def end_episode(self, episode_id: str, observation: Any, *, truncated: bool = False) -> None:
        super().end_episode(episode_id, observation, truncated=truncated)
        self._due()

    def end_idle_episodes(self, max_idle_s: float) -> list[str]:
        ended = super().end_idle_episodes(max_idle_s)
        if ended:
            self._due()
        return ended

    def _due(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        asks, self._asks = self._asks, []
        try:
            while True:  # once, unless an episode's get_action follows its own logged step(s) in this flush
                news = self.poll() if self.has_news() else None
                now, asks = _after_news(asks, news, self._book.ready)
                self._book.answer(self.actor.step(news, now))
                if not asks and not self.has_news():
                    return
        except Exception as e:  # noqa: BLE001 - a bug: the waiting calls answer 503, serving stops (serve_forever)
            self.actor.fail(e)


def _after_news(asks: list, news: tuple | None, queued: dict) -> tuple[list, list]:
    """The get_actions to act on with ``news`` (one poll) and those that wait for a later pass: an episode whose
    logged step is in ``news``, or still ``queued``, acts after it (its recurrent memory advances with it first)."""
    if news is None or not asks:
        return asks, []
    now, later = [], []
    for ask in asks:
        (later if ask[0] in news[0] or ask[0] in queued else now).append(ask)
    return now, later


class _Served(_Inline, ExternalEnv):
    """A single-agent ExternalEnv whose episodes come over HTTP only, acted on by the loop's thread."""


class _ServedMulti(_Inline, ExternalMultiAgentEnv):
    """A multi-agent ExternalEnv whose agents' spaces are those of the policies they map to."""

    def __init__(self, action_space: Any, observation_space: Any, max_concurrent: int, policy_of: Any, spaces: dict):
        super().__init__(action_space, observation_space, max_concurrent)
        self.policy_of = policy_of  # agent id -> policy id
        self.policy_spaces = spaces  # policy id -> (raw observation space, action space)

    def observation_space_of(self, agent_id: Hashable) -> Any:
        return self._spaces_of(agent_id)[0]

    def action_space_of(self, agent_id: Hashable) -> Any:
        return self._spaces_of(agent_id)[1]

    get_observation_space = observation_space_of
    get_action_space = action_space_of

    def _spaces_of(self, agent_id: Hashable) -> tuple:
        try:
            pid = self.policy_of(agent_id)
        except Exception as e:  # noqa: BLE001 - the mapping's own error, as the protocol's 400 message
            raise KeyError(f"agent {agent_id!r} maps to no policy: {type(e).__name__}: {e}") from None
        if pid not in self.policy_spaces:
            raise KeyError(f"agent {agent_id!r} maps to policy {pid!r}; the policies are {sorted(self.policy_spaces)}")
        return self.policy_spaces[pid]


def inference_env(worker: Any, max_concurrent: int = 1000) -> ExternalEnv:
    """An ExternalEnv with the spaces of ``worker``'s policies (the raw observation space of each, before its
    preprocessor): single-agent when the worker's env is, else multi-agent with the worker's policy mapping."""
    from relayrl.evaluation.policy_specs import mapping_caller

    spaces = {pid: (worker.preprocessors[pid].obs_space, p.action_space) for pid, p in worker.policy_map.items()}
    if not worker.multi_agent:
        ((obs_space, action_space),) = spaces.values()
        env: ExternalEnv = _Served(action_space, obs_space, max_concurrent)
    else:
        mapping = mapping_caller(worker.policy_mapping_fn, worker)
        first = next(iter(spaces.values()))
        if all(_same(s, first) for s in spaces.values()):
            obs_space, action_space = first
        else:  # the agents the checkpoint's env declares, each with its policy's spaces
            agents = list(getattr(worker.env, "get_agent_ids", lambda: [])())
            obs_space = {a: spaces[mapping(a, None)][0] for a in agents if mapping(a, None) in spaces}
            action_space = {a: spaces[mapping(a, None)][1] for a in agents if mapping(a, None) in spaces}
        env = _ServedMulti(action_space, obs_space, max_concurrent, lambda agent: mapping(agent, None), spaces)
    if len(worker.policy_map) == 1:  # local-inference clients rebuild this policy
        from relayrl.serving.local_policy import served_policy_for

        pid, policy = next(iter(worker.policy_map.items()))
        env.served_policy = served_policy_for(policy, worker.filters[pid])
    return env


def _same(a: tuple, b: tuple) -> bool:
    return all(type(x) is type(y) and x == y for x, y in zip(a, b))


class PolicyActor:
    """Acts for ``env``'s episodes with ``worker``'s policies, called by the env's flush on the PolicyServer's event
    loop thread; keeps no experience. A failure (a bug) closes the env and sets ``failed`` (``error`` holds it).

    Args:
        worker: a RolloutWorker holding the policies, their preprocessors and (frozen) observation filters.
        env: the env made by ``inference_env(worker)``; it is given this actor.
        explore: sample from the action distribution (True) or act greedily (False, as ``relayrl rollout``).
    """

    def __init__(self, worker: Any, env: ExternalEnv, explore: bool = False):
        from relayrl.evaluation.sampler import deferred_kwargs

        self.worker, self.env, self.explore = worker, env, explore
        env.actor = self
        self.multi_agent = bool(env.multiagent)
        clip = bool(worker.config.get("clip_actions", True))
        self._to_env = {pid: _wire_action_fn(p.action_space, clip) for pid, p in worker.policy_map.items()}
        # deferred: no log-probabilities or value estimates, which nothing here reads; the actions are the same
        self._act_kwargs = {pid: {"explore": explore, **deferred_kwargs(p)} for pid, p in worker.policy_map.items()}
        self._memory: dict[str, dict] = {}  # episode -> {agent: (policy id, recurrent memory or None)}
        self._returns: dict[str, float] = {}  # running episodes' returns so far
        self.stats = {"episodes": 0, "steps": 0, "actions": 0, "logged_actions": 0}
        self.recent_returns: collections.deque = collections.deque(maxlen=100)
        self.failed = threading.Event()
        self.error: Exception | None = None

    def step(self, news: tuple | None, asks: list) -> list:
        """One batched forward pass per policy for ``news`` (one poll of the env's queue: logged actions, ended
        episodes; None: nothing) and ``asks``, the get_actions taken directly (``_Inline.request_action``): (episode
        id, {agent: observation}, {agent: reward logged since its last observation}, future). A recurrent policy's
        memory advances with the logged actions. Returns (episode id, future, action) for each ask."""
        rows: dict[str, list] = collections.defaultdict(list)
        if news is not None:
            self._take_news(rows, *news)
        for eid, agent_obs, reward, _ in asks:
            if reward:
                self._returns[eid] = self._returns.get(eid, 0.0) + float(sum(reward.values()))
            self._add_rows(rows, eid, agent_obs, reward, _NONE)
        self.stats["steps"] += len(asks)
        acted = self._act(rows)
        if news is not None and len(acted) > len(asks):  # get_actions queued for poll() (not _Inline's)
            self.env.send_actions({eid: acted[eid] for eid in news[0] if eid in acted})
        unwrap = self.env._unwrap
        return [(eid, future, unwrap(acted[eid])) for eid, _, _, future in asks]

    def _take_news(
        self, rows: dict, obs: dict, rewards: dict, terms: dict, truncs: dict, infos: dict, off: dict
    ) -> None:
        for eid, agent_obs in obs.items():
            reward = rewards[eid]
            self._returns[eid] = self._returns.get(eid, 0.0) + float(sum(reward.values()))
            if terms[eid][ALL] or truncs[eid][ALL]:
                self._end(eid)
                continue
            logged = off.get(eid, _NONE)
            self.stats["steps"] += 1
            self.stats["logged_actions"] += len(logged)
            self._add_rows(rows, eid, agent_obs, reward, logged)

    def _add_rows(self, rows: dict, eid: str, agent_obs: dict, reward: dict, logged: dict) -> None:
        """The rows to compute for one episode's step, by policy: every agent without a logged action, and those
        with one when their policy is recurrent (its memory advances with the logged action)."""
        agents = self._memory.setdefault(eid, {})
        for agent, o in agent_obs.items():
            pid, memory = agents.get(agent) or self._first(agents, agent)
            if memory is not None and "prev_reward" in memory:
                memory["prev_reward"] = float(reward.get(agent, 0.0))
            if memory is None and agent in logged:
                continue  # a feed-forward policy has nothing to carry to the next step
            rows[pid].append((eid, agent, o, memory, logged.get(agent)))

    def _act(self, rows: dict) -> dict:
        """{episode id: {agent: action}} for the rows without a logged action."""
        acted: dict = {}
        n = 0
        for pid, batch in rows.items():
            for (eid, agent, _, _, logged), action in zip(batch, self._actions(pid, batch)):
                if logged is None:
                    n += 1
                    if eid in acted:
                        acted[eid][agent] = action
                    else:
                        acted[eid] = {agent: action}
        self.stats["actions"] += n
        return acted

    def _first(self, agents: dict, agent: Hashable) -> tuple:
        """An agent's first step in its episode: its policy and fresh recurrent memory (None: feed-forward)."""
        from relayrl.rollout import start_memory

        pid = self.env.policy_of(agent) if self.multi_agent else next(iter(self.worker.policy_map))
        agents[agent] = (pid, start_memory(self.worker.policy_map[pid]))
        return agents[agent]

    def _actions(self, pid: str, batch: list) -> list:
        worker = self.worker
        policy, prep = worker.policy_map[pid], worker.preprocessors[pid]
        x = np.asarray(prep.transform_batch([row[2] for row in batch]), np.float32)
        x = worker.filters[pid](x, update=False)
        memories = [row[3] for row in batch]
        state = prev_a = prev_r = None
        if memories[0] is not None:
            state = [np.stack(column) for column in zip(*(m["state"] for m in memories))]
            if "prev_action" in memories[0]:
                prev_a = np.stack([np.asarray(m["prev_action"]) for m in memories])
                prev_r = np.asarray([m["prev_reward"] for m in memories], np.float32)
        actions, state_out, _ = policy.compute_actions(x, state or None, prev_a, prev_r, **self._act_kwargs[pid])
        env_actions = self._to_env[pid](actions)
        if memories[0] is None:  # feed-forward: only agents without a logged action are in the batch
            return list(env_actions)
        out = []
        for j, (row, action) in enumerate(zip(batch, env_actions)):
            taken = row[4] if row[4] is not None else action
            memory = row[3]
            memory["state"] = [s[j] for s in state_out]
            if "prev_action" in memory:
                memory["prev_action"], memory["prev_reward"] = actions[j] if row[4] is None else taken, 0.0
            out.append(taken)
        return out

    def fail(self, error: Exception) -> None:
        """Stops acting: the env is closed (waiting calls answer 503) and ``failed`` is set."""
        logger.error("relayrl serve: acting failed", exc_info=error)
        self.error = error
        self.env.close()
        self.failed.set()

    def _end(self, eid: str) -> None:
        self.stats["episodes"] += 1
        self.recent_returns.append(self._returns.pop(eid, 0.0))
        self._memory.pop(eid, None)

    def summary(self) -> str:
        mean = f"{float(np.mean(self.recent_returns)):.2f}" if self.recent_returns else "-"
        s = self.stats
        return (
            f"{s['episodes']} episodes ended, {s['steps']} steps, {s['actions']} actions served,"
            f" {s['logged_actions']} logged; mean return of the last {len(self.recent_returns)} episodes {mean}"
        )


def _wire_action_fn(action_space: Any, clip: bool) -> Any:
    """As the sampler turns a batch of actions into the env's, but Discrete actions as Python ints: what the
    answer carries, without a numpy scalar per action."""
    import gymnasium as gym

    from relayrl.evaluation.sampler import _env_action_fn

    if isinstance(action_space, gym.spaces.Discrete):
        return lambda a: a.tolist()
    return _env_action_fn(action_space, clip)


def serve_forever(actor: PolicyActor, server: Any, report_s: float = 60.0) -> None:
    """Waits while ``server`` (started) serves ``actor``'s env from its thread, printing a summary every
    ``report_s`` seconds while episodes end; stops the server and closes the env on KeyboardInterrupt (the CLI's
    Stopped) or when the actor failed (its error re-raised). The BLAS libraries run one thread meanwhile: the
    forward passes are small, and waking more threads costs more than it saves (as in the sampler)."""
    from relayrl.utils.blas import single_blas_thread

    seen = 0
    try:
        with single_blas_thread():
            while not actor.failed.wait(report_s):
                if actor.stats["episodes"] != seen:
                    seen = actor.stats["episodes"]
                    print(f"relayrl serve: {time.strftime('%H:%M:%S')} {actor.summary()}", flush=True)
        raise RuntimeError("relayrl serve: computing actions failed") from actor.error
    finally:
        server.stop()
        actor.env.close()
