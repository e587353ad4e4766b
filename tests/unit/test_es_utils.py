"""ES helpers (Salimans et al. 2017): fitness shaping, shared noise, flat optimizers."""

from __future__ import annotations

import numpy as np
import pytest

from relayrl.utils.es_utils import (
    SGD,
    Adam,
    SharedNoiseTable,
    batched_weighted_sum,
    compute_centered_ranks,
    compute_ranks,
    create_noise,
)


# --------------------------------------------------------------------------- ranks
def test_compute_ranks_hand_example_and_ties_by_position() -> None:
    np.testing.assert_array_equal(compute_ranks(np.array([3.0, -1.0, 10.0, 2.0])), [2, 0, 3, 1])
    np.testing.assert_array_equal(compute_ranks(np.array([1.0, 0.0, 1.0, 0.0])), [2, 0, 3, 1])
    # Long enough that an unstable sort would scramble equal values.
    x = np.tile([2.0, 0.0, 1.0], 100)
    ranks = compute_ranks(x)
    for value, offset in ((0.0, 0), (1.0, 100), (2.0, 200)):
        np.testing.assert_array_equal(ranks[x == value], np.arange(offset, offset + 100))


def test_compute_ranks_rejects_2d() -> None:
    with pytest.raises(ValueError):
        compute_ranks(np.zeros((2, 2)))


def test_centered_ranks_hand_example() -> None:
    out = compute_centered_ranks(np.array([3.0, -1.0, 10.0, 2.0]))
    np.testing.assert_allclose(out, [1 / 6, -0.5, 0.5, -1 / 6], rtol=0, atol=1e-12)


def test_centered_ranks_2d_ranks_over_all_elements() -> None:
    x = np.array([[1.0, 6.0], [4.0, 2.0], [3.0, 5.0]])
    out = compute_centered_ranks(x)
    assert out.shape == (3, 2)
    expected = np.array([[0, 5], [3, 1], [2, 4]]) / 5.0 - 0.5
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    assert out.sum() == pytest.approx(0.0, abs=1e-12)


def test_centered_ranks_single_element_is_zero() -> None:
    np.testing.assert_array_equal(compute_centered_ranks(np.array([7.0])), [0.0])


# --------------------------------------------------------------------------- weighted sum
def test_batched_weighted_sum_hand_example_across_batches() -> None:
    weights = [1.0, 2.0, -3.0]
    vecs = (np.array([1.0, 0.0]), np.array([0.5, 1.0]), np.array([1.0, -1.0]))
    total, n = batched_weighted_sum(weights, iter(vecs), batch_size=2)
    assert n == 3
    np.testing.assert_allclose(total, [1.0 + 1.0 - 3.0, 0.0 + 2.0 + 3.0], rtol=0, atol=1e-6)


def test_batched_weighted_sum_errors() -> None:
    with pytest.raises(ValueError):
        batched_weighted_sum([1.0, 2.0], [np.zeros(3)])
    with pytest.raises(ValueError):
        batched_weighted_sum([], [])


