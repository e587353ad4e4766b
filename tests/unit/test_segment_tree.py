"""Segment trees used by prioritized replay (Schaul et al. 2016, Appendix B.2.1)."""

from __future__ import annotations

import numpy as np
import pytest

from relayrl.optimizers.segment_tree import MinSegmentTree, SumSegmentTree


def test_capacity_rounded_up_to_power_of_two() -> None:
    assert SumSegmentTree(1).capacity == 1
    assert SumSegmentTree(5).capacity == 8
    assert MinSegmentTree(8).capacity == 8
    assert SumSegmentTree(1_000_000).capacity == 2**20
    with pytest.raises(ValueError):
        SumSegmentTree(0)


def test_sum_and_min_scalar_writes() -> None:
    s, m = SumSegmentTree(4), MinSegmentTree(4)
    for i, v in enumerate([1.0, 2.0, 3.0, 4.0]):
        s[i] = v
        m[i] = v
    assert s.sum() == 10.0
    assert m.min() == 1.0
    s[2] = 0.5
    m[0] = 7.0
    assert s.sum() == 7.5
    assert m.min() == 2.0
    assert s[2] == 0.5 and isinstance(s[2], float)
    assert m[0] == 7.0


def test_empty_trees_hold_neutral_elements() -> None:
    s, m = SumSegmentTree(6), MinSegmentTree(6)
    assert s.sum() == 0.0
    assert m.min() == float("inf")
    m[3] = 2.5
    assert m.min() == 2.5
    assert m.reduce(0, 3) == float("inf")


def test_vectorised_writes_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    cap = 1000
    s, m = SumSegmentTree(cap), MinSegmentTree(cap)
    ref = np.zeros(cap)
    for _ in range(50):
        idx = rng.integers(0, cap, size=rng.integers(1, 64))
        vals = rng.random(len(idx))
        s[idx] = vals
        m[idx] = vals
        # last write wins for duplicated indices, as in sequential assignment
        for i, v in zip(idx, vals, strict=True):
            ref[i] = v
        np.testing.assert_array_equal(s[np.arange(cap)], ref)
    written = ref > 0
    assert s.sum() == pytest.approx(ref.sum(), rel=1e-12)
    assert m.min() == ref[written].min()


def test_duplicate_indices_last_write_wins() -> None:
    s, m = SumSegmentTree(8), MinSegmentTree(8)
    s[np.array([3, 5, 3, 3, 5])] = np.array([1.0, 2.0, 3.0, 4.0, 0.25])
    m[np.array([3, 5, 3, 3, 5])] = np.array([1.0, 2.0, 3.0, 4.0, 0.25])
    assert s[3] == 4.0 and s[5] == 0.25
    assert s.sum() == 4.25
    assert m.min() == 0.25
    # Ancestors of every touched leaf are exact, not just the root.
    assert s.reduce(2, 4) == 4.0
    assert s.reduce(4, 8) == 0.25


def test_scalar_value_broadcasts_over_index_array() -> None:
    s = SumSegmentTree(16)
    s[np.array([1, 4, 9])] = 2.0
    assert s.sum() == 6.0
    np.testing.assert_array_equal(s[np.array([1, 4, 9, 0])], [2.0, 2.0, 2.0, 0.0])


def test_index_errors() -> None:
    s = SumSegmentTree(8)
    with pytest.raises(IndexError):
        s[8] = 1.0
    with pytest.raises(IndexError):
        s[np.array([0, -1])] = 1.0
    with pytest.raises(IndexError):
        _ = s[8]
    with pytest.raises(TypeError):
        s[np.array([0.5])] = 1.0


def test_range_reduce_against_numpy() -> None:
    rng = np.random.default_rng(1)
    cap = 37  # rounds to 64
    s, m = SumSegmentTree(cap), MinSegmentTree(cap)
    vals = rng.integers(1, 100, size=s.capacity).astype(np.float64)  # exact sums
    s[np.arange(s.capacity)] = vals
    m[np.arange(m.capacity)] = vals
    for start in range(0, s.capacity + 1, 3):
        for end in range(start, s.capacity + 1, 5):
            assert s.reduce(start, end) == vals[start:end].sum()
            expected_min = vals[start:end].min() if end > start else float("inf")
            assert m.reduce(start, end) == expected_min
    assert s.sum(3, -1) == vals[3:-1].sum()
    assert m.min(10) == vals[10:].min()
    with pytest.raises(ValueError):
        s.reduce(5, 4)
    with pytest.raises(ValueError):
        s.reduce(0, s.capacity + 1)


