"""Episode: what the sampler knows about one running episode; callbacks read and annotate it."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any


class Episode:
    """``episode_id``, ``length``, ``total_reward``, ``agent_rewards``, and dicts for user code:
    ``custom_metrics`` (averaged into the result's ``custom_metrics``), ``user_data``, ``hist_data``."""

    __slots__ = (
        "episode_id",
        "env_index",
        "length",
        "total_reward",
        "agent_rewards",
        "custom_metrics",
        "user_data",
        "hist_data",
        "_last_obs",
        "_last_action",
        "_last_info",
        "_last_reward",
    )

    def __init__(self, env_index: int = 0, rng: random.Random | None = None):
        self.episode_id = (rng or random).getrandbits(62)
        self.env_index = env_index
        self.length = 0
        self.total_reward = 0.0
        self.agent_rewards: dict = defaultdict(float)
        self.custom_metrics: dict[str, float] = {}
        self.user_data: dict[str, Any] = {}
        self.hist_data: dict[str, list] = {}
        self._last_obs: Any = None
        self._last_action: Any = None
        self._last_info: Any = None
        self._last_reward: float = 0.0

    def last_observation_for(self, agent_id: Any = 0) -> Any:
        return self._last_obs

    def last_raw_obs_for(self, agent_id: Any = 0) -> Any:
        """RLlib 0.7's name: the env's last observation, before preprocessing and filtering."""
        return self.last_observation_for(agent_id)

    def last_action_for(self, agent_id: Any = 0) -> Any:
        return self._last_action

    def last_info_for(self, agent_id: Any = 0) -> Any:
        return self._last_info

    def last_reward_for(self, agent_id: Any = 0) -> float:
        return self._last_reward

    def __repr__(self) -> str:
        return f"Episode(id={self.episode_id}, length={self.length}, total_reward={self.total_reward:.3f})"


class MultiAgentEpisode(Episode):
    """An episode of a multi-agent (or external) env: ``length`` counts env steps, ``total_reward`` sums every
    agent's rewards, ``agent_rewards[(agent_id, policy_id)]`` each agent's. ``policy_for(agent_id)`` is the policy
    the mapping function chose for the agent in this episode (asked once per episode and agent)."""

    __slots__ = ("env_id", "_policy_of", "_agent_index", "_last", "_mapping")

    def __init__(self, env_id: Any, rng: random.Random | None, mapping: Any):
        super().__init__(env_id if isinstance(env_id, int) else 0, rng)
        self.env_id = env_id
        self._mapping = mapping  # agent id, episode -> policy id
        self._policy_of: dict = {}
        self._agent_index: dict = {}
        self._last: dict = {}  # agent id -> [obs, action, info, reward]

    def policy_for(self, agent_id: Any = 0) -> str:
        pid = self._policy_of.get(agent_id)
        if pid is None:
            pid = self._policy_of[agent_id] = self._mapping(agent_id, self)
            self._agent_index[agent_id] = len(self._agent_index)
        return pid

    def agent_index(self, agent_id: Any) -> int:
        return self._agent_index[agent_id]

    def get_agents(self) -> list:
        return list(self._policy_of)

    def _slot(self, agent_id: Any) -> list:
        slot = self._last.get(agent_id)
        if slot is None:
            slot = self._last[agent_id] = [None, None, None, 0.0]
        return slot

    def last_observation_for(self, agent_id: Any = 0) -> Any:
        return self._last.get(agent_id, (None,) * 4)[0]

    def last_action_for(self, agent_id: Any = 0) -> Any:
        return self._last.get(agent_id, (None,) * 4)[1]

    def last_info_for(self, agent_id: Any = 0) -> Any:
        return self._last.get(agent_id, (None,) * 4)[2]

    def last_reward_for(self, agent_id: Any = 0) -> float:
        return self._last.get(agent_id, (None, None, None, 0.0))[3]
