"""Uniform and prioritized replay (Schaul et al. 2016, "Prioritized Experience Replay")."""

from __future__ import annotations

import numpy as np
import pytest

from relayrl.optimizers.replay_buffer import PrioritizedReplayBuffer, ReplayBuffer


def make_batch(start: int, n: int, obs_dim: int = 4) -> dict[str, np.ndarray]:
    """Rows whose every column encodes the row number, so slots are traceable."""
    ids = np.arange(start, start + n)
    return {
        "obs": np.repeat(ids[:, None], obs_dim, axis=1).astype(np.float32),
        "actions": ids.astype(np.int64),
        "rewards": ids.astype(np.float32) * 0.5,
        "new_obs": np.repeat(ids[:, None] + 1, obs_dim, axis=1).astype(np.float32),
        "dones": ids % 3 == 0,
        "weights": np.ones(n, dtype=np.float32),
    }


# ---------------------------------------------------------------- ReplayBuffer
def test_ring_overwrite() -> None:
    buf = ReplayBuffer(5)
    assert len(buf) == 0
    np.testing.assert_array_equal(buf.add_batch(make_batch(0, 3)), [0, 1, 2])
    assert len(buf) == 3
    np.testing.assert_array_equal(buf.add_batch(make_batch(3, 4)), [3, 4, 0, 1])
    assert len(buf) == 5
    stored = buf._storage["actions"]
    np.testing.assert_array_equal(stored, [5, 6, 2, 3, 4])
    # A batch larger than the buffer keeps its newest rows, in ring order.
    buf.add_batch(make_batch(100, 12))
    np.testing.assert_array_equal(np.sort(buf._storage["actions"]), np.arange(107, 112))
    assert buf.stats()["num_added"] == 19
    # The next write continues right after the newest row.
    newest = int(np.argmax(buf._storage["actions"]))
    idx = buf.add_batch(make_batch(200, 1))
    assert idx[0] == (newest + 1) % 5


def test_uniform_sample_shapes_and_consistency() -> None:
    buf = ReplayBuffer(100, seed=0)
    buf.add_batch(make_batch(0, 30))
    out = buf.sample(64)
    assert set(out) == {"obs", "actions", "rewards", "new_obs", "dones", "weights", "batch_indexes"}
    assert out["obs"].shape == (64, 4) and out["obs"].dtype == np.float32
    assert out["actions"].shape == (64,) and out["dones"].dtype == np.bool_
    assert out["batch_indexes"].dtype == np.int64
    assert out["batch_indexes"].min() >= 0 and out["batch_indexes"].max() < 30
    # Every column of a sampled row belongs to the same transition.
    np.testing.assert_array_equal(out["obs"][:, 0], out["actions"])
    np.testing.assert_array_equal(out["new_obs"][:, 0], out["actions"] + 1)
    np.testing.assert_array_equal(out["actions"], out["batch_indexes"])


def test_uniform_sample_covers_buffer_uniformly() -> None:
    buf = ReplayBuffer(10)
    buf.add_batch(make_batch(0, 10))
    rng = np.random.default_rng(3)
    counts = np.bincount(buf.sample(50_000, rng=rng)["batch_indexes"], minlength=10)
    assert np.all(np.abs(counts - 5000) < 5 * np.sqrt(5000 * 0.9))


def test_bad_batches_rejected() -> None:
    buf = ReplayBuffer(10)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4)
    with pytest.raises(ValueError, match="same leading length"):
        buf.add_batch({"obs": np.zeros((3, 2)), "actions": np.zeros(4)})
    buf.add_batch(make_batch(0, 3))
    batch = make_batch(3, 2)
    del batch["weights"]
    with pytest.raises(ValueError, match="missing"):
        buf.add_batch(batch)
    with pytest.raises(ValueError, match="row shape"):
        buf.add_batch(make_batch(3, 2, obs_dim=5))
    bad_dtype = make_batch(3, 2)
    bad_dtype["dones"] = np.array([0.5, 1.0])
    with pytest.raises(ValueError, match="cannot store dtype"):
        buf.add_batch(bad_dtype)
    with pytest.raises(ValueError, match="reserved"):
        ReplayBuffer(4).add_batch({"batch_indexes": np.zeros(2)})
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0)
    assert len(buf) == 3  # failed adds wrote nothing


