"""N-step transition rewriting, checked row by row against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from relayrl.evaluation.n_step import adjust_nstep

GAMMA = 0.9


def trajectory(dones: list[bool], reward_dtype: type = np.float64) -> dict[str, np.ndarray]:
    """6 steps; obs[t] = 10 t, new_obs[t] = 10 (t + 1), rewards 1..6."""
    t = np.arange(6)
    return {
        "obs": (10 * t).astype(np.float32)[:, None].repeat(2, axis=1),
        "actions": t % 2,
        "rewards": np.array([1, 2, 3, 4, 5, 6], dtype=reward_dtype),
        "new_obs": (10 * (t + 1)).astype(np.float32)[:, None].repeat(2, axis=1),
        "dones": np.array(dones, dtype=bool),
    }


def test_episode_ends_at_last_step() -> None:
    cols = trajectory([False, False, False, False, False, True])
    adjust_nstep(3, GAMMA, cols)
    # t=0: 1 + .9*2 + .81*3 ; t=1: 2 + .9*3 + .81*4 ; t=2: 3 + .9*4 + .81*5
    # t=3: 4 + .9*5 + .81*6 ; t=4: 5 + .9*6 (window cut by the end) ; t=5: 6
    np.testing.assert_allclose(cols["rewards"], [5.23, 7.94, 10.65, 13.36, 10.4, 6.0], rtol=1e-12)
    np.testing.assert_array_equal(cols["new_obs"][:, 0], [30, 40, 50, 60, 60, 60])
    np.testing.assert_array_equal(cols["dones"], [False, False, False, True, True, True])
    np.testing.assert_allclose(cols["n_step_discount"], [0.729, 0.729, 0.729, 0.729, 0.81, 0.9], rtol=1e-12)
    # Untouched columns.
    np.testing.assert_array_equal(cols["obs"][:, 0], [0, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(cols["actions"], [0, 1, 0, 1, 0, 1])


def test_terminal_inside_the_window_stops_the_sum() -> None:
    # Episode terminates at t=2; t=3..5 is the next episode, truncated at t=5.
    cols = trajectory([False, False, True, False, False, False])
    adjust_nstep(3, GAMMA, cols)
    # t=0: 1 + .9*2 + .81*3 (the terminal step's reward is included)
    # t=1: 2 + .9*3 ; t=2: 3 ; t=3: 4 + .9*5 + .81*6 ; t=4: 5 + .9*6 ; t=5: 6
    np.testing.assert_allclose(cols["rewards"], [5.23, 4.7, 3.0, 13.36, 10.4, 6.0], rtol=1e-12)
    np.testing.assert_array_equal(cols["new_obs"][:, 0], [30, 30, 30, 60, 60, 60])
    np.testing.assert_array_equal(cols["dones"], [True, True, True, False, False, False])
    np.testing.assert_allclose(cols["n_step_discount"], [0.729, 0.81, 0.9, 0.729, 0.81, 0.9], rtol=1e-12)


def test_td_target_uses_actual_window_length() -> None:
    cols = trajectory([False] * 6)  # truncated, no terminal: always bootstrap
    adjust_nstep(3, GAMMA, cols)
    q_next = lambda new_obs: new_obs[:, 0] / 10.0  # noqa: E731  stand-in for max_a Q
    target = cols["rewards"] + cols["n_step_discount"] * (1 - cols["dones"]) * q_next(cols["new_obs"])
    # Row 4 by hand: 5 + .9*6 + .81 * Q(s_6) with Q(s_6) = 6
    assert target[4] == pytest.approx(5 + 0.9 * 6 + 0.81 * 6, rel=1e-12)
    # Row 1: 2 + .9*3 + .81*4 + .729 * Q(s_4) with Q(s_4) = 4
    assert target[1] == pytest.approx(2 + 0.9 * 3 + 0.81 * 4 + 0.729 * 4, rel=1e-12)


def test_arrays_are_rewritten_in_place() -> None:
    cols = trajectory([False, False, False, False, False, True], reward_dtype=np.float32)
    rewards, new_obs, dones = cols["rewards"], cols["new_obs"], cols["dones"]
    adjust_nstep(3, GAMMA, cols)
    assert cols["rewards"] is rewards and cols["new_obs"] is new_obs and cols["dones"] is dones
    assert rewards.dtype == np.float32 and cols["n_step_discount"].dtype == np.float32
    np.testing.assert_allclose(rewards, [5.23, 7.94, 10.65, 13.36, 10.4, 6.0], rtol=1e-6)


def test_integer_rewards_are_replaced_by_floats() -> None:
    cols = trajectory([False] * 6, reward_dtype=np.int64)
    adjust_nstep(2, GAMMA, cols)
    assert cols["rewards"].dtype == np.float32
    np.testing.assert_allclose(cols["rewards"], [2.8, 4.7, 6.6, 8.5, 10.4, 6.0], rtol=1e-6)


def test_n_step_one_is_identity_and_long_windows_clip() -> None:
    cols = trajectory([False, False, False, False, False, True])
    original = {k: v.copy() for k, v in cols.items()}
    adjust_nstep(1, GAMMA, cols)
    for key in original:
        np.testing.assert_array_equal(cols[key], original[key])
    np.testing.assert_allclose(cols["n_step_discount"], np.full(6, 0.9))

    cols = trajectory([False] * 6)
    adjust_nstep(10, 1.0, cols)  # undiscounted, window longer than the trajectory
    np.testing.assert_array_equal(cols["rewards"], [21, 20, 18, 15, 11, 6])
    np.testing.assert_array_equal(cols["new_obs"][:, 0], [60] * 6)
    np.testing.assert_array_equal(cols["n_step_discount"], [1.0] * 6)


def test_vectorised_matches_loop_reference_on_random_trajectories() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        horizon = int(rng.integers(1, 40))
        n = int(rng.integers(1, 8))
        gamma = float(rng.random())
        cols = {
            "obs": rng.random((horizon, 3)),
            "actions": rng.integers(0, 4, horizon),
            "rewards": rng.normal(size=horizon),
            "new_obs": rng.random((horizon, 3)),
            "dones": rng.random(horizon) < 0.15,
        }
        ref = {k: v.copy() for k, v in cols.items()}
        adjust_nstep(n, gamma, cols)
        for t in range(horizon):
            total, k = 0.0, 0
            while k < n and t + k < horizon:
                total += gamma**k * ref["rewards"][t + k]
                k += 1
                if ref["dones"][t + k - 1]:
                    break
            assert cols["rewards"][t] == pytest.approx(total, rel=1e-12, abs=1e-12)
            np.testing.assert_array_equal(cols["new_obs"][t], ref["new_obs"][t + k - 1])
            assert cols["dones"][t] == ref["dones"][t + k - 1]
            assert cols["n_step_discount"][t] == pytest.approx(gamma**k, rel=1e-12)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="n_step"):
        adjust_nstep(0, GAMMA, trajectory([False] * 6))
    with pytest.raises(ValueError, match="gamma"):
        adjust_nstep(3, 1.5, trajectory([False] * 6))
    cols = trajectory([False] * 6)
    cols["dones"] = cols["dones"][:5]
    with pytest.raises(ValueError, match="same length"):
        adjust_nstep(3, GAMMA, cols)
    with pytest.raises(ValueError, match="needs columns"):
        adjust_nstep(3, GAMMA, {"rewards": np.zeros(3)})
