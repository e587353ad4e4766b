"""Observation filters: running mean/std normalisation that stays in sync across workers.

Each worker's filter keeps two sets of statistics: ``rs`` (everything it knows, used to normalise) and
``buffer`` (what it has seen since the last sync). The driver folds every worker's buffer into its own
filter with ``apply_changes`` and sends the result back with ``sync``; counting each observation once.

The statistics use the parallel-variance merge of Chan, Golub & LeVeque (1979), so a batch of
observations updates them in a handful of numpy operations and two workers' statistics merge exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    from numpy._core.umath import clip as _clip_ufunc
except ImportError:  # numpy 1.x
    from numpy.core.umath import clip as _clip_ufunc


class RunningStat:
    """Count, mean and sum of squared deviations (M2) of a stream of arrays of one shape."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self, shape: tuple[int, ...] = ()):
        self.n = 0
        self.mean = np.zeros(shape, dtype=np.float64)
        self.m2 = np.zeros(shape, dtype=np.float64)

    def push_batch(self, x: np.ndarray) -> None:
        """Adds the rows of ``x`` (shape ``[k, *shape]``)."""
        k = x.shape[0]
        if k == 0:
            return
        self._merge(k, *_mean_and_m2(x))

    def push(self, x: np.ndarray) -> None:
        self.push_batch(np.asarray(x, dtype=np.float64)[None])

    def update(self, other: "RunningStat") -> None:
        """Merges another stat's observations into this one."""
        if other.n:
            self._merge(other.n, other.mean, other.m2)

    def _merge(self, k: int, mean: np.ndarray, m2: np.ndarray) -> None:
        n = self.n + k
        delta = mean - self.mean
        self.mean = self.mean + delta * (k / n)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * k / n)
        self.n = n

    @property
    def var(self) -> np.ndarray:
        return self.m2 / (self.n - 1) if self.n > 1 else np.square(self.mean)

    @property
    def _n(self) -> int:
        """RLlib's name of the count (its tests set ``rs._n``)."""
        return self.n

    @_n.setter
    def _n(self, value: int) -> None:
        self.n = value

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    def copy(self) -> "RunningStat":
        other = RunningStat(self.mean.shape)
        other.n, other.mean, other.m2 = self.n, self.mean.copy(), self.m2.copy()
        return other

    def to_state(self) -> dict[str, Any]:
        return {"n": int(self.n), "mean": self.mean.copy(), "m2": self.m2.copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "RunningStat":
        stat = cls(np.shape(state["mean"]))
        stat.n = int(state["n"])
        stat.mean = np.array(state["mean"], dtype=np.float64)
        stat.m2 = np.array(state["m2"], dtype=np.float64)
        return stat


def _mean_and_m2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    deviations = x - mean
    return mean, np.einsum("i...,i...->...", deviations, deviations)


class Filter:
    """Interface: ``filter(batch)`` maps a batch of observations ``[k, *shape]`` to the policy's input."""

    is_identity = False

    def __call__(self, x: np.ndarray, update: bool = True) -> np.ndarray:
        raise NotImplementedError

    def apply_changes(self, other: "Filter", with_buffer: bool = False) -> None:
        pass

    def sync(self, other: "Filter") -> None:
        pass

    def clear_buffer(self) -> None:
        pass

    def copy(self) -> "Filter":
        return self

    def to_state(self) -> dict[str, Any]:
        return {"type": type(self).__name__}

    def check_state(self, state: Any, where: str = "filter") -> None:
        """Raises ValueError naming the field unless ``state`` (a ``to_state()``, e.g. from a checkpoint) can
        be this filter's: same type, and statistics of this filter's shape. MeanStdFilter.set_state calls it."""
        if not isinstance(state, dict):
            raise ValueError(f"field {where!r} must be an object, found {type(state).__name__}")
        kind = state.get("type")
        if kind != type(self).__name__:
            raise ValueError(f"field {where!r} is the state of a {kind} filter, not of a {type(self).__name__}")

    def set_state(self, state: dict[str, Any]) -> None:
        pass


class NoFilter(Filter):
    is_identity = True

    def __call__(self, x: np.ndarray, update: bool = True) -> np.ndarray:
        return x


class MeanStdFilter(Filter):
    """Normalises to zero mean and unit variance with running statistics, then clips to ``[-clip, clip]``.

    Statistics include every observation filtered so far (as in RLlib 2019 and the ES/PPO reference code).
    To keep the per-step cost to three numpy operations, new observations are buffered and folded into the
    statistics in one batch as soon as they make up 1/64 of everything seen (every step at first, every
    few hundred steps later), so the normalisation constants never lag by more than 1.6% of the data.
    Reading ``rs``, ``buffer`` or the state folds the pending rows in first, so what is read is exact.
    """

    _REFRESH_FRACTION = 64

    def __init__(
        self,
        shape: tuple[int, ...],
        demean: bool = True,
        destd: bool = True,
        clip: float = 10.0,
        passthrough: tuple[int, int] | None = None,
    ):
        """``passthrough``: ``(start, end)`` columns of a flat observation that go through unchanged (an action
        mask's: standardised, a mask column that is always 1 would become 0, i.e. illegal)."""
        self.shape = tuple(shape)
        self.demean, self.destd, self.clip = demean, destd, clip
        self.passthrough = passthrough
        self._rs = RunningStat(self.shape)
        self._buffer = RunningStat(self.shape)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._refresh_constants()

    @property
    def rs(self) -> RunningStat:
        self._flush()
        return self._rs

    @rs.setter
    def rs(self, value: RunningStat) -> None:
        self._flush()
        self._rs = value
        self._refresh_constants()

    @property
    def buffer(self) -> RunningStat:
        self._flush()
        return self._buffer

    @buffer.setter
    def buffer(self, value: RunningStat) -> None:
        self._flush()
        self._buffer = value

    def __call__(self, x: np.ndarray, update: bool = True) -> np.ndarray:
        if update:
            self._pending.append(np.array(x))
            self._pending_rows += len(x)
            if self._pending_rows * self._REFRESH_FRACTION >= self._rs.n + self._pending_rows:
                self._flush()
        out = np.subtract(x, self._mean, dtype=np.float32)
        out *= self._inv_std
        if self.clip:
            _clip_ufunc(out, -self.clip, self.clip, out=out)  # np.clip's Python wrapper costs more than the work
        return out

    def _flush(self) -> None:
        if not self._pending:
            return
        batch = np.concatenate(self._pending).astype(np.float64, copy=False)
        self._pending, self._pending_rows = [], 0
        mean, m2 = _mean_and_m2(batch)  # once for both statistics
        self._rs._merge(len(batch), mean, m2)
        self._buffer._merge(len(batch), mean, m2)
        self._refresh_constants()

    def _refresh_constants(self) -> None:
        rs = self._rs
        mean = rs.mean if self.demean and rs.n > 0 else np.zeros(self.shape)
        std = rs.std if self.destd and rs.n > 1 else np.ones(self.shape)
        self._mean = mean.astype(np.float32)
        self._inv_std = (1.0 / (std + 1e-8)).astype(np.float32)
        if self.passthrough is not None:
            start, end = self.passthrough
            self._mean[..., start:end] = 0.0
            self._inv_std[..., start:end] = 1.0

    def apply_changes(self, other: "MeanStdFilter", with_buffer: bool = False) -> None:
        """Adds what ``other`` saw since its last sync (its buffer) to this filter's statistics."""
        self.rs.update(other.buffer)
        self._refresh_constants()
        if with_buffer:
            self.buffer = other.buffer.copy()

    def sync(self, other: "MeanStdFilter") -> None:
        """Takes over ``other``'s statistics, keeping this filter's own un-synced buffer."""
        self.rs = other.rs.copy()

    def clear_buffer(self) -> None:
        self.buffer = RunningStat(self.shape)

    def copy(self) -> "MeanStdFilter":
        other = MeanStdFilter(self.shape, self.demean, self.destd, self.clip, self.passthrough)
        other.rs, other.buffer = self.rs.copy(), self.buffer.copy()
        return other

    def to_state(self) -> dict[str, Any]:
        return {
            "type": "MeanStdFilter",
            "shape": list(self.shape),
            "clip": self.clip,
            "demean": self.demean,
            "destd": self.destd,
            "rs": self.rs.to_state(),
            "buffer": self.buffer.to_state(),
        }

    def check_state(self, state: Any, where: str = "filter") -> None:
        super().check_state(state, where)
        for part in ("rs", "buffer"):
            if part not in state:
                raise ValueError(f"field {where!r} lacks {part!r}")
        if "shape" in state and (not isinstance(state["shape"], (list, tuple)) or tuple(state["shape"]) != self.shape):
            raise ValueError(f"field '{where}.shape' is {state['shape']!r}, the filter's is {list(self.shape)}")
        for part in ("rs", "buffer"):
            _check_running_stat(state[part], self.shape, f"{where}.{part}")

    def set_state(self, state: dict[str, Any]) -> None:
        """Takes ``rs`` and ``buffer`` from ``state``; all or nothing (a bad state raises ValueError first)."""
        self.check_state(state)
        rs, buffer = RunningStat.from_state(state["rs"]), RunningStat.from_state(state["buffer"])
        self.rs, self.buffer = rs, buffer

    def __repr__(self) -> str:
        return f"MeanStdFilter(shape={self.shape}, n={self.rs.n})"


def _check_running_stat(stat: Any, shape: tuple[int, ...], where: str) -> None:
    """A RunningStat.to_state() of ``shape``: a count, a finite mean and a finite, non-negative M2."""
    if not isinstance(stat, dict):
        raise ValueError(f"field {where!r} must be an object, found {type(stat).__name__}")
    for key in ("n", "mean", "m2"):
        if key not in stat:
            raise ValueError(f"field {where!r} lacks {key!r}")
    n = stat["n"]
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"field '{where}.n' must be a non-negative integer, found {n!r}")
    for key in ("mean", "m2"):
        try:
            value = stat[key]
            arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"field '{where}.{key}' must be an array of numbers ({e})") from e
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"field '{where}.{key}' must be an array of numbers, found dtype {arr.dtype}")
        if arr.shape != shape:
            raise ValueError(f"field '{where}.{key}' has shape {arr.shape}, the filter's is {shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"field '{where}.{key}' has non-finite entries")
        if key == "m2" and (arr < 0).any():
            raise ValueError(f"field '{where}.m2' has negative entries (it is a sum of squared deviations)")


# ``observation_filter`` names. "ConcurrentMeanStdFilter", a RLlib 0.7 (2019) name (RLlib 2019's MeanStdFilter behind a
# lock), is accepted as MeanStdFilter; workers' statistics are merged by synchronize_filters either way.
FILTERS = {"NoFilter": NoFilter, "MeanStdFilter": MeanStdFilter, "ConcurrentMeanStdFilter": MeanStdFilter}


def get_filter(name: str, shape: tuple[int, ...], passthrough: tuple[int, int] | None = None) -> Filter:
    """Builds the filter named by the ``observation_filter`` config key (``passthrough``: columns left unchanged,
    see MeanStdFilter)."""
    if name not in FILTERS:
        raise ValueError(f"observation_filter={name!r} is unknown; choose one of {sorted(FILTERS)}")
    return NoFilter() if FILTERS[name] is NoFilter else MeanStdFilter(shape, passthrough=passthrough)


def filter_from_state(state: dict[str, Any]) -> Filter:
    if state.get("type") == "MeanStdFilter":
        f = MeanStdFilter(tuple(state["shape"]), state["demean"], state["destd"], state["clip"])
        f.set_state(state)
        return f
    return NoFilter()