def test_compressed_columns_round_trip() -> None:
    rng = np.random.default_rng(0)
    frames = np.zeros((12, 84, 84, 4), dtype=np.uint8)
    frames[:, 20:40, 10:30, :] = rng.integers(0, 255, size=(12, 1, 1, 4), dtype=np.uint8)
    batch = {
        "obs": frames,
        "new_obs": np.roll(frames, 1, axis=0),
        "actions": np.arange(12),
    }
    buf = ReplayBuffer(10, compress_columns=("obs", "new_obs"), seed=1)
    buf.add_batch(batch)  # ring: rows 2..11 survive
    assert buf._storage["obs"].dtype == object
    out = buf.sample(32)
    ids = out["actions"]
    np.testing.assert_array_equal(out["obs"], frames[ids])
    np.testing.assert_array_equal(out["new_obs"], np.roll(frames, 1, axis=0)[ids])
    assert out["obs"].dtype == np.uint8 and out["obs"].shape == (32, 84, 84, 4)
    stats = buf.stats()
    assert stats["raw_size_bytes"] == 2 * 10 * 84 * 84 * 4 + 10 * 8
    assert stats["est_size_bytes"] < stats["raw_size_bytes"] / 3
    with pytest.raises(ValueError, match="compress_columns"):
        ReplayBuffer(4, compress_columns=("pixels",)).add_batch({"obs": np.zeros((2, 3))})


# ----------------------------------------------------- PrioritizedReplayBuffer
def reference_weights(buf: PrioritizedReplayBuffer, idx: np.ndarray, beta: float) -> np.ndarray:
    """(N * P(i)) ** -beta / max_j (N * P(j)) ** -beta, from the stored priorities."""
    n = len(buf)
    stored = np.array([buf._sum_tree[int(i)] for i in range(n)])  # p_i ** alpha
    probs = stored / stored.sum()
    w = (n * probs[idx]) ** -beta
    w_max = (n * probs.min()) ** -beta
    return w / w_max


def test_new_rows_get_max_priority() -> None:
    buf = PrioritizedReplayBuffer(8, alpha=0.5, eps=0.0)
    idx = buf.add_batch(make_batch(0, 3))
    np.testing.assert_array_equal(buf._sum_tree[idx], [1.0, 1.0, 1.0])  # initial max is 1
    buf.update_priorities(np.array([0, 1]), np.array([9.0, 0.25]))
    assert buf.max_priority == 9.0
    np.testing.assert_allclose(buf._sum_tree[np.arange(3)], [3.0, 0.5, 1.0])
    idx = buf.add_batch(make_batch(3, 2))
    np.testing.assert_allclose(buf._sum_tree[idx], [3.0, 3.0])  # 9 ** 0.5
    # The running max never decreases.
    buf.update_priorities(np.array([0]), np.array([1.0]))
    assert buf.max_priority == 9.0
    assert buf._min_tree.min() == 0.5


def test_update_priorities_stores_td_plus_eps_pow_alpha() -> None:
    alpha, eps = 0.6, 1e-2
    buf = PrioritizedReplayBuffer(16, alpha=alpha, eps=eps)
    buf.add_batch(make_batch(0, 10))
    td = np.array([0.0, 0.5, 2.0, 3.0])
    buf.update_priorities(np.array([2, 4, 6, 8]), td)
    np.testing.assert_allclose(buf._sum_tree[np.array([2, 4, 6, 8])], (td + eps) ** alpha, rtol=1e-15)
    assert buf.max_priority == pytest.approx(3.0 + eps)
    assert buf._sum_tree.sum() == pytest.approx(6 * 1.0 + ((td + eps) ** alpha).sum())
    assert buf._min_tree.min() == pytest.approx(eps**alpha)
    # Repeated index (sampled twice): last value wins.
    buf.update_priorities(np.array([1, 1]), np.array([5.0, 0.1]))
    assert buf._sum_tree[1] == pytest.approx((0.1 + eps) ** alpha)


@pytest.mark.parametrize(
    "priorities, match",
    [
        (np.array([1.0, np.nan]), "finite"),
        (np.array([np.inf, 1.0]), "finite"),
        (np.array([1.0, -0.5]), ">= 0"),
        (np.array([1.0]), "expected 2 priorities"),
    ],
)
def test_bad_priorities_raise(priorities: np.ndarray, match: str) -> None:
    buf = PrioritizedReplayBuffer(8, alpha=0.6)
    buf.add_batch(make_batch(0, 4))
    before = buf._sum_tree[np.arange(4)].copy()
    with pytest.raises(ValueError, match=match):
        buf.update_priorities(np.array([0, 1]), priorities)
    with pytest.raises(ValueError, match=match):
        buf.add_batch(make_batch(4, 2), priorities=priorities)
    np.testing.assert_array_equal(buf._sum_tree[np.arange(4)], before)
    assert len(buf) == 4


