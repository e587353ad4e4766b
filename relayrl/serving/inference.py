"""Inference only: a trained worker's policies answer an ExternalEnv's episodes over HTTP; nothing is learned.

``relayrl serve CHECKPOINT`` is this module behind a command line (``serve_cli.py``)::

    env = inference_env(worker)                        # the spaces of the worker's policies
    server = PolicyServer(env, "127.0.0.1", 9900).start()
    actor = PolicyActor(worker, env)
    actor.run(stop)                                    # poll -> one batched forward pass per policy -> send_actions

Clients speak the same protocol as with a training server: ``get_action`` is answered by the checkpoint's policy
(greedy unless ``explore``; the observation filter frozen), a recurrent policy keeps its state per episode and agent
(advanced by logged actions too), a multi-agent checkpoint maps each agent to its policy with the checkpoint's
``policy_mapping_fn``. ``log_action`` / ``log_returns`` / ``end_episode`` are accepted and only counted
(``PolicyActor.stats``); local-inference clients pull the policy of a single-policy checkpoint.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Hashable
from typing import Any

import numpy as np

from relayrl.env.base_env import ALL
from relayrl.env.external_env import ExternalEnv, ExternalEnvError, ExternalMultiAgentEnv


class _Served(ExternalEnv):
    """A single-agent ExternalEnv whose episodes come over HTTP only."""

    def run(self) -> None:
        threading.Event().wait()  # the PolicyServer runs on its own; run() must not return


class _ServedMulti(ExternalMultiAgentEnv):
    """A multi-agent ExternalEnv whose agents' spaces are those of the policies they map to."""

    def __init__(self, action_space: Any, observation_space: Any, max_concurrent: int, policy_of: Any, spaces: dict):
        super().__init__(action_space, observation_space, max_concurrent, poll_timeout_s=1.0)
        self.policy_of = policy_of  # agent id -> policy id
        self.policy_spaces = spaces  # policy id -> (raw observation space, action space)

    def run(self) -> None:
        threading.Event().wait()

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
        env: ExternalEnv = _Served(action_space, obs_space, max_concurrent, poll_timeout_s=1.0)
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
    """Acts for ``env``'s episodes with ``worker``'s policies until stopped; keeps no experience.

    Args:
        worker: a RolloutWorker holding the policies, their preprocessors and (frozen) observation filters.
        env: the env made by ``inference_env(worker)``.
        explore: sample from the action distribution (True) or act greedily (False, as ``relayrl rollout``).
    """

    def __init__(self, worker: Any, env: ExternalEnv, explore: bool = False):
        from relayrl.evaluation.sampler import _env_action_fn  # the sampler's own policy row -> env action

        self.worker, self.env, self.explore = worker, env, explore
        self.multi_agent = bool(env.multiagent)
        clip = bool(worker.config.get("clip_actions", True))
        self._to_env = {pid: _env_action_fn(p.action_space, clip) for pid, p in worker.policy_map.items()}
        self._memory: dict[tuple, Any] = {}  # (episode, agent) -> (policy id, recurrent memory or None)
        self._returns: dict[str, float] = {}  # running episodes' returns so far
        self.stats = {"episodes": 0, "steps": 0, "actions": 0, "logged_actions": 0}
        self.recent_returns: collections.deque = collections.deque(maxlen=100)

    def run(self, stop: threading.Event) -> None:
        """Polls and answers until ``stop`` is set (checked at least once a second) or the env is closed."""
        while not stop.is_set():
            try:
                polled = self.env.poll()
            except ExternalEnvError:
                if stop.is_set() or self.env.closed:
                    return
                continue  # a second without requests
            self.step(*polled)

    def step(self, obs: dict, rewards: dict, terms: dict, truncs: dict, infos: dict, off_policy: dict) -> None:
        """Answers one poll: every waiting agent's action, computed in one batch per policy."""
        rows: dict[str, list] = collections.defaultdict(list)
        for eid, agent_obs in obs.items():
            self._returns[eid] = self._returns.get(eid, 0.0) + float(sum(rewards[eid].values()))
            if terms[eid][ALL] or truncs[eid][ALL]:
                self._end(eid)
                continue
            logged = off_policy.get(eid, {})
            self.stats["steps"] += 1
            for agent, o in agent_obs.items():
                pid, memory = self._agent(eid, agent)
                if memory is not None and "prev_reward" in memory:
                    memory["prev_reward"] = float(rewards[eid].get(agent, 0.0))
                if agent in logged:
                    self.stats["logged_actions"] += 1
                    if memory is None:
                        continue  # a feed-forward policy has nothing to carry to the next step
                rows[pid].append((eid, agent, o, memory, logged.get(agent)))
        to_send: dict = {}
        for pid, batch in rows.items():
            for (eid, agent, _, _, logged), action in zip(batch, self._actions(pid, batch)):
                if logged is None:
                    to_send.setdefault(eid, {})[agent] = action
                    self.stats["actions"] += 1
        if to_send:
            self.env.send_actions(to_send)

    def _agent(self, eid: str, agent: Hashable) -> tuple:
        key = (eid, agent)
        if key not in self._memory:
            from relayrl.rollout import start_memory

            pid = self.env.policy_of(agent) if self.multi_agent else next(iter(self.worker.policy_map))
            self._memory[key] = (pid, start_memory(self.worker.policy_map[pid]))
        return self._memory[key]

    def _actions(self, pid: str, batch: list) -> list:
        worker = self.worker
        policy, prep = worker.policy_map[pid], worker.preprocessors[pid]
        x = np.stack([np.asarray(prep.transform(row[2]), np.float32) for row in batch])
        x = worker.filters[pid](x, update=False)
        memories = [row[3] for row in batch]
        state = prev_a = prev_r = None
        if memories[0] is not None:
            state = [np.stack(column) for column in zip(*(m["state"] for m in memories))]
            if "prev_action" in memories[0]:
                prev_a = np.stack([np.asarray(m["prev_action"]) for m in memories])
                prev_r = np.asarray([m["prev_reward"] for m in memories], np.float32)
        actions, state_out, _ = policy.compute_actions(x, state or None, prev_a, prev_r, explore=self.explore)
        env_actions = self._to_env[pid](actions)
        out = []
        for j, (row, action) in enumerate(zip(batch, env_actions)):
            taken = row[4] if row[4] is not None else action
            memory = row[3]
            if memory is not None:
                memory["state"] = [s[j] for s in state_out]
                if "prev_action" in memory:
                    memory["prev_action"], memory["prev_reward"] = actions[j] if row[4] is None else taken, 0.0
            out.append(taken)
        return out

    def _end(self, eid: str) -> None:
        self.stats["episodes"] += 1
        self.recent_returns.append(self._returns.pop(eid, 0.0))
        for key in [k for k in self._memory if k[0] == eid]:
            del self._memory[key]

    def summary(self) -> str:
        mean = f"{float(np.mean(self.recent_returns)):.2f}" if self.recent_returns else "-"
        s = self.stats
        return (
            f"{s['episodes']} episodes ended, {s['steps']} steps, {s['actions']} actions served,"
            f" {s['logged_actions']} logged; mean return of the last {len(self.recent_returns)} episodes {mean}"
        )


def serve_forever(actor: PolicyActor, server: Any, stop: threading.Event, report_s: float = 60.0) -> None:
    """Runs ``actor`` in this thread with ``server`` serving from its own, printing a summary every ``report_s``
    seconds while episodes end; stops both when ``stop`` is set (or on KeyboardInterrupt / the CLI's Stopped)."""
    reporter = threading.Thread(target=_report, args=(actor, stop, report_s), daemon=True)
    reporter.start()
    try:
        actor.run(stop)
    finally:
        stop.set()
        server.stop()
        actor.env.close()


def _report(actor: PolicyActor, stop: threading.Event, report_s: float) -> None:
    seen = 0
    while not stop.wait(report_s):
        if actor.stats["episodes"] != seen:
            seen = actor.stats["episodes"]
            print(f"relayrl serve: {time.strftime('%H:%M:%S')} {actor.summary()}", flush=True)