@pytest.mark.parametrize("cap", [1, 2, 7, 64, 3000, 70_000])
def test_find_prefixsum_idx_matches_cumsum(cap: int) -> None:
    rng = np.random.default_rng(cap)
    s = SumSegmentTree(cap)
    n = cap  # leaves past `cap` (up to the power of two) stay empty
    vals = rng.integers(0, 8, size=n).astype(np.float64)  # zeros included, sums exact
    vals[rng.integers(0, n)] = 3.0  # at least one positive leaf
    s[np.arange(n)] = vals
    cumsum = np.cumsum(vals)
    # Random queries plus every exact boundary value.
    queries = np.concatenate([rng.random(5000) * cumsum[-1], cumsum[cumsum < cumsum[-1]], [0.0]])
    expected = np.searchsorted(cumsum, queries, side="right")
    got = s.find_prefixsum_idx(queries)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64
    assert np.all(vals[got] > 0)
    # Scalar form returns an int.
    q = float(queries[0])
    assert s.find_prefixsum_idx(q) == expected[0]
    assert isinstance(s.find_prefixsum_idx(q), int)


def test_find_prefixsum_idx_random_floats() -> None:
    rng = np.random.default_rng(7)
    n = 50_000
    s = SumSegmentTree(n)
    vals = rng.random(n) ** 3
    s[np.arange(n)] = vals
    cumsum = np.cumsum(vals)
    queries = rng.random(20_000) * cumsum[-1]
    got = s.find_prefixsum_idx(queries)
    expected = np.searchsorted(cumsum, queries, side="right")
    # Tree and cumsum round differently; a mismatch is only possible for a
    # query within rounding distance of a boundary, i.e. never in practice.
    mismatch = got != expected
    assert mismatch.sum() == 0, np.flatnonzero(mismatch)[:10]
    np.testing.assert_array_equal(s.find_prefixsum_idx(queries.reshape(100, 200)), expected.reshape(100, 200))


def test_find_prefixsum_idx_edges_never_return_empty_leaf() -> None:
    s = SumSegmentTree(1000)  # capacity 1024, leaves 1000+ empty
    vals = np.zeros(1000)
    vals[[0, 17, 500, 998]] = [0.5, 1.5, 2.0, 1.0]
    s[np.arange(1000)] = vals
    total = s.sum()
    # At or beyond the total: the last positive leaf, not an empty one.
    assert s.find_prefixsum_idx(total) == 998
    assert s.find_prefixsum_idx(total * 1.5) == 998
    assert s.find_prefixsum_idx(np.nextafter(total, 0)) == 998
    # Negative: the first positive leaf.
    assert s.find_prefixsum_idx(-1.0) == 0
    np.testing.assert_array_equal(
        s.find_prefixsum_idx(np.array([0.0, 0.5, 1.99, 2.0, 3.99, 4.0])), [0, 17, 17, 500, 500, 998]
    )
    with pytest.raises(ValueError, match="NaN"):
        s.find_prefixsum_idx(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="total mass"):
        SumSegmentTree(8).find_prefixsum_idx(0.0)


def test_sampling_proportions_100k_draws() -> None:
    rng = np.random.default_rng(42)
    n = 5000
    s = SumSegmentTree(n)
    vals = np.zeros(n)
    hot = np.array([3, 100, 2047, 2048, 4999])
    vals[hot] = [1.0, 2.0, 3.0, 4.0, 10.0]
    vals[np.arange(0, n, 7)] += 0.001  # light background mass
    s[np.arange(n)] = vals
    draws = 100_000
    idx = s.find_prefixsum_idx(rng.random(draws) * s.sum())
    counts = np.bincount(idx, minlength=n)
    probs = vals / vals.sum()
    assert counts[vals == 0].sum() == 0
    for i in hot:
        expected = draws * probs[i]
        # 5 standard deviations of a binomial count
        assert abs(counts[i] - expected) < 5 * np.sqrt(expected * (1 - probs[i])), (i, counts[i], expected)
    background = ~np.isin(np.arange(n), hot)
    expected_bg = draws * probs[background].sum()
    assert abs(counts[background].sum() - expected_bg) < 5 * np.sqrt(expected_bg)
