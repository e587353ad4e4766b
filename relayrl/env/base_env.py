"""PollingEnv: what the multi-agent sampler steps: many episodes, many agents, results when they are ready.

Every env that is not a plain single-agent (vector) env reaches the sampler as a PollingEnv: N MultiAgentEnv
sub-envs stepped together (``MultiAgentVectorEnv``) or an external env whose episodes a simulator drives from its
own thread (``relayrl.env.ExternalEnv``). Results are dicts keyed by an **episode slot** (``env_id``: a sub-env
index, or an external episode id) and then by agent id::

    obs, rewards, terminateds, truncateds, infos, off_policy_actions = env.poll()
    # obs[env_id][agent_id]: the agents in obs[env_id] act next (the MultiAgentEnv rule)
    env.send_actions({env_id: {agent_id: action, ...}, ...})   # for exactly the agents polled

Rules:

- ``poll()`` returns the env_ids that have something new: a first observation of a new episode (no
  ``"__all__"`` entry in its terminateds, all rewards 0), or the result of the last actions sent for it.
  ``terminateds[env_id]`` / ``truncateds[env_id]`` always hold ``"__all__"`` for an env_id in ``obs``.
- An env_id seen for the first time, or after its episode ended and ``try_reset`` gave observations, starts a
  new episode.
- When ``"__all__"`` is True the episode in that slot is over; the sampler calls ``try_reset(env_id)``: it returns
  ``(obs, infos)`` of a new episode in the same slot, or None when the env starts episodes on its own (an
  external env: its next episode appears in a later poll, under a new env_id).
- ``off_policy_actions[env_id][agent_id]``: an action the env took itself (``ExternalEnv.log_action``) for an
  agent polled in the *same* poll; the sampler records it instead of the policy's action, and still sends nothing
  for that agent (``send_actions`` gets only the agents without an off-policy action).
- ``training_enabled(env_id)``: False for episodes that are acted on but not learned from.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

ALL = "__all__"

EnvID = Hashable
MultiEnvDict = dict  # env_id -> {agent_id: value}


class PollingEnv:
    """The sampler's view of a multi-agent or external env (see the module docstring)."""

    def poll(self) -> tuple[MultiEnvDict, MultiEnvDict, MultiEnvDict, MultiEnvDict, MultiEnvDict, MultiEnvDict]:
        """``(obs, rewards, terminateds, truncateds, infos, off_policy_actions)`` of the env_ids that have news;
        blocks until at least one has (an external env), never returns nothing while episodes run."""
        raise NotImplementedError

    def send_actions(self, actions: MultiEnvDict) -> None:
        raise NotImplementedError

    def try_reset(self, env_id: EnvID) -> tuple[dict, dict] | None:
        return None

    def training_enabled(self, env_id: EnvID) -> bool:
        return True

    def get_sub_environments(self) -> list:
        return []

    def observation_space_of(self, agent_id: Hashable) -> Any:
        raise NotImplementedError

    def action_space_of(self, agent_id: Hashable) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass
