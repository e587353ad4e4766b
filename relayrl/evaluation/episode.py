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

    def last_action_for(self, agent_id: Any = 0) -> Any:
        return self._last_action

    def last_info_for(self, agent_id: Any = 0) -> Any:
        return self._last_info

    def last_reward_for(self, agent_id: Any = 0) -> float:
        return self._last_reward

    def __repr__(self) -> str:
        return f"Episode(id={self.episode_id}, length={self.length}, total_reward={self.total_reward:.3f})"
