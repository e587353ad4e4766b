"""Nested (Dict / Tuple) spaces: the flat action layout, and which spaces an algorithm takes.

A policy acts in flat rows: the action of a Dict or Tuple space is one float32 row, its leaves side by side in
the order ``flatten_space`` gives (Dict keys sorted, as FlattenPreprocessor flattens observations): a Discrete
leaf is one column (its index), a MultiDiscrete leaf one column per sub-action, a Box leaf its values raveled.
SampleBatch stores these rows; the env's structure is rebuilt only when an action goes to ``env.step``::

    to_env = action_unflattener(env.action_space, clip=True)   # built once
    env.step(to_env(row))                                    # (np.int64(1), array([0.3, -0.2], dtype=float32))
    row = flatten_action(env.action_space.sample(), env.action_space)

``check_action_space(algorithm, space, supported)`` is the build-time check every algorithm uses: it raises
UnsupportedSpaceException naming the algorithm and the space.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

NESTED_SPACES = (gym.spaces.Tuple, gym.spaces.Dict)
# Leaves a flat action row can hold.
ACTION_LEAF_SPACES = (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.Box)


class UnsupportedSpaceException(ValueError):
    """An algorithm (or model) cannot take this observation or action space; raised when the trainer is built.

    ``algorithm`` is None when raised below the trainer (e.g. by the ModelCatalog); the trainer re-raises it
    with its name (``for_algorithm``)."""

    def __init__(
        self,
        space: gym.Space,
        supported: Sequence[type] = (),
        algorithm: str | None = None,
        kind: str = "action",
        detail: str = "",
    ):
        self.space, self.supported, self.algorithm, self.kind, self.detail = (
            space,
            tuple(supported),
            algorithm,
            kind,
            detail,
        )
        who = algorithm or "this policy"
        msg = f"{who} does not support the {kind} space {space}"
        if detail:
            msg += f" ({detail})"
        if self.supported:
            names = ", ".join(t.__name__ for t in self.supported)
            msg += f"; {who} supports {names} {kind} spaces"
        super().__init__(msg)

    def for_algorithm(self, algorithm: str) -> "UnsupportedSpaceException":
        """The same error, naming ``algorithm`` (the trainer's name) instead of the policy."""
        return UnsupportedSpaceException(self.space, self.supported, algorithm, self.kind, self.detail)

    def __reduce__(self):  # keeps the fields through pickling (Ray re-raises a worker's constructor error)
        return UnsupportedSpaceException, (self.space, self.supported, self.algorithm, self.kind, self.detail)


def check_action_space(algorithm: str | None, space: gym.Space, supported: Sequence[type]) -> None:
    """Raises UnsupportedSpaceException unless ``space`` is an instance of one of ``supported`` (space classes;
    a Tuple / Dict entry means nested spaces whose leaves are Discrete, MultiDiscrete or Box)."""
    if not isinstance(space, tuple(supported)):
        raise UnsupportedSpaceException(space, supported, algorithm)
    if is_nested(space):
        for leaf in flatten_space(space):
            if not isinstance(leaf, ACTION_LEAF_SPACES):
                raise UnsupportedSpaceException(
                    space, supported, algorithm, detail=f"its leaf {leaf} is not Discrete, MultiDiscrete or Box"
                )


def is_nested(space: gym.Space) -> bool:
    return isinstance(space, NESTED_SPACES)


def children(space: gym.Space) -> list[tuple[Any, gym.Space]]:
    """(key, subspace) of a Dict (keys sorted) or Tuple (indices), in flat order."""
    if isinstance(space, gym.spaces.Dict):
        return [(k, space.spaces[k]) for k in sorted(space.spaces)]
    return list(enumerate(space.spaces))


def flatten_space(space: gym.Space) -> list[gym.Space]:
    """The leaves of a (possibly nested) space in flat order."""
    if not is_nested(space):
        return [space]
    return [leaf for _, sub in children(space) for leaf in flatten_space(sub)]


def action_columns(space: gym.Space) -> int:
    """Columns of a leaf (or of a whole nested space) in a flat action row."""
    if is_nested(space):
        return sum(action_columns(leaf) for leaf in flatten_space(space))
    if isinstance(space, gym.spaces.Discrete):
        return 1
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(space.nvec.size)
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise UnsupportedSpaceException(space, ACTION_LEAF_SPACES, detail="not a flat action leaf")


def action_unflattener(space: gym.Space, clip: bool = False) -> Callable[[np.ndarray], Any]:
    """``fn(row) -> action`` in the structure of ``space`` (a tuple / dict of numpy values), built once: Discrete
    leaves as ``np.int64`` (plus the space's ``start``), MultiDiscrete as int arrays, Box leaves reshaped to their
    shape and dtype, clipped to their bounds when ``clip`` (the stored row keeps the unclipped values)."""
    pos = 0

    def build(s: gym.Space) -> Callable[[np.ndarray], Any]:
        nonlocal pos
        if isinstance(s, gym.spaces.Dict):
            parts = [(k, build(sub)) for k, sub in children(s)]
            return lambda row: {k: f(row) for k, f in parts}
        if isinstance(s, gym.spaces.Tuple):
            parts_t = [build(sub) for sub in s.spaces]
            return lambda row: tuple(f(row) for f in parts_t)
        start, n = pos, action_columns(s)
        pos += n
        if isinstance(s, gym.spaces.Discrete):
            offset = int(s.start)
            return lambda row: np.int64(row[start]) + offset
        if isinstance(s, gym.spaces.MultiDiscrete):
            md_offset, md_shape, md_dtype = s.start, s.shape, s.dtype
            return lambda row: np.asarray(row[start : start + n]).astype(md_dtype).reshape(md_shape) + md_offset
        shape, dtype, low, high = s.shape, s.dtype, s.low, s.high
        if clip:
            return lambda row: np.clip(np.asarray(row[start : start + n]).reshape(shape), low, high).astype(dtype)
        return lambda row: np.asarray(row[start : start + n]).reshape(shape).astype(dtype)

    return build(space)


def unflatten_action(row: np.ndarray, space: gym.Space, clip: bool = False) -> Any:
    """One flat action row -> the env's structure (see ``action_unflattener``; build that once in loops)."""
    return action_unflattener(space, clip)(np.asarray(row))


def clip_action(action: Any, space: gym.Space) -> Any:
    """``action`` with its Box values clipped to their bounds (a Box, or the Box leaves of a Tuple / Dict), as the
    sampler steps the env when ``clip_actions``; other actions as they are."""
    if isinstance(space, gym.spaces.Box):
        return np.clip(action, space.low, space.high)
    if isinstance(space, (gym.spaces.Tuple, gym.spaces.Dict)):
        return unflatten_action(flatten_action(action, space), space, clip=True)
    return action


def flatten_action(action: Any, space: gym.Space) -> np.ndarray:
    """An action in the structure of ``space`` -> its flat float32 row (the inverse of ``unflatten_action``)."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flatten_action(action[k], sub) for k, sub in children(space)])
    if isinstance(space, gym.spaces.Tuple):
        return np.concatenate([flatten_action(a, sub) for a, sub in zip(action, space.spaces)])
    if isinstance(space, gym.spaces.Discrete):
        return np.array([int(action) - int(space.start)], dtype=np.float32)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return (np.asarray(action) - space.start).astype(np.float32).ravel()
    return np.asarray(action, dtype=np.float32).ravel()
