"""AgentTrajectory: the rows of one (episode, agent) pair, built step by step by the multi-agent sampler.

A step opens when the agent acts (``open_step``: its observation, ``t``, its RNN state in, previous action and
reward when asked; then ``set_action``: the action and the policy's per-step outputs). Rewards arrive until the
agent's next observation, its own end, or the episode's end closes the step (``close_step``: the next observation
and the terminated / truncated flags). ``cut()`` hands out the closed rows as a SampleBatch and keeps an open step
for the next fragment; the RNN state in ``state`` is the one the agent's next action starts from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relayrl.policy.sample_batch import SampleBatch

SB = SampleBatch


class AgentTrajectory:
    __slots__ = (
        "agent_id",
        "policy_id",
        "agent_index",
        "episode",
        "state",
        "prev_action",
        "prev_reward",
        "last_obs",
        "obs",
        "actions",
        "rewards",
        "t",
        "extras",
        "states",
        "prev_actions",
        "prev_rewards",
        "new_obs",
        "terminateds",
        "truncateds",
        "infos",
        "left",
    )

    def __init__(self, agent_id: Any, policy_id: str, agent_index: int, episode: Any, initial_state: list):
        self.agent_id = agent_id
        self.policy_id = policy_id
        self.agent_index = agent_index
        self.episode = episode
        self.state = initial_state  # the RNN state the agent's next action starts from
        self.prev_action: Any = None
        self.prev_reward = 0.0
        self.last_obs: Any = None  # the latest processed observation (final observation of a leaving agent)
        self.left = False
        self._clear()

    def _clear(self) -> None:
        self.obs, self.actions, self.rewards, self.t = [], [], [], []
        self.extras: dict[str, list] = {}
        self.states: list[list] = [[] for _ in self.state]
        self.prev_actions, self.prev_rewards = [], []
        self.new_obs, self.terminateds, self.truncateds, self.infos = [], [], [], []

    @property
    def pending(self) -> bool:
        """An action was taken whose result (next observation or end) has not come yet."""
        return len(self.actions) > len(self.new_obs)

    @property
    def num_closed(self) -> int:
        return len(self.new_obs)

    def open_step(self, obs: Any, t: int, record_prev: bool) -> None:
        self.obs.append(obs)
        self.last_obs = obs
        self.t.append(t)
        self.rewards.append(0.0)
        for rows, s in zip(self.states, self.state):
            rows.append(s)
        if record_prev:
            self.prev_actions.append(self.prev_action)
            self.prev_rewards.append(self.prev_reward)

    def set_action(self, action: Any, extra: dict, state_out: list | None) -> None:
        self.actions.append(action)
        for k, v in extra.items():
            self.extras.setdefault(k, []).append(v)
        if state_out:
            self.state = state_out
        self.prev_action, self.prev_reward = action, 0.0

    def add_reward(self, reward: float) -> bool:
        """Adds ``reward`` to the open step; False when there is none (the agent has not acted yet)."""
        if not self.pending:
            return False
        self.rewards[-1] += reward
        self.prev_reward += reward
        return True

    def close_step(self, new_obs: Any, info: Any, terminated: bool, truncated: bool) -> None:
        if new_obs is None:  # ended without a final observation: bootstrap (if truncated) from the last one
            new_obs = self.last_obs
        else:
            self.last_obs = new_obs
        self.new_obs.append(new_obs)
        self.infos.append(info if info is not None else {})
        self.terminateds.append(terminated)
        self.truncateds.append(truncated)

    def cut(self, eps_id: int) -> SampleBatch | None:
        """The closed rows as a batch (None when there are none); an open step stays for the next fragment."""
        n = len(self.new_obs)
        if n == 0:
            return None
        cols = {
            SB.OBS: np.stack(self.obs[:n]),
            SB.ACTIONS: np.asarray(self.actions[:n]),
            SB.REWARDS: np.asarray(self.rewards[:n], dtype=np.float64),
            SB.TERMINATEDS: np.asarray(self.terminateds, dtype=bool),
            SB.TRUNCATEDS: np.asarray(self.truncateds, dtype=bool),
            SB.NEXT_OBS: np.stack(self.new_obs),
            SB.EPS_ID: np.full(n, eps_id, dtype=np.int64),
            SB.T: np.asarray(self.t[:n], dtype=np.int64),
            SB.AGENT_INDEX: np.full(n, self.agent_index, dtype=np.int64),
        }
        infos = np.empty(n, dtype=object)
        infos[:] = self.infos
        cols[SB.INFOS] = infos
        for k, rows in self.extras.items():
            cols[k] = np.stack(rows[:n])
        for j, rows in enumerate(self.states):
            cols[f"state_in_{j}"] = np.stack(rows[:n])
        if self.prev_actions:
            cols[SB.PREV_ACTIONS] = np.stack(self.prev_actions[:n])
            cols[SB.PREV_REWARDS] = np.asarray(self.prev_rewards[:n], dtype=np.float32)
        dones = cols[SB.TERMINATEDS] | cols[SB.TRUNCATEDS]
        cols[SB.DONES] = dones
        keep = self.pending
        if keep:
            rest = (self.obs[n:], self.actions[n:], self.rewards[n:], self.t[n:])
            rest_extras = {k: v[n:] for k, v in self.extras.items()}
            rest_states = [rows[n:] for rows in self.states]
            rest_prev = (self.prev_actions[n:], self.prev_rewards[n:])
        self._clear()
        if keep:
            self.obs, self.actions, self.rewards, self.t = (list(r) for r in rest)
            self.extras, self.states = rest_extras, rest_states
            self.prev_actions, self.prev_rewards = (list(r) for r in rest_prev)
        return SampleBatch(cols)
