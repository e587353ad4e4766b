"""N-step returns for off-policy Q-learning (DQN / Ape-X style replay).

Why: with n-step targets ``r_t + g r_{t+1} + ... + g^{n-1} r_{t+n-1} +
g^n max_a Q(s_{t+n}, a)`` reward information propagates n states per update
instead of one, which is how the prioritized, distributed DQN variants built
on Schaul et al. 2016 ("Prioritized Experience Replay") are trained.

Rewriting a trajectory once, before it enters the replay buffer, turns every
row into an ordinary (obs, action, reward, new_obs, done) transition, so the
buffer and the loss need no n-step logic. The one extra column,
``n_step_discount``, carries ``gamma ** m`` where ``m`` is the number of
rewards actually summed for the row; it is smaller than ``n`` near the end of
a trajectory or before a terminal step, and using ``gamma ** n`` there would
under-weight the bootstrap value. The TD target is then::

    rewards[t] + n_step_discount[t] * (1 - dones[t]) * max_a Q(new_obs[t], a)
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

__all__ = ["adjust_nstep"]


def adjust_nstep(n_step: int, gamma: float, columns: MutableMapping[str, np.ndarray]) -> None:
    """Rewrite one trajectory's columns in place into n-step transitions.

    ``columns`` holds the rows of ONE trajectory in time order: ``"obs"``,
    ``"actions"``, ``"rewards"``, ``"new_obs"``, ``"dones"`` (``dones[t]``
    means "step t terminated the episode: do not bootstrap"; a time-limit
    truncation is simply the end of the trajectory). For each row ``t`` the
    window is the ``m_t <= n_step`` steps ``t, ..., t + m_t - 1`` that stops at
    the end of the trajectory or right after the first terminal step, and:

    * ``rewards[t] = sum_{k < m_t} gamma**k * rewards[t + k]``
    * ``new_obs[t] = new_obs[t + m_t - 1]`` (the observation ``m_t`` steps
      later, or the trajectory's last ``new_obs`` if the window runs past the
      end)
    * ``dones[t] = dones[t + m_t - 1]`` (a terminal lies inside the window)
    * ``n_step_discount[t] = gamma ** m_t`` (new column)

    ``obs`` and ``actions`` (and any other column) keep their values.
    The ``rewards``, ``new_obs`` and ``dones`` arrays are overwritten in place
    when they are writable numpy arrays (``rewards`` must also be floating
    point); otherwise the dict entry is replaced by a new array.
    """
    if int(n_step) != n_step or n_step < 1:
        raise ValueError(f"n_step must be a positive integer, got {n_step!r}")
    if not (np.isfinite(gamma) and 0.0 <= gamma <= 1.0):
        raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}")
    missing = [k for k in ("rewards", "new_obs", "dones") if k not in columns]
    if missing:
        raise ValueError(f"adjust_nstep needs columns {missing}")
    rewards = np.asarray(columns["rewards"])
    new_obs = np.asarray(columns["new_obs"])
    dones = np.asarray(columns["dones"])
    horizon = len(rewards)
    lengths = {
        k: len(np.asarray(columns[k])) for k in ("obs", "actions", "rewards", "new_obs", "dones") if k in columns
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"all trajectory columns need the same length, got {lengths}")
    if rewards.ndim != 1 or dones.ndim != 1:
        raise ValueError(f"rewards and dones must be 1-D, got shapes {rewards.shape} and {dones.shape}")

    steps = _window_lengths(int(n_step), dones.astype(bool))
    t = np.arange(horizon)
    last = t + steps - 1  # last step inside each row's window

    # Sum the window with one vectorised pass per offset k < n_step.
    n_step_rewards = np.zeros(horizon, dtype=np.float64)
    source = rewards.astype(np.float64)
    for k in range(int(n_step)):
        inside = k < steps
        n_step_rewards[inside] += gamma**k * source[t[inside] + k]

    new_obs_shifted = new_obs[last]  # fancy indexing copies, so no aliasing
    dones_shifted = dones[last]
    reward_dtype = rewards.dtype if rewards.dtype.kind == "f" else np.dtype(np.float32)
    _write(columns, "rewards", n_step_rewards.astype(reward_dtype), require_float=True)
    _write(columns, "new_obs", new_obs_shifted)
    _write(columns, "dones", dones_shifted)
    columns["n_step_discount"] = (float(gamma) ** steps.astype(np.float64)).astype(reward_dtype)


def _window_lengths(n_step: int, terminal: np.ndarray) -> np.ndarray:
    """``m_t = min(n_step, T - t, (first terminal at or after t) - t + 1)``."""
    horizon = len(terminal)
    t = np.arange(horizon)
    # Index of the first terminal at or after t (horizon - 1 if none: the
    # trajectory end bounds the window the same way).
    marks = np.where(terminal, t, horizon - 1)
    next_stop = np.minimum.accumulate(marks[::-1])[::-1]
    return np.minimum(n_step, next_stop - t + 1).astype(np.int64)


def _write(columns: MutableMapping[str, np.ndarray], key: str, value: np.ndarray, require_float: bool = False) -> None:
    """Overwrite ``columns[key]`` in place when possible, else replace it."""
    current = columns[key]
    if (
        isinstance(current, np.ndarray)
        and current.flags.writeable
        and current.shape == value.shape
        and (not require_float or current.dtype.kind == "f")
    ):
        current[...] = value
    else:
        columns[key] = value
