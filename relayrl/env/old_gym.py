"""Envs written for the old gym API (gym <= 0.25, RLlib 0.7's era) seen through Gymnasium's.

The old API: ``reset()`` returns the observation alone (seeding through ``env.seed(n)``; gym 0.22-0.25 took
``reset(seed=..., return_info=False)``), and ``step()`` returns ``(obs, reward, done, info)``. An env whose ``reset``
takes no ``seed`` (or still takes ``return_info``) is wrapped in ``OldGymEnv`` when a worker makes it, with one
warning per env class; any other env is held to Gymnasium's API by the env checks (a 4-tuple from an env with
Gymnasium's ``reset`` is an error there, not adapted). RLlib 0.7's MultiAgentEnv API (``reset() -> obs dict``,
``step() -> (obs, rewards, dones, infos)``) is adapted the same way (``OldMultiAgentEnv``).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import gymnasium as gym

from relayrl.env.multi_agent_env import MultiAgentEnv

logger = logging.getLogger(__name__)
_warned: set[type] = set()


def is_old_gym_env(env: Any) -> bool:
    """Whether ``env.reset`` has the old gym signature: no ``seed`` (and no ``**kwargs``), or ``return_info``."""
    try:
        params = inspect.signature(env.reset).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    if "return_info" in params:
        return True
    return "seed" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values())


def gymnasium_api(env: Any) -> Any:
    """``env``, or ``OldGymEnv(env)`` when it has the old gym API (warned once per env class)."""
    if not is_old_gym_env(env):
        return env
    _warn_once(
        env,
        "has the old gym API (reset() -> obs, step() -> (obs, reward, done, info)); relayrl adapts it: done is"
        " terminated, or truncated when info['TimeLimit.truncated'] is true. Gymnasium's API:"
        " https://gymnasium.farama.org/api/env/",
    )
    return OldGymEnv(env)


def _warn_once(env: Any, message: str) -> None:
    """Logs ``message`` about ``env``'s class, once per class."""
    if type(env) not in _warned:
        _warned.add(type(env))
        logger.warning("%s %s", type(env).__name__, message)


class OldGymEnv(gym.Env):
    """An old-gym-API env as a Gymnasium env: ``reset`` returns ``(obs, {})`` (a seed goes to ``env.seed(n)`` or to
    ``reset(seed=...)``, whichever the env has), ``step`` returns ``(obs, reward, terminated, truncated, info)`` with
    ``done`` as terminated, or as truncated when ``info["TimeLimit.truncated"]`` is true. Other attributes are the
    env's own; ``unwrapped`` is the env's.

    Args:
        env: the old-API env.
    """

    def __init__(self, env: Any):
        self.env = env
        self.observation_space, self.action_space = env.observation_space, env.action_space
        self.metadata = getattr(env, "metadata", {}) or {}
        self.render_mode = getattr(env, "render_mode", None)
        self._reset_takes_seed = "seed" in inspect.signature(env.reset).parameters

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        if self._reset_takes_seed:
            obs = self.env.reset(seed=seed)
        else:
            if seed is not None and callable(getattr(self.env, "seed", None)):
                self.env.seed(seed)
            obs = self.env.reset()
        return obs, {}

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        result = self.env.step(action)
        if not isinstance(result, (tuple, list)) or len(result) != 4:
            return result  # not the old API after all: the env checks name what it is
        obs, reward, done, info = result
        truncated = bool(done) and isinstance(info, dict) and bool(info.get("TimeLimit.truncated", False))
        return obs, reward, bool(done) and not truncated, truncated, info

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if callable(close):
            close()

    @property
    def unwrapped(self) -> Any:
        return getattr(self.env, "unwrapped", self.env)

    def __getattr__(self, name: str) -> Any:  # the env's own attributes (not called for this class's own)
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)


def multi_agent_api(env: Any) -> Any:
    """``env``, or ``OldMultiAgentEnv(env)`` when its ``reset`` has the old signature (warned once per class)."""
    if not is_old_gym_env(env):
        return env
    _warn_once(
        env,
        "has RLlib 0.7's MultiAgentEnv API (reset() -> obs dict, step() -> (obs, rewards, dones, infos)); relayrl"
        " adapts it: dones are terminateds. Today's API: reset(*, seed=None, options=None) -> (obs, infos), step()"
        " -> (obs, rewards, terminateds, truncateds, infos)",
    )
    return OldMultiAgentEnv(env)


class OldMultiAgentEnv(MultiAgentEnv):
    """An RLlib 0.7-era multi-agent env as today's ``MultiAgentEnv``: ``reset`` returns ``(obs, {})`` (a seed goes
    to ``env.seed(n)`` when it has one), ``step`` returns ``(obs, rewards, dones, all-False truncateds, infos)``.
    Spaces, agent ids and other attributes are the env's own.

    Args:
        env: the old-API multi-agent env.
    """

    def __init__(self, env: Any):
        self.env = env
        for name in ("observation_space", "action_space", "observation_spaces", "action_spaces", "possible_agents"):
            setattr(self, name, getattr(env, name, None))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        if seed is not None and callable(getattr(self.env, "seed", None)):
            self.env.seed(seed)
        return self.env.reset(), {}

    def step(self, action_dict: dict) -> tuple[dict, dict, dict, dict, dict]:
        result = self.env.step(action_dict)
        if not isinstance(result, (tuple, list)) or len(result) != 4:
            return result  # not the old API after all: the episode checks name what it is
        obs, rewards, dones, infos = result
        truncateds = dict.fromkeys(dones, False) if isinstance(dones, dict) else dones
        return obs, rewards, dones, truncateds, infos

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if callable(close):
            close()

    def render(self) -> Any:
        return self.env.render() if callable(getattr(self.env, "render", None)) else None

    def get_agent_ids(self) -> list:
        return (
            self.env.get_agent_ids() if callable(getattr(self.env, "get_agent_ids", None)) else super().get_agent_ids()
        )

    def get_observation_space(self, agent_id: Any) -> Any:
        get = getattr(self.env, "get_observation_space", None)
        return get(agent_id) if callable(get) else super().get_observation_space(agent_id)

    def get_action_space(self, agent_id: Any) -> Any:
        get = getattr(self.env, "get_action_space", None)
        return get(agent_id) if callable(get) else super().get_action_space(agent_id)

    @property
    def unwrapped(self) -> Any:
        return getattr(self.env, "unwrapped", self.env)

    def __getattr__(self, name: str) -> Any:  # the env's own attributes
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)