def test_zero_priority_without_eps_and_bad_indices_raise() -> None:
    buf = PrioritizedReplayBuffer(8, alpha=0.6, eps=0.0)
    buf.add_batch(make_batch(0, 4))
    with pytest.raises(ValueError, match="> 0"):
        buf.update_priorities(np.array([0]), np.array([0.0]))
    with pytest.raises(ValueError, match="filled slots"):
        buf.update_priorities(np.array([4]), np.array([1.0]))
    with pytest.raises(ValueError, match="integer"):
        buf.update_priorities(np.array([0.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="alpha"):
        PrioritizedReplayBuffer(8, alpha=-1.0)
    with pytest.raises(ValueError, match="beta"):
        buf.sample(4, beta=-0.1)


def test_per_importance_weights_match_reference() -> None:
    rng = np.random.default_rng(5)
    buf = PrioritizedReplayBuffer(64, alpha=0.7, eps=1e-6, seed=11)
    buf.add_batch(make_batch(0, 40))
    buf.update_priorities(np.arange(40), rng.random(40) * 5)
    for beta in (0.0, 0.4, 1.0):
        out = buf.sample(32, beta=beta)
        idx = out["batch_indexes"]
        assert out["weights"].dtype == np.float32 and out["weights"].shape == (32,)
        np.testing.assert_allclose(out["weights"], reference_weights(buf, idx, beta), rtol=1e-6)
        assert out["weights"].max() <= 1.0 + 1e-7
        np.testing.assert_array_equal(out["actions"], idx)  # rows match their slots
    # The row with the smallest priority has weight exactly 1 (beta > 0).
    lowest = int(np.argmin(buf._sum_tree[np.arange(40)]))
    buf.update_priorities(np.array([lowest]), np.array([0.0]))
    ref = reference_weights(buf, np.array([lowest]), 0.5)
    assert ref[0] == pytest.approx(1.0)


def test_per_sampling_is_stratified_and_proportional() -> None:
    buf = PrioritizedReplayBuffer(8, alpha=1.0, eps=0.0, seed=0)
    buf.add_batch(make_batch(0, 4))
    buf.update_priorities(np.arange(4), np.array([1.0, 1.0, 1.0, 5.0]))  # mass 1/8 x3, 5/8
    # Stratified: 8 equal segments of mass 1 -> one draw each for rows 0..2,
    # five for row 3, whatever the random offsets.
    for _ in range(20):
        idx = buf.sample(8, beta=0.4)["batch_indexes"]
        np.testing.assert_array_equal(idx, [0, 1, 2, 3, 3, 3, 3, 3])
    counts = np.zeros(4)
    rng = np.random.default_rng(1)
    for _ in range(2000):
        counts += np.bincount(buf.sample(3, beta=0.4, rng=rng)["batch_indexes"], minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), [0.125, 0.125, 0.125, 0.625], atol=0.01)


def test_per_add_with_worker_priorities_and_overwrite() -> None:
    buf = PrioritizedReplayBuffer(4, alpha=0.5, eps=0.0)
    buf.add_batch(make_batch(0, 3), priorities=np.array([4.0, 16.0, 1.0]))
    np.testing.assert_allclose(buf._sum_tree[np.arange(3)], [2.0, 4.0, 1.0])
    assert buf.max_priority == 16.0
    # Overflowing batch: only the newest 4 rows (and their priorities) stay.
    buf.add_batch(make_batch(10, 6), priorities=np.arange(1.0, 7.0) ** 2)
    assert len(buf) == 4
    slot_of = {int(a): i for i, a in enumerate(buf._storage["actions"])}
    for row, p in zip(range(12, 16), np.arange(3.0, 7.0), strict=True):
        assert buf._sum_tree[slot_of[row]] == pytest.approx(p)
    assert buf._sum_tree.sum() == pytest.approx(3 + 4 + 5 + 6)
    assert buf._min_tree.min() == pytest.approx(3.0)
    # Only filled slots hold mass, so samples never reach unwritten slots.
    small = PrioritizedReplayBuffer(1000, alpha=0.6)
    small.add_batch(make_batch(0, 5))
    assert small.sample(256, beta=0.4)["batch_indexes"].max() < 5


def test_per_compressed_and_stats() -> None:
    buf = PrioritizedReplayBuffer(16, alpha=0.6, compress_columns=("obs", "new_obs"), seed=2)
    batch = make_batch(0, 10)
    buf.add_batch(batch)
    out = buf.sample(8, beta=0.5)
    np.testing.assert_array_equal(out["obs"], batch["obs"][out["batch_indexes"]])
    # A stored "weights" column is superseded by the importance weights.
    np.testing.assert_allclose(out["weights"], reference_weights(buf, out["batch_indexes"], 0.5), rtol=1e-6)
    stats = buf.stats()
    assert stats["num_entries"] == 10 and stats["num_sampled"] == 8
    assert stats["sum_priority_alpha"] == pytest.approx(10.0)
    assert stats["compressed_columns"] == ["new_obs", "obs"]
