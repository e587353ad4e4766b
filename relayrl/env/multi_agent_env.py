"""MultiAgentEnv: observations, rewards and dones are dicts keyed by agent id; ``"__all__"`` ends the episode.

    obs, infos = env.reset()
    obs, rewards, terminateds, truncateds, infos = env.step({agent_id: action, ...})
    terminateds["__all__"]   # True when the whole episode is over
"""

from __future__ import annotations

from typing import Any


class MultiAgentEnv:
    observation_space: Any = None
    action_space: Any = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        raise NotImplementedError

    def step(self, action_dict: dict) -> tuple[dict, dict, dict, dict, dict]:
        raise NotImplementedError

    def close(self) -> None:
        pass
