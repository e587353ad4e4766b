"""AgentTrajectory: the rows of one (episode, agent) pair, built step by step by the multi-agent sampler.

A step opens when the agent gets an observation it must act on (``step``: the observation, ``t``, its RNN state
in, the previous action and reward when asked; then ``set_action``: the action and the policy's per-step outputs).
Rewards arrive until the agent's next observation closes the step (the next ``step`` call) or its end does
(``end``: its own terminated / truncated flag, or the episode's). A step's next observation is the next step's
observation, so only the final one is stored. ``cut()`` hands out the closed rows as a SampleBatch and keeps an open
step for the next fragment; ``state`` is the RNN state the agent's next action starts from.
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
        "reward_total",
        "closed",
        "final",
        "obs",
        "actions",
        "rewards",
        "t",
        "infos",
        "extras",
        "states",
        "prev_actions",
        "prev_rewards",
    )

    def __init__(self, agent_id: Any, policy_id: str, agent_index: int, episode: Any, initial_state: list):
        self.agent_id = agent_id
        self.policy_id = policy_id
        self.agent_index = agent_index
        self.episode = episode
        self.state = initial_state  # the RNN state the agent's next action starts from
        self.prev_action: Any = None
        self.prev_reward = 0.0
        self.last_obs: Any = None  # the latest processed observation
        self.reward_total = 0.0
        self.closed = 0  # rows whose result (next observation or end) is known
        self.final: tuple | None = None  # (final observation, terminated, truncated) once the agent has ended
        self.obs, self.actions, self.rewards, self.t, self.infos = [], [], [], [], []
        self.extras: dict[str, list] = {}
        self.states: list[list] = [[] for _ in initial_state]
        self.prev_actions, self.prev_rewards = [], []

    @property
    def pending(self) -> bool:
        """An action was taken whose result has not come yet."""
        return len(self.actions) > self.closed

    @property
    def ended(self) -> bool:
        return self.final is not None

    def step(self, obs: Any, info: Any, t: int, record_prev: bool) -> None:
        """A new observation to act on: closes the open step (not done) and opens the next."""
        if len(self.actions) > self.closed:
            self.closed += 1
            self.infos.append(info)
        self.obs.append(obs)
        self.last_obs = obs
        self.t.append(t)
        self.rewards.append(0.0)
        for rows, s in zip(self.states, self.state):
            rows.append(s)
        if record_prev:
            self.prev_actions.append(self.prev_action)
            self.prev_rewards.append(self.prev_reward)

    def set_action(self, action: Any, extra: dict, i: int, state_out: list | None) -> None:
        """The action of the open step and row ``i`` of the policy's per-step outputs (and RNN state out)."""
        self.actions.append(action)
        for k, v in extra.items():
            rows = self.extras.get(k)
            if rows is None:
                rows = self.extras[k] = []
            rows.append(v[i])
        if state_out:
            self.state = [s[i] for s in state_out]
        self.prev_action, self.prev_reward = action, 0.0

    def add_reward(self, reward: float) -> None:
        """Adds ``reward`` to the open step (none before the agent's first action: it only counts in the total)."""
        self.reward_total += reward
        if len(self.actions) > self.closed:
            self.rewards[-1] += reward
            self.prev_reward += reward

    def end(self, obs: Any, info: Any, terminated: bool, truncated: bool) -> None:
        """The agent's end (``obs`` None: no final observation; a truncated step bootstraps from the last one)."""
        if obs is None:
            obs = self.last_obs
        else:
            self.last_obs = obs
        if len(self.actions) > self.closed:
            self.closed += 1
            self.infos.append(info)
        self.final = (obs, terminated, truncated)

    def cut(self, eps_id: int) -> SampleBatch | None:
        """The closed rows as a batch (None when there are none); an open step stays for the next fragment."""
        n = self.closed
        if n == 0:
            return None
        ended_here = self.final is not None and n == len(self.actions)
        next_obs = self.obs[1 : n + 1] if not ended_here else [*self.obs[1:n], self.final[0]]
        terminateds, truncateds = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        if ended_here:
            terminateds[-1], truncateds[-1] = self.final[1], self.final[2]
        infos = np.empty(n, dtype=object)
        infos[:] = [{} if i is None else i for i in self.infos]
        cols = {
            SB.OBS: np.array(self.obs[:n]),
            SB.ACTIONS: np.asarray(self.actions[:n]),
            SB.REWARDS: np.asarray(self.rewards[:n], dtype=np.float64),
            SB.TERMINATEDS: terminateds,
            SB.TRUNCATEDS: truncateds,
            SB.DONES: terminateds | truncateds,
            SB.NEXT_OBS: np.array(next_obs),
            SB.INFOS: infos,
            SB.EPS_ID: np.full(n, eps_id, dtype=np.int64),
            SB.T: np.asarray(self.t[:n], dtype=np.int64),
            SB.AGENT_INDEX: np.full(n, self.agent_index, dtype=np.int64),
        }
        for k, rows in self.extras.items():
            cols[k] = np.stack(rows[:n])
        for j, rows in enumerate(self.states):
            cols[f"state_in_{j}"] = np.stack(rows[:n])
        if self.prev_actions:
            cols[SB.PREV_ACTIONS] = np.stack(self.prev_actions[:n])
            cols[SB.PREV_REWARDS] = np.asarray(self.prev_rewards[:n], dtype=np.float32)
        self.obs, self.actions, self.rewards, self.t = self.obs[n:], self.actions[n:], self.rewards[n:], self.t[n:]
        self.infos, self.closed = [], 0
        self.extras = {k: v[n:] for k, v in self.extras.items()}
        self.states = [rows[n:] for rows in self.states]
        self.prev_actions, self.prev_rewards = self.prev_actions[n:], self.prev_rewards[n:]
        return SampleBatch(cols)
