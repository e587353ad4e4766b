"""Experience replay: a uniform ring buffer and proportional prioritized replay.

Storage is columnar: one preallocated numpy array per column (``obs``,
``actions``, ``rewards``, ...), created from the first added batch. Adding and
sampling a batch are then a handful of fancy-indexing calls instead of a Python
loop over transition objects, and any set of columns works (n-step columns,
worker-side ``weights``, ...).

Prioritized replay follows Schaul et al. 2016, "Prioritized Experience Replay"
(ICLR): proportional variant (Section 3.3), priorities ``p_i = (|delta_i| +
eps) ** alpha``, stratified sampling of one transition per equal-mass segment
(Appendix B.2.1), new transitions at the maximum priority seen so far
(Algorithm 1, line 6) and importance-sampling weights
``w_i = (N * P(i)) ** -beta / max_j w_j`` (Section 3.4).

Columns listed in ``compress_columns`` (typically image observations) are
stored as one LZ4-packed bytes object per row and decompressed on sample, see
:mod:`relayrl.utils.compression`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from relayrl.optimizers.segment_tree import MinSegmentTree, SumSegmentTree
from relayrl.utils.compression import pack_column, unpack_column

__all__ = ["ReplayBuffer", "PrioritizedReplayBuffer"]

_RESERVED_COLUMNS = frozenset({"batch_indexes"})


class ReplayBuffer:
    """Fixed-size FIFO ring buffer of transitions with uniform sampling.

    Args:
        size: maximum number of rows; once full, the oldest rows are
            overwritten.
        compress_columns: names of columns to store LZ4-compressed per row.
        seed: seed of the buffer's own random generator (used when
            :meth:`sample` gets no ``rng``).
    """

    def __init__(self, size: int, compress_columns: Sequence[str] = (), seed: int | None = None) -> None:
        if int(size) != size or size < 1:
            raise ValueError(f"replay buffer size must be a positive integer, got {size!r}")
        if isinstance(compress_columns, str):
            compress_columns = (compress_columns,)
        self._maxsize = int(size)
        self._compress = frozenset(compress_columns)
        self._rng = np.random.default_rng(seed)
        # Created lazily by the first add_batch: name -> preallocated array.
        self._storage: dict[str, np.ndarray] | None = None
        # Per-row (dtype, shape) of every column, used to validate later batches.
        self._row_specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        # Compressed columns: packed size of each slot, and their running total.
        self._packed_nbytes: dict[str, np.ndarray] = {}
        self._packed_total = 0
        self._next_idx = 0
        self._num_entries = 0
        self._num_added = 0
        self._num_sampled = 0

    def __len__(self) -> int:
        return self._num_entries

    @property
    def capacity(self) -> int:
        """Maximum number of rows."""
        return self._maxsize

    # ------------------------------------------------------------------ adding
    def add_batch(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Append the N rows of ``columns`` (all with the same leading length).

        When the buffer is full the oldest rows are overwritten; a batch larger
        than the buffer keeps only its last ``size`` rows. The first batch fixes
        the column names, dtypes and row shapes; later batches must match them
        (values are cast to the stored dtype if numpy's "same_kind" rule allows).

        Returns:
            The int64 slot indices written, in row order.
        """
        arrays = self._validate_batch(columns)
        n = len(next(iter(arrays.values())))
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if self._storage is None:
            self._allocate(arrays)
        assert self._storage is not None
        if n > self._maxsize:
            # Only the newest `size` rows survive; dropping the rest up front
            # keeps the slot indices unique (fancy assignment order is unspecified).
            arrays = {k: v[n - self._maxsize :] for k, v in arrays.items()}
            self._next_idx = (self._next_idx + n - self._maxsize) % self._maxsize
            self._num_added += n - self._maxsize
            n = self._maxsize
        idx = (self._next_idx + np.arange(n, dtype=np.int64)) % self._maxsize
        for name, values in arrays.items():
            if name in self._compress:
                packed = pack_column(values)
                sizes = np.fromiter((len(b) for b in packed), dtype=np.int64, count=n)
                slot_sizes = self._packed_nbytes[name]
                self._packed_total += int(sizes.sum() - slot_sizes[idx].sum())
                slot_sizes[idx] = sizes
                self._storage[name][idx] = packed
            else:
                self._storage[name][idx] = values
        self._next_idx = (self._next_idx + n) % self._maxsize
        self._num_entries = min(self._num_entries + n, self._maxsize)
        self._num_added += n
        return idx

    def _validate_batch(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not columns:
            raise ValueError("add_batch needs at least one column")
        arrays = {name: np.asarray(values) for name, values in columns.items()}
        reserved = _RESERVED_COLUMNS.intersection(arrays)
        if reserved:
            raise ValueError(f"column names {sorted(reserved)} are reserved for sample() output")
        lengths = {name: (len(a) if a.ndim else None) for name, a in arrays.items()}
        if None in lengths.values() or len(set(lengths.values())) != 1:
            raise ValueError(f"all columns need the same leading length, got {lengths}")
        if not self._row_specs:
            return arrays
        missing = sorted(set(self._row_specs) - set(arrays))
        extra = sorted(set(arrays) - set(self._row_specs))
        if missing or extra:
            raise ValueError(f"column set differs from the stored one: missing {missing}, unexpected {extra}")
        for name, a in arrays.items():
            dtype, row_shape = self._row_specs[name]
            if a.shape[1:] != row_shape:
                raise ValueError(f"column {name!r}: row shape {a.shape[1:]}, stored row shape {row_shape}")
            if a.dtype != dtype:
                if not np.can_cast(a.dtype, dtype, casting="same_kind"):
                    raise ValueError(f"column {name!r}: cannot store dtype {a.dtype} in a {dtype} column")
                arrays[name] = a.astype(dtype)
        return arrays

    def _allocate(self, arrays: Mapping[str, np.ndarray]) -> None:
        unknown = self._compress - set(arrays)
        if unknown:
            raise ValueError(f"compress_columns {sorted(unknown)} are not among the added columns")
        storage = {}
        for name, a in arrays.items():
            if name in self._compress:
                storage[name] = np.empty(self._maxsize, dtype=object)
                self._packed_nbytes[name] = np.zeros(self._maxsize, dtype=np.int64)
            else:
                storage[name] = np.zeros((self._maxsize,) + a.shape[1:], dtype=a.dtype)
        self._row_specs = {name: (a.dtype, a.shape[1:]) for name, a in arrays.items()}
        self._storage = storage

    # ---------------------------------------------------------------- sampling
    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Draw ``batch_size`` rows uniformly with replacement.

        Returns every stored column (compressed ones decompressed) plus
        ``"batch_indexes"``, the int64 slots the rows came from.
        """
        self._check_can_sample(batch_size)
        rng = self._rng if rng is None else rng
        idx = rng.integers(0, self._num_entries, size=batch_size, dtype=np.int64)
        return self._gather(idx)

    def _check_can_sample(self, batch_size: int) -> None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if self._num_entries == 0:
            raise ValueError("cannot sample from an empty replay buffer")

    def _gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        assert self._storage is not None
        out: dict[str, np.ndarray] = {}
        for name, stored in self._storage.items():
            out[name] = unpack_column(stored[idx]) if name in self._compress else stored[idx]
        out["batch_indexes"] = idx
        self._num_sampled += len(idx)
        return out

    # ------------------------------------------------------------------- stats
    def stats(self) -> dict[str, float | int | list[str]]:
        """Counters and an estimate of the memory held by the stored rows.

        ``est_size_bytes`` counts uncompressed arrays in full and compressed
        columns as their packed bytes plus one object pointer per slot;
        ``raw_size_bytes`` is what the same rows would take uncompressed.
        """
        stored_bytes = 0  # preallocated arrays (object pointers for compressed columns)
        raw_bytes = 0
        for name, stored in (self._storage or {}).items():
            stored_bytes += stored.nbytes
            dtype, row_shape = self._row_specs[name]
            raw_bytes += self._maxsize * dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        return {
            "capacity": self._maxsize,
            "num_entries": self._num_entries,
            "num_added": self._num_added,
            "num_sampled": self._num_sampled,
            "next_idx": self._next_idx,
            "columns": sorted(self._row_specs),
            "compressed_columns": sorted(self._compress),
            "est_size_bytes": stored_bytes + self._packed_total,
            "raw_size_bytes": raw_bytes,
        }


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016, Section 3.3).

    Args:
        size: maximum number of rows.
        alpha: prioritization exponent; 0 gives uniform sampling, the paper
            uses 0.6 for the proportional variant.
        eps: added to every ``|td error|`` so no transition gets probability
            zero (the paper's epsilon).
        compress_columns, seed: as for :class:`ReplayBuffer`.

    The caller passes raw ``|td error|`` values (to :meth:`update_priorities`
    or ``add_batch(..., priorities=...)``); the buffer stores
    ``(|td| + eps) ** alpha``. Annealing ``beta`` is the caller's job.

    If a stored column is itself named ``"weights"`` (e.g. placeholder ones
    written by rollout workers), :meth:`sample` returns the importance
    weights under that name instead of the stored values.
    """

    def __init__(
        self,
        size: int,
        alpha: float,
        eps: float = 1e-6,
        compress_columns: Sequence[str] = (),
        seed: int | None = None,
    ) -> None:
        super().__init__(size, compress_columns=compress_columns, seed=seed)
        if not (np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self._alpha = float(alpha)
        self._eps = float(eps)
        self._sum_tree = SumSegmentTree(self._maxsize)
        self._min_tree = MinSegmentTree(self._maxsize)
        # Largest |td| + eps seen so far (Algorithm 1: p_t = max_{i<t} p_i),
        # stored before the alpha exponent; starts at 1 (Algorithm 1: p_1 = 1).
        self._max_priority = 1.0
        self._num_updates = 0

    @property
    def max_priority(self) -> float:
        """Largest ``|td| + eps`` seen so far (before ``** alpha``)."""
        return self._max_priority

    def add_batch(self, columns: Mapping[str, np.ndarray], priorities: np.ndarray | None = None) -> np.ndarray:
        """Add rows; they get ``max_priority ** alpha`` unless ``priorities``
        (one ``|td error|`` per row, computed worker-side) are given.
        """
        if priorities is None:
            idx = super().add_batch(columns)
            p_alpha = np.full(len(idx), self._max_priority**self._alpha)
        else:
            # Validate everything before any row is written.
            n = len(np.asarray(next(iter(columns.values())))) if columns else 0
            p_plus_eps = self._validated_priorities(priorities, n)
            p_alpha = self._raise_to_alpha(p_plus_eps)
            idx = super().add_batch(columns)
            p_alpha = p_alpha[n - len(idx) :]  # a batch larger than the buffer keeps its tail
            if n:
                self._max_priority = max(self._max_priority, float(p_plus_eps.max()))
        if len(idx):
            self._sum_tree[idx] = p_alpha
            self._min_tree[idx] = p_alpha
        return idx

    def sample(  # type: ignore[override]  # beta is required, unlike the uniform buffer
        self, batch_size: int, beta: float, rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """Draw ``batch_size`` rows with probability ``P(i) = p_i / sum_k p_k``.

        Stratified as in Schaul et al. 2016 (Appendix B.2.1): the total mass is
        cut into ``batch_size`` equal segments and one prefix sum is drawn
        uniformly inside each, which lowers the variance of the batch
        composition compared to independent draws.

        Adds ``"weights"``: float32 importance weights ``(N * P(i)) ** -beta``
        divided by the largest possible weight ``(N * P_min) ** -beta``, which
        simplifies to ``(p_i / p_min) ** -beta``; and ``"batch_indexes"``.
        """
        if not (np.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        self._check_can_sample(batch_size)
        rng = self._rng if rng is None else rng
        total = self._sum_tree.sum()
        segment = total / batch_size
        prefix = (np.arange(batch_size, dtype=np.float64) + rng.random(batch_size)) * segment
        idx = self._sum_tree.find_prefixsum_idx(prefix)
        p = self._sum_tree[idx]
        weights = (p / self._min_tree.min()) ** -beta
        out = self._gather(idx)
        out["weights"] = weights.astype(np.float32)
        return out

    def update_priorities(self, idxes: np.ndarray, priorities: np.ndarray) -> None:
        """Set the priorities of sampled rows from their new ``|td error|``.

        Stores ``(|td| + eps) ** alpha``. Raises ValueError for indices outside
        the filled part of the buffer, for a length mismatch, and for
        non-finite or negative priorities. With repeated indices, the last
        value wins.
        """
        idx = np.asarray(idxes)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise ValueError(f"idxes must be a 1-D integer array, got dtype {idx.dtype} and shape {idx.shape}")
        p_plus_eps = self._validated_priorities(priorities, len(idx))
        if len(idx) == 0:
            return
        if idx.min() < 0 or idx.max() >= self._num_entries:
            raise ValueError(
                f"idxes must lie in [0, {self._num_entries}) (the filled slots), "
                f"got values in [{idx.min()}, {idx.max()}]"
            )
        p_alpha = self._raise_to_alpha(p_plus_eps)
        self._sum_tree[idx] = p_alpha
        self._min_tree[idx] = p_alpha
        self._max_priority = max(self._max_priority, float(p_plus_eps.max()))
        self._num_updates += len(idx)

    def _validated_priorities(self, priorities: np.ndarray, n: int) -> np.ndarray:
        """Check raw ``|td|`` priorities and return ``|td| + eps`` (float64)."""
        p = np.asarray(priorities, dtype=np.float64)
        if p.shape != (n,):
            raise ValueError(f"expected {n} priorities as a 1-D array, got shape {p.shape}")
        if n == 0:
            return p
        # One min and one max cover the common case (NaN fails `lo >= 0`);
        # the slower diagnosis below only runs to word the error.
        lo, hi = p.min(), p.max()
        if not (lo >= 0.0 and hi < np.inf):
            finite = np.isfinite(p)
            if not finite.all():
                bad = int(np.flatnonzero(~finite)[0])
                raise ValueError(f"priorities must be finite, got {p[bad]} at position {bad}")
            bad = int(np.flatnonzero(p < 0)[0])
            raise ValueError(f"priorities must be >= 0 (pass |td error|), got {p[bad]} at position {bad}")
        if lo + self._eps <= 0.0:
            bad = int(np.argmin(p))
            raise ValueError(f"priority + eps must be > 0, got 0 at position {bad} (eps={self._eps})")
        return p + self._eps

    def _raise_to_alpha(self, p_plus_eps: np.ndarray) -> np.ndarray:
        p_alpha = p_plus_eps**self._alpha
        # Only reachable with alpha > 1 and extreme priorities.
        if len(p_alpha) and not (p_alpha.min() > 0.0 and p_alpha.max() < np.inf):
            raise ValueError(f"priority ** alpha over/underflowed (alpha={self._alpha})")
        return p_alpha

    def stats(self) -> dict[str, float | int | list[str]]:
        """Base stats plus the priority mass, extremes and update count."""
        out = super().stats()
        out.update(
            {
                "max_priority": self._max_priority,
                "sum_priority_alpha": self._sum_tree.sum(),
                "min_priority_alpha": self._min_tree.min() if len(self) else float("nan"),
                "num_priority_updates": self._num_updates,
            }
        )
        return out
