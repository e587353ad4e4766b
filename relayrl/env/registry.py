"""Environment names: ``register_env(name, creator)``, else any Gymnasium id.

A creator takes an ``EnvContext`` (the ``env_config`` dict, plus ``worker_index`` and ``vector_index``)
and returns an environment. Registered names are also pushed to Ray Tune's registry, so trials running
in other processes find them.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any, Callable

import gymnasium as gym

_ENV_CREATORS: dict[str, Callable] = {}


class EnvContext(dict):
    """The ``env_config`` dict handed to an env creator, with the worker's and sub-env's indices."""

    def __init__(self, env_config: dict | None, worker_index: int = 0, vector_index: int = 0):
        super().__init__(env_config or {})
        self.worker_index = worker_index
        self.vector_index = vector_index

    def copy_with_overrides(self, worker_index: int | None = None, vector_index: int | None = None) -> "EnvContext":
        return EnvContext(
            dict(self),
            self.worker_index if worker_index is None else worker_index,
            self.vector_index if vector_index is None else vector_index,
        )


def register_env(name: str, env_creator: Callable[[EnvContext], Any]) -> None:
    """Makes ``name`` usable as ``env`` in a trainer config, the CLI and Tune experiments."""
    if not callable(env_creator):
        raise TypeError(f"register_env({name!r}, ...) needs a callable env creator, got {env_creator!r}")
    _ENV_CREATORS[name] = env_creator
    if "ray.tune" in sys.modules:
        _register_with_tune(name, env_creator)


def _register_with_tune(name: str, env_creator: Callable) -> None:
    from ray.tune.registry import register_env as tune_register_env

    tune_register_env(name, env_creator)


def registered_envs() -> dict[str, Callable]:
    return dict(_ENV_CREATORS)


def _tune_env_creator(name: str) -> Callable | None:
    if "ray" not in sys.modules:
        return None
    import ray

    if not ray.is_initialized():
        return None
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if _global_registry.contains(ENV_CREATOR, name):
        return _global_registry.get(ENV_CREATOR, name)
    return None


def get_env_creator(env: Any) -> Callable[[EnvContext], Any]:
    """Resolves a config's ``env`` (a registered name, a Gymnasium id, an env class or a creator)."""
    if env is None:
        raise ValueError("no environment given: pass env='CartPole-v1' (a Gymnasium id or a name from register_env)")
    if isinstance(env, str):
        if env in _ENV_CREATORS:
            return _ENV_CREATORS[env]
        creator = _tune_env_creator(env)
        if creator is not None:
            return creator
        if env not in gym.registry:
            _try_import_env_packages(env)
        if env not in gym.registry:
            known = list(_ENV_CREATORS) + list(gym.registry.keys())
            close = difflib.get_close_matches(env, known, n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"unknown environment {env!r}: not registered with relayrl.register_env and not a Gymnasium id{hint}"
            )
        return _GymMaker(env)
    if isinstance(env, type):
        return lambda ctx: env(ctx)
    if callable(env):
        return env
    raise ValueError(f"env must be a name or a creator, got {env!r}")


class _GymMaker:
    """Picklable creator for a Gymnasium id; ``env_config`` entries become ``gym.make`` keyword arguments.
    Atari (ALE) ids get the DeepMind preprocessing of ``relayrl.env.atari_wrappers``."""

    def __init__(self, env_id: str):
        self.env_id = env_id

    def __call__(self, ctx: EnvContext | None = None) -> gym.Env:
        env = gym.make(self.env_id, **dict(ctx or {}))
        if len(env.observation_space.shape or ()) == 3:
            from relayrl.env.atari_wrappers import is_atari, wrap_deepmind

            if is_atari(env):
                env = wrap_deepmind(env)
        return env

    def __repr__(self) -> str:
        return f"gym.make({self.env_id!r})"


def _try_import_env_packages(env_id: str) -> None:
    """Atari ids live in ale_py, which registers them on import."""
    if "NoFrameskip" in env_id or env_id.startswith("ALE/") or "Deterministic" in env_id:
        try:
            import ale_py  # noqa: F401

            gym.register_envs(ale_py)
        except ImportError:
            pass