# --------------------------------------------------------------------------- noise table
def test_create_noise_deterministic_per_seed() -> None:
    a, b, c = (
        create_noise(1000, seed=0),
        create_noise(1000, seed=0),
        create_noise(1000, seed=1),
    )
    assert a.dtype == np.float32 and a.shape == (1000,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    t_a, t_b, t_c = SharedNoiseTable(a), SharedNoiseTable(b), SharedNoiseTable(c)
    np.testing.assert_array_equal(t_a.get(123, 50), t_b.get(123, 50))
    assert not np.array_equal(t_a.get(123, 50), t_c.get(123, 50))


def test_noise_table_is_read_only_view() -> None:
    noise = create_noise(100, seed=3)
    table = SharedNoiseTable(noise)
    assert table.size == 100
    piece = table.get(10, 5)
    assert np.shares_memory(piece, noise) and np.shares_memory(table.noise, noise)
    np.testing.assert_array_equal(piece, noise[10:15])
    with pytest.raises(ValueError):
        piece[0] = 1.0
    with pytest.raises(ValueError):
        table.noise[0] = 1.0
    assert noise.flags.writeable  # the caller's array itself is left alone


def test_noise_table_accepts_read_only_buffer() -> None:
    noise = create_noise(20, seed=4)
    noise.flags.writeable = False  # like an array mapped from a shared object store
    table = SharedNoiseTable(noise)
    assert np.shares_memory(table.get(0, 20), noise)


def test_noise_table_get_out_of_range() -> None:
    table = SharedNoiseTable(create_noise(10, seed=0))
    assert table.get(7, 3).shape == (3,)
    with pytest.raises(IndexError):
        table.get(8, 3)
    with pytest.raises(IndexError):
        table.get(-1, 3)


def test_sample_index_bounds() -> None:
    table = SharedNoiseTable(create_noise(10, seed=0))
    rng = np.random.default_rng(0)
    idx = [table.sample_index(rng, 7) for _ in range(500)]
    assert all(isinstance(i, int) for i in idx)
    # Uniform over [0, len - dim]: both ends are reached.
    assert min(idx) == 0 and max(idx) == 3
    assert {table.sample_index(rng, 10) for _ in range(20)} == {0}
    with pytest.raises(ValueError):
        table.sample_index(rng, 11)


# --------------------------------------------------------------------------- optimizers
def test_sgd_momentum_two_steps_by_hand() -> None:
    opt = SGD(num_params=2, stepsize=0.1, momentum=0.9)
    theta = np.array([1.0, 2.0])
    g = np.array([1.0, -2.0])
    # v = 0.1 * g = [0.1, -0.2]; step = -0.1 * v = [-0.01, 0.02]
    new_theta, ratio = opt.update(theta, g)
    np.testing.assert_allclose(new_theta, [0.99, 2.02], rtol=1e-7)
    assert ratio == pytest.approx(0.01, rel=1e-6)  # ||[-0.01, 0.02]|| / ||[1, 2]||
    np.testing.assert_array_equal(theta, [1.0, 2.0])  # input not modified
    # v = 0.9 * [0.1, -0.2] + 0.1 * g = [0.19, -0.38]; step = [-0.019, 0.038]
    new_theta, _ = opt.update(new_theta, g)
    np.testing.assert_allclose(new_theta, [0.971, 2.058], rtol=1e-7)


def test_adam_two_steps_by_hand() -> None:
    opt = Adam(num_params=2, stepsize=0.1, beta1=0.9, beta2=0.999, epsilon=1e-8)
    theta = np.array([1.0, 2.0])
    # t=1: m = [0.1, -0.2], v = [0.001, 0.004], a = 0.1 * sqrt(0.001) / 0.1
    # step = -a * m / sqrt(v) = -0.1 * sign(g) (up to epsilon)
    theta, ratio = opt.update(theta, np.array([1.0, -2.0]))
    np.testing.assert_allclose(theta, [0.9, 2.1], rtol=1e-6)
    assert ratio == pytest.approx(0.1 * np.sqrt(2.0) / np.sqrt(5.0), rel=1e-5)
    # t=2 with g = [2, 0]: m = [0.29, -0.18], v = [0.004999, 0.003996],
    # a = 0.1 * sqrt(1 - 0.999^2) / (1 - 0.9^2)
    theta, _ = opt.update(theta, np.array([2.0, 0.0]))
    a = 0.1 * np.sqrt(0.001999) / 0.19
    expected = np.array(
        [
            0.9 - a * 0.29 / (np.sqrt(0.004999) + 1e-8),
            2.1 + a * 0.18 / (np.sqrt(0.003996) + 1e-8),
        ]
    )
    np.testing.assert_allclose(theta, expected, rtol=1e-6)


def test_optimizers_descend_and_keep_dtype() -> None:
    for opt in (SGD(3, 0.05), Adam(3, 0.05)):
        theta = np.ones(3, dtype=np.float32)
        new_theta, _ = opt.update(theta, np.array([1.0, -1.0, 0.0], dtype=np.float32))
        assert new_theta.dtype == np.float32
        assert new_theta[0] < 1.0 and new_theta[1] > 1.0 and new_theta[2] == 1.0


def test_optimizer_shape_check() -> None:
    with pytest.raises(ValueError):
        SGD(3, 0.1).update(np.zeros(3), np.zeros(4))
