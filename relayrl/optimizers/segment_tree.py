"""Array-backed segment trees for proportional prioritized replay.

Prioritized Experience Replay (Schaul et al. 2016, "Prioritized Experience
Replay", ICLR, Section 3.3 and Appendix B.2.1) samples transition ``i`` with
probability ``p_i / sum_k p_k``. A sum-tree makes both "set one priority" and
"find the transition owning a given prefix sum" O(log N), and a min-tree gives
``min_k p_k`` in O(1), which is needed to normalise importance weights by their
maximum.

Why numpy and vectorised: a learner step touches a whole batch (e.g. 32 rows
added, 32 sampled, 32 priorities updated). Looping in Python over the batch
*and* over the tree depth would cost ~20 * 32 interpreter round trips per
operation. Here every operation loops over the tree depth only (about 20
levels for a million leaves) and handles the whole batch with one numpy call
per level.

Layout: a flat float64 array of ``2 * capacity`` entries; node 1 is the root,
node ``k`` has children ``2k`` and ``2k + 1``, and leaf ``i`` lives at
``capacity + i``. Entry 0 is unused. ``capacity`` is rounded up to a power of
two so that every leaf sits at the same depth, which is what lets the
prefix-sum descent run in lock-step for a batch of queries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["SegmentTree", "SumSegmentTree", "MinSegmentTree"]

# Deepest level whose nodes the prefix-sum search scans with one cumsum
# (2**10 nodes) instead of walking down to it; see `_descend_fast`.
_MAX_CUMSUM_LEVEL = 10


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class SegmentTree:
    """Segment tree over a commutative, associative numpy ufunc.

    Subclasses pick the operation and its neutral element (the value of an
    empty leaf): ``0`` for sums, ``+inf`` for minima.
    """

    def __init__(self, capacity: int, operation: np.ufunc, neutral_element: float) -> None:
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.capacity: int = _next_power_of_two(int(capacity))
        self.depth: int = self.capacity.bit_length() - 1  # edges from root to a leaf
        self._op: np.ufunc = operation
        self._reduce: Callable[[np.ndarray], float] = operation.reduce
        self.neutral_element: float = float(neutral_element)
        self._value = np.full(2 * self.capacity, self.neutral_element, dtype=np.float64)
        # Right shifts 0..depth, as a column: broadcasting against a row of leaf
        # nodes gives the ancestors of every leaf on every level in one call.
        self._shifts = np.arange(self.depth + 1, dtype=np.int64)[:, None]

    # ------------------------------------------------------------------ helpers
    def _check_indices(self, idx: np.ndarray) -> None:
        if idx.size and (idx.min() < 0 or idx.max() >= self.capacity):
            bad = idx[(idx < 0) | (idx >= self.capacity)][0]
            raise IndexError(f"segment tree index {bad} out of range [0, {self.capacity})")

    @staticmethod
    def _as_index_array(idx: int | np.ndarray) -> np.ndarray:
        arr = np.asarray(idx)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"segment tree indices must be integers, got dtype {arr.dtype}")
        return arr.astype(np.int64, copy=False).reshape(-1)

    # ------------------------------------------------------------------ writes
    def __setitem__(self, idx: int | np.ndarray, val: float | np.ndarray) -> None:
        """Set one or many leaves, then recompute their ancestors level by level.

        ``idx`` may be an int or an integer array; ``val`` a scalar or an array
        broadcastable to ``idx``. With repeated indices in one call the last
        occurrence wins (numpy's own fancy assignment leaves that unspecified,
        so duplicates are resolved explicitly).
        """
        idx_arr = self._as_index_array(idx)
        vals = np.asarray(val, dtype=np.float64)
        if vals.shape != idx_arr.shape:
            vals = np.broadcast_to(vals, np.shape(idx)).reshape(-1)
        if idx_arr.size == 0:
            return
        if idx_arr.size > 1:
            # Stable sort: equal indices stay in call order, so the last entry
            # of each run of equal indices is the last write.
            order = idx_arr.argsort(kind="stable")
            idx_arr = idx_arr[order]
            repeated = idx_arr[1:] == idx_arr[:-1]
            if repeated.any():
                last_of_run = np.append(~repeated, True)
                order, idx_arr = order[last_of_run], idx_arr[last_of_run]
            vals = vals[order]
        if idx_arr[0] < 0 or idx_arr[-1] >= self.capacity:
            bad = idx_arr[0] if idx_arr[0] < 0 else idx_arr[-1]
            raise IndexError(f"segment tree index {bad} out of range [0, {self.capacity})")
        # Row k of `path` holds the level-k ancestors of every written leaf
        # (row 0: the leaves themselves), computed for all levels in one call.
        path = (idx_arr + self.capacity) >> self._shifts
        value = self._value
        value[path[0]] = vals
        # Left child of an ancestor = the path node one level below with its
        # low bit cleared; right child = that with the low bit set.
        lefts = path[:-1] & -2
        rights = lefts | 1
        op = self._op
        for level in range(1, self.depth + 1):
            # Siblings that share a parent produce duplicate parents; they
            # compute and write the same value, so no de-duplication needed.
            value[path[level]] = op(value[lefts[level - 1]], value[rights[level - 1]])

    # ------------------------------------------------------------------- reads
    def __getitem__(self, idx: int | np.ndarray) -> float | np.ndarray:
        """Leaf value(s): a float for an int index, an array for an index array."""
        if np.ndim(idx) == 0:
            i = int(idx)
            if not 0 <= i < self.capacity:
                raise IndexError(f"segment tree index {i} out of range [0, {self.capacity})")
            return float(self._value[self.capacity + i])
        idx_arr = self._as_index_array(idx)
        self._check_indices(idx_arr)
        return self._value[idx_arr + self.capacity].reshape(np.shape(idx))

    def reduce(self, start: int = 0, end: int | None = None) -> float:
        """Reduce the operation over leaves ``[start, end)``.

        ``end=None`` means ``capacity``; a negative ``end`` counts from
        ``capacity`` like a Python slice. An empty range gives the neutral
        element. Bottom-up iterative query: O(log capacity).
        """
        if end is None:
            end = self.capacity
        elif end < 0:
            end += self.capacity
        if not 0 <= start <= end <= self.capacity:
            raise ValueError(f"invalid range [{start}, {end}) for a segment tree of capacity {self.capacity}")
        if start == 0 and end == self.capacity:
            return float(self._value[1])
        value = self._value
        result = self.neutral_element
        lo, hi = start + self.capacity, end + self.capacity
        while lo < hi:
            if lo & 1:
                result = self._op(result, value[lo])
                lo += 1
            if hi & 1:
                hi -= 1
                result = self._op(result, value[hi])
            lo >>= 1
            hi >>= 1
        return float(result)


class SumSegmentTree(SegmentTree):
    """Sum-tree: total priority mass and proportional (prefix-sum) lookups."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, np.add, 0.0)

    def sum(self, start: int = 0, end: int | None = None) -> float:
        """Sum of leaves ``[start, end)``; the whole tree by default (O(1))."""
        return self.reduce(start, end)

    def find_prefixsum_idx(self, prefixsum: float | np.ndarray) -> int | np.ndarray:
        """Leaf index ``i`` with ``sum(leaves[:i]) <= prefixsum < sum(leaves[:i+1])``.

        This is the sampling primitive of proportional PER (Schaul et al. 2016,
        Appendix B.2.1): a prefix sum drawn uniformly from ``[0, total)`` lands
        on leaf ``i`` with probability ``leaf_i / total``.

        Accepts a scalar (returns an int) or an array (returns an int64 array
        of the same shape). All queries descend in lock-step, one numpy step
        per tree level.

        Robustness: the result is always a leaf with positive value. Queries
        that an unguarded walk would drop on an empty leaf (floating-point
        rounding, or a query at or past the total) are walked again without
        ever stepping into a right child of zero mass, so ``prefixsum >=
        sum()`` returns the last positive leaf and a negative query the first.
        Raises ValueError for NaN queries and when the total is not positive.
        """
        scalar = np.ndim(prefixsum) == 0
        queries = np.array(prefixsum, dtype=np.float64).reshape(-1)
        if np.isnan(queries).any():
            raise ValueError("prefixsum contains NaN")
        if not self._value[1] > 0.0:
            raise ValueError(f"cannot search prefix sums: total mass is {self._value[1]}, not > 0")
        # Clamping at 0 keeps `remaining >= 0` during the descent, which is
        # what guarantees that going left always enters a positive subtree.
        np.maximum(queries, 0.0, out=queries)
        leaves = self._descend_fast(queries.copy())
        # Redo the rare queries that fell on an empty leaf (rounding, or
        # prefixsum >= total) with the guarded, root-to-leaf descent.
        empty = self._value[leaves + self.capacity] <= 0.0
        if empty.any():
            remaining = queries[empty]
            nodes = np.ones(remaining.shape, dtype=np.int64)
            leaves[empty] = self._descend(nodes, remaining, self.depth, guard_empty_right=True)
        if scalar:
            return int(leaves[0])
        return leaves.reshape(np.shape(prefixsum))

    def _descend_fast(self, remaining: np.ndarray) -> np.ndarray:
        """Unguarded descent that skips the top levels with one cumsum.

        The nodes of one level are contiguous (``value[2**L : 2**(L+1)]``), so
        a cumulative sum over level ``L`` plus ``searchsorted`` replaces the
        first ``L`` steps of the descent: with ``L = 10`` that is ~5 us instead
        of ~35 us. ``L`` is at most half the depth so the level-by-level walk
        below it is always exercised.
        """
        top = min(self.depth // 2, _MAX_CUMSUM_LEVEL)
        first = 1 << top
        cumulative = np.zeros(first + 1, dtype=np.float64)
        np.cumsum(self._value[first : 2 * first], out=cumulative[1:])
        # remaining >= 0 = cumulative[0], so side="right" gives >= 1.
        offset = cumulative.searchsorted(remaining, side="right") - 1
        np.minimum(offset, first - 1, out=offset)
        remaining -= cumulative[offset]
        return self._descend(first + offset, remaining, self.depth - top, guard_empty_right=False)

    def _descend(self, nodes: np.ndarray, remaining: np.ndarray, levels: int, guard_empty_right: bool) -> np.ndarray:
        """Walk all queries ``levels`` steps down, one numpy step per level.

        ``remaining`` is consumed in place. With ``guard_empty_right`` the walk
        never steps into a right child of zero mass.
        """
        value = self._value
        right_of = self._value[1:]  # right_of[k] == value[k + 1], no index arithmetic
        for _ in range(levels):
            left = nodes + nodes
            left_mass = value[left]
            go_right = left_mass <= remaining
            if guard_empty_right:
                go_right &= right_of[left] > 0.0
            np.subtract(remaining, left_mass, out=remaining, where=go_right)
            nodes = left + go_right
        return nodes - self.capacity


class MinSegmentTree(SegmentTree):
    """Min-tree: smallest priority, used for the max importance weight."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, np.minimum, float("inf"))

    def min(self, start: int = 0, end: int | None = None) -> float:
        """Minimum of leaves ``[start, end)``; the whole tree by default (O(1))."""
        return self.reduce(start, end)
