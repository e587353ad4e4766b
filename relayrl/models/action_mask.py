"""Action masks: a Dict observation with an ``action_mask`` entry says which discrete actions are legal now.

This is PettingZoo's convention (classic games: ``Dict(action_mask=Box(0, 1, (n,), int8), observation=...)``);
the key is configurable (``model: {action_mask_key: ...}``). A mask row holds one entry per action of a Discrete
action space, non-zero = legal. The observation without the mask ("inner" observation) is the one remaining
entry itself when only one is left (PettingZoo's ``observation``), else a Dict of the remaining entries::

    inner_space, n = split_action_mask(obs_space)     # (Box(0, 1, (3, 3, 2)), 9) for tic-tac-toe; (obs_space, 0)
    obs, mask = split_mask_batch(raw_obs_list)        # a list of dict observations -> (inner obs [B, ...], bool [B, n])
    obs, mask = split_mask_batch(flat_obs, obs_space=policy.observation_space)  # a flat [B, size] batch
    logits = mask_logits(logits, mask)                # illegal actions -> the lowest float: never sampled, never max

Flat batches follow FlattenPreprocessor's layout (Dict keys in sorted order), so the inner columns of a flat
batch are exactly the flat form of ``inner_space``. An all-zero mask row (no legal action) is an env bug when an
action is asked for: acting on one raises ValueError (``check_legal``; the multi-agent checker,
``relayrl.env.MultiAgentEpisodeChecker``, reports it with the agent and the step). Values of such rows (a final
observation) are computed as usual.

Every policy masks by its own observation space, whatever the trainer (so each policy of a multi-agent setup
detects its own mask): the catalog wraps the default models in ``ActionMaskModel``
(``relayrl.models.masked_model``) and DQN's Q-network slices the same ``mask_columns`` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

ACTION_MASK = "action_mask"


def _mask_size(space: gym.Space, key: str) -> int:
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary)) and len(space.shape) == 1:
        return int(space.shape[0])
    raise ValueError(
        f"the observation entry {key!r} is {space}; an action mask must be a 1-D Box or MultiBinary"
        " (one entry per action, non-zero = legal)"
    )


def split_action_mask(obs_space: gym.Space, key: str = ACTION_MASK) -> tuple[gym.Space | None, int]:
    """``(inner_space, mask_size)`` of a Dict observation space with a ``key`` entry: ``inner_space`` is the
    remaining entry when one is left, a Dict of the remaining entries when several are, None when the Dict holds
    only the mask. Without a mask: ``(obs_space, 0)``. A flat Box made by FlattenPreprocessor is read through its
    ``original_space``. A mask that is not a 1-D Box / MultiBinary is a ValueError naming the key."""
    space = getattr(obs_space, "original_space", obs_space)
    if not isinstance(space, gym.spaces.Dict) or key not in space.spaces:
        return obs_space, 0
    size = _mask_size(space.spaces[key], key)
    rest = {k: s for k, s in space.spaces.items() if k != key}
    if not rest:
        return None, size
    if len(rest) == 1:
        return next(iter(rest.values())), size
    return gym.spaces.Dict(rest), size


def has_action_mask(obs_space: gym.Space, key: str = ACTION_MASK) -> bool:
    return split_action_mask(obs_space, key)[1] > 0


def action_mask_columns(obs_space: gym.Space, key: str = ACTION_MASK) -> tuple[int, int] | None:
    """``(start, end)``: the columns of the mask in a flat observation of ``obs_space`` (a Dict, or the flat Box
    carrying it as ``original_space``); None without a mask."""
    space = getattr(obs_space, "original_space", obs_space)
    if split_action_mask(space, key)[1] == 0:
        return None
    from relayrl.models.preprocessors import get_preprocessor

    start = 0
    for k in sorted(space.spaces):  # FlattenPreprocessor's order
        size = get_preprocessor(space.spaces[k])(space.spaces[k]).size
        if k == key:
            return start, start + size
        start += size
    return None  # unreachable: split_action_mask found the key


def _stack(values: Sequence[Any]) -> Any:
    first = values[0]
    if isinstance(first, Mapping):
        return {k: _stack([v[k] for v in values]) for k in first}
    if isinstance(first, torch.Tensor):
        return torch.stack(list(values))
    return np.stack([np.asarray(v) for v in values])


def _inner(entries: Mapping, key: str) -> Any:
    rest = {k: v for k, v in entries.items() if k != key}
    if not rest:
        return None
    return next(iter(rest.values())) if len(rest) == 1 else rest


def split_mask_batch(batch: Any, key: str = ACTION_MASK, obs_space: gym.Space | None = None) -> tuple[Any, Any]:
    """``(inner_obs, mask)`` of a batch of masked observations; ``mask`` is boolean ``[B, n]`` (True = legal).

    ``batch`` may be a list of raw dict observations (stacked into numpy arrays), a dict of batched arrays or
    tensors (e.g. from ``restore_original_dimensions``), or a flat ``[B, size]`` array / tensor, which needs
    ``obs_space`` (the Dict space or the flat Box carrying it as ``original_space``). The inner observation
    follows ``split_action_mask``: the one remaining entry, a dict of several, or None."""
    if isinstance(batch, Mapping):
        if key not in batch:
            raise KeyError(f"the observation batch has no {key!r} entry (its keys: {sorted(batch)})")
        return _inner(batch, key), batch[key] > 0
    if isinstance(batch, (list, tuple)):
        if not batch or not isinstance(batch[0], Mapping) or key not in batch[0]:
            raise ValueError(f"expected a non-empty list of dict observations with a {key!r} entry")
        mask = _stack([o[key] for o in batch]) > 0
        rest = [{k: v for k, v in o.items() if k != key} for o in batch]
        return _inner(_stack(rest), key) if rest[0] else None, mask
    cols = None if obs_space is None else action_mask_columns(obs_space, key)
    if cols is None:
        raise ValueError(
            f"a flat observation batch needs obs_space: a Dict with a {key!r} entry (or the flat Box"
            f" carrying it as original_space); got {obs_space}"
        )
    start, end = cols
    mask = batch[..., start:end] > 0
    parts = [batch[..., :start], batch[..., end:]]
    inner = torch.cat(parts, -1) if isinstance(batch, torch.Tensor) else np.concatenate(parts, -1)
    return (inner if inner.shape[-1] else None), mask


def mask_logits(logits: torch.Tensor, mask: Any) -> torch.Tensor:
    """``logits`` (or Q-values) ``[B, n]`` with the entries of illegal actions (``mask`` 0 / False) set to the
    lowest finite value of their dtype: a softmax gives them probability 0 and an argmax / max never picks them
    while a legal action exists. Finite rather than -inf so that ``0 * logit`` terms (entropy) stay NaN-free."""
    # .to rather than as_tensor for a tensor: a traced export must not record the mask as a constant.
    mask = mask.to(logits.device) if isinstance(mask, torch.Tensor) else torch.as_tensor(mask, device=logits.device)
    return torch.where(mask > 0, logits, torch.finfo(logits.dtype).min)


def mask_columns(
    obs_space: gym.Space, action_space: gym.Space, key: str | None = ACTION_MASK
) -> tuple[int, int] | None:
    """``action_mask_columns`` of a policy's spaces, None when ``key`` is None / empty or the observation has no such
    entry. A mask that does not fit the action space (not Discrete, or another number of actions) is a ValueError
    naming the key and ``model.action_mask_key``."""
    if not key:
        return None
    size = split_action_mask(obs_space, key)[1]
    if not size:
        return None
    if not isinstance(action_space, gym.spaces.Discrete) or int(action_space.n) != size:
        raise ValueError(
            f"the observation's {key!r} entry masks {size} actions but the action space is {action_space}: an action"
            f" mask needs a Discrete({size}) action space (set model.action_mask_key: None to treat the entry as an"
            " ordinary observation)"
        )
    return action_mask_columns(obs_space, key)


def check_legal(mask: Any) -> None:
    """Raises ValueError when a row of ``mask`` (``[B, n]``, > 0 = legal) allows no action: sampling from it would
    silently pick among illegal actions."""
    legal = np.asarray(mask > 0).any(axis=-1)
    if not legal.all():
        row = int(np.flatnonzero(~legal)[0])
        raise ValueError(
            f"the action mask is all zeros: no legal action in observation {row} of the batch (an environment must"
            " offer at least one legal action when it asks for one)"
        )
