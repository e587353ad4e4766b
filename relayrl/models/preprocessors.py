"""Preprocessors turn an environment's raw observation into the flat float array a model takes.

``get_preprocessor(space)`` picks one: Box -> as is (flattened by the model), Discrete / MultiDiscrete ->
one-hot, Dict / Tuple -> their parts flattened and concatenated (Dict keys in sorted order);
``restore_original_dimensions(obs_flat, space)`` slices such flat batches back into the structure.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import gymnasium as gym
import numpy as np


class Preprocessor:
    is_identity = False

    def __init__(self, obs_space: gym.Space, options: dict | None = None):
        self.obs_space = obs_space
        self.options = options or {}
        # RLlib 0.7's custom preprocessors define _init_shape(self, obs_space, options); relayrl's take no arguments.
        takes_args = len(inspect.signature(self._init_shape).parameters) >= 2
        self.shape = self._init_shape(obs_space, self.options) if takes_args else self._init_shape()
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, self.shape, dtype=np.float32)

    def _init_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def transform(self, obs: Any) -> np.ndarray:
        raise NotImplementedError

    def transform_batch(self, obs_list: list) -> np.ndarray:
        return np.stack([self.transform(o) for o in obs_list])

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


class NoPreprocessor(Preprocessor):
    is_identity = True

    def __init__(self, obs_space: gym.Space, options: dict | None = None):
        super().__init__(obs_space, options)
        self.observation_space = obs_space

    def _init_shape(self) -> tuple[int, ...]:
        return tuple(self.obs_space.shape)

    def transform(self, obs: Any) -> np.ndarray:
        return np.asarray(obs)

    def transform_batch(self, obs_list: list) -> np.ndarray:
        return np.array(obs_list)  # a copy: a vector env may reuse its observation buffer


class OneHotPreprocessor(Preprocessor):
    def _init_shape(self) -> tuple[int, ...]:
        if isinstance(self.obs_space, gym.spaces.Discrete):
            return (int(self.obs_space.n),)
        return (int(np.sum(self.obs_space.nvec)),)

    def transform(self, obs: Any) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.float32)
        if isinstance(self.obs_space, gym.spaces.Discrete):
            out[int(obs) - int(self.obs_space.start)] = 1.0
        else:
            offsets = np.concatenate([[0], np.cumsum(self.obs_space.nvec)[:-1]])
            out[offsets + np.asarray(obs, dtype=np.int64)] = 1.0
        return out


class MultiBinaryPreprocessor(Preprocessor):
    """MultiBinary observations as float32 0/1 arrays of the same shape."""

    def _init_shape(self) -> tuple[int, ...]:
        return tuple(self.obs_space.shape)

    def transform(self, obs: Any) -> np.ndarray:
        return np.asarray(obs, dtype=np.float32)


class FlattenPreprocessor(Preprocessor):
    """Dict and Tuple spaces: each part preprocessed, flattened and concatenated."""

    def __init__(self, obs_space: gym.Space, options: dict | None = None):
        if isinstance(obs_space, gym.spaces.Dict):
            self._keys = sorted(obs_space.spaces)
            spaces = [obs_space.spaces[k] for k in self._keys]
        else:
            self._keys = None
            spaces = list(obs_space.spaces)
        self._parts = [get_preprocessor(s)(s, options) for s in spaces]
        super().__init__(obs_space, options)
        # The policy and its model see this flat Box; models rebuild the structure from it
        # (restore_original_dimensions), as RLlib's ``obs_space.original_space``.
        self.observation_space.original_space = obs_space

    def _init_shape(self) -> tuple[int, ...]:
        return (sum(p.size for p in self._parts),)

    def transform(self, obs: Any) -> np.ndarray:
        items = [obs[k] for k in self._keys] if self._keys is not None else list(obs)
        return np.concatenate(
            [np.asarray(p.transform(x), dtype=np.float32).ravel() for p, x in zip(self._parts, items)]
        )


def obs_restorer(obs_space: gym.Space) -> Callable[[Any], Any] | None:
    """``fn(obs_flat) -> structure`` for a Dict / Tuple observation space (or a flat Box carrying it as
    ``original_space``), built once; None for other spaces. See ``restore_original_dimensions``."""
    space = getattr(obs_space, "original_space", obs_space)
    if not isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        return None
    pos = 0

    def build(s: gym.Space) -> Callable[[Any], Any]:
        nonlocal pos
        if isinstance(s, gym.spaces.Dict):
            parts = [(k, build(s.spaces[k])) for k in sorted(s.spaces)]  # FlattenPreprocessor's order
            return lambda x: {k: f(x) for k, f in parts}
        if isinstance(s, gym.spaces.Tuple):
            parts_t = [build(sub) for sub in s.spaces]
            return lambda x: tuple(f(x) for f in parts_t)
        start, size = pos, get_preprocessor(s)(s).size
        pos += size
        # Box and MultiBinary leaves get their shape back; Discrete / MultiDiscrete leaves stay one-hot ([..., n] /
        # [..., sum nvec]).
        shape = tuple(s.shape) if isinstance(s, (gym.spaces.Box, gym.spaces.MultiBinary)) else (size,)
        if len(shape) == 1:
            return lambda x: x[..., start : start + size]
        return lambda x: x[..., start : start + size].reshape(*x.shape[:-1], *shape)

    return build(space)


def restore_original_dimensions(obs_flat: Any, obs_space: gym.Space) -> Any:
    """Slices a batch of flat observations (torch tensor or numpy array, ``[..., size]``) back into the structure
    of the Dict / Tuple space that FlattenPreprocessor flattened (``obs_space`` is that space or the flat Box
    carrying it as ``original_space``): dicts (keys sorted) and tuples of per-leaf batches, Box and MultiBinary
    leaves reshaped to ``[..., *shape]``, Discrete / MultiDiscrete leaves as their one-hot. Other spaces:
    ``obs_flat`` as is."""
    restore = obs_restorer(obs_space)
    return obs_flat if restore is None else restore(obs_flat)


def register_custom_preprocessor(name: str, cls: type[Preprocessor]) -> None:
    from relayrl.models import registry

    registry.register("preprocessor", name, cls)


def get_preprocessor(space: gym.Space, options: dict | None = None) -> type[Preprocessor]:
    custom = (options or {}).get("custom_preprocessor")
    if custom:
        from relayrl.models import registry

        return registry.resolve("preprocessor", custom)
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        return OneHotPreprocessor
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        return FlattenPreprocessor
    if isinstance(space, gym.spaces.Box):
        return NoPreprocessor
    if isinstance(space, gym.spaces.MultiBinary):
        return MultiBinaryPreprocessor
    raise ValueError(
        f"observation space {space} is not supported (Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple are)"
    )
