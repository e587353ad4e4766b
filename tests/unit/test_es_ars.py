"""ES and ARS: configs, the perturbation worker, the two updates, and the Trainer API (checkpoints, actions)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from relayrl.agents.ars import DEFAULT_CONFIG as ARS_CONFIG
from relayrl.agents.ars import ARSTrainer
from relayrl.agents.es import DEFAULT_CONFIG as ES_CONFIG
from relayrl.agents.es import ESTrainer
from relayrl.agents.es.es_worker import PerturbationWorker
from relayrl.agents.es.policies import make_policy
from relayrl.agents.trainer import Trainer
from relayrl.utils.es_utils import compute_centered_ranks, create_noise

NOISE = 100_000


def _cartpole(ctx):
    return gym.make("CartPole-v1")


def test_es_config_reproduces_seed():
    seed = {
        "l2_coeff": 0.005,
        "noise_stdev": 0.02,
        "episodes_per_batch": 1000,
        "train_batch_size": 10000,
        "eval_prob": 0.003,
        "return_proc_mode": "centered_rank",
        "num_workers": 10,
        "stepsize": 0.01,
        "observation_filter": "MeanStdFilter",
        "noise_size": 250000000,
        "report_length": 10,
    }
    assert {k: ES_CONFIG[k] for k in seed} == seed


def test_ars_config_reproduces_seed():
    seed = {
        "noise_stdev": 0.02,
        "num_rollouts": 32,
        "rollouts_used": 32,
        "num_workers": 2,
        "sgd_stepsize": 0.01,
        "observation_filter": "MeanStdFilter",
        "noise_size": 250000000,
        "eval_prob": 0.03,
        "report_length": 10,
        "offset": 0,
    }
    assert {k: ARS_CONFIG[k] for k in seed} == seed


@pytest.mark.parametrize(
    "cls,bad,key",
    [
        (ARSTrainer, {"rollouts_used": 8, "num_rollouts": 4}, "rollouts_used"),
        (ESTrainer, {"return_proc_mode": "raw"}, "return_proc_mode"),
        (ESTrainer, {"policy_type": "CNN"}, "policy_type"),
        (ESTrainer, {"noise_stdevv": 0.1}, "noise_stdev"),
    ],
)
def test_bad_configs_are_rejected(cls, bad, key):
    with pytest.raises(ValueError, match=key):
        cls(env="CartPole-v1", config={"num_workers": 0, "noise_size": NOISE, **bad})


def test_policies_shapes_and_flat_weights():
    space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    linear = make_policy("LinearPolicy", 3, space, {})
    assert linear.num_params == 6 and not linear.get_flat_weights().any()  # ARS starts at M = 0
    mlp = make_policy("MLPPolicy", 3, gym.spaces.Discrete(4), {"fcnet_hiddens": [5]}, seed=0)
    assert mlp.num_params == 3 * 5 + 5 + 5 * 4 + 4
    theta = np.arange(mlp.num_params, dtype=np.float32) / 100
    mlp.set_flat_weights(theta)
    np.testing.assert_array_equal(mlp.get_flat_weights(), theta)
    actions = mlp.compute_actions(np.ones((7, 3), np.float32))
    assert actions.shape == (7,) and set(actions.tolist()) <= set(range(4))
    linear.set_flat_weights(np.full(6, 10.0, np.float32))
    assert np.all(linear.compute_actions(np.ones((2, 3))) == 1.0)  # Box actions clipped to the bounds


def _worker(seed: int, **overrides) -> PerturbationWorker:
    config = {
        **ES_CONFIG,
        "num_workers": 0,
        "noise_size": NOISE,
        "seed": seed,
        "eval_prob": 0.2,
        "model": {"fcnet_hiddens": [8]},
        **overrides,
    }
    return PerturbationWorker(_cartpole, config, create_noise(NOISE, 0), worker_index=1)


def test_worker_rollouts_are_antithetic_and_deterministic_per_seed():
    a, b, c = _worker(5), _worker(5), _worker(6)
    theta = a.policy.get_flat_weights()
    ra, rb, rc = (w.do_rollouts(theta, num_pairs=6, min_steps=100) for w in (a, b, c))
    assert ra["noisy_returns"].shape == (len(ra["noise_indices"]), 2) and len(ra["noise_indices"]) >= 6
    assert ra["noisy_lengths"].sum() >= 100
    for key in ra:
        np.testing.assert_array_equal(ra[key], rb[key])
    assert not np.array_equal(ra["noise_indices"], rc["noise_indices"])
    # The +/- halves of a pair are different policies (the perturbation is not zero).
    assert np.any(ra["noisy_returns"][:, 0] != ra["noisy_returns"][:, 1])


def test_worker_offset_is_subtracted_per_step_of_training_rollouts():
    w = _worker(1, offset=1.0, eval_prob=0.0)
    r = w.do_rollouts(w.policy.get_flat_weights(), num_pairs=3)
    np.testing.assert_array_equal(r["noisy_returns"], 0.0)  # CartPole pays 1 per step


def _es(**overrides) -> ESTrainer:
    config = {
        "num_workers": 0,
        "noise_size": NOISE,
        "seed": 0,
        "episodes_per_batch": 10,
        "train_batch_size": 200,
        "eval_prob": 0.1,
        "model": {"fcnet_hiddens": [8]},
        **overrides,
    }
    return ESTrainer(env="CartPole-v1", config=config)


def test_es_update_is_the_centered_rank_weighted_sum_of_the_noise():
    trainer = _es(l2_coeff=0.0)
    theta = trainer.policy.get_flat_weights()
    n = trainer.policy.num_params
    indices = np.array([0, 50, 900])
    returns = np.array([[3.0, 1.0], [0.0, 2.0], [5.0, 5.5]])
    ranks = compute_centered_ranks(returns)
    expected_g = sum((ranks[i, 0] - ranks[i, 1]) * trainer.noise.get(int(j), n) for i, j in enumerate(indices)) / 6
    adam_first_step = -trainer.config["stepsize"] * np.sign(-expected_g)  # Adam's first step is lr * sign(g)
    new_theta, info = trainer._update(theta, indices, returns)
    nz = np.abs(expected_g) > 1e-4
    np.testing.assert_allclose((new_theta - theta)[nz], adam_first_step[nz], rtol=1e-3)
    assert info["grad_norm"] == pytest.approx(float(np.square(expected_g).sum()), rel=1e-5)
    trainer.stop()


def test_ars_keeps_the_best_directions_and_scales_by_their_std():
    trainer = ARSTrainer(
        env="CartPole-v1",
        config={
            "num_workers": 0,
            "noise_size": NOISE,
            "seed": 0,
            "num_rollouts": 3,
            "rollouts_used": 2,
            "sgd_momentum": 0.0,
            "sgd_stepsize": 0.5,
        },
    )
    theta = trainer.policy.get_flat_weights()
    n = trainer.policy.num_params
    indices = np.array([10, 20, 30])
    returns = np.array([[1.0, 0.0], [9.0, 2.0], [0.0, 4.0]])  # max per direction: 1, 9, 4 -> keep 20 and 30
    kept = returns[[1, 2]]
    g = ((9.0 - 2.0) * trainer.noise.get(20, n) + (0.0 - 4.0) * trainer.noise.get(30, n)) / 2 / np.std(kept)
    new_theta, info = trainer._update(theta, indices, returns)
    np.testing.assert_allclose(new_theta, theta + 0.5 * g, rtol=1e-5, atol=1e-7)
    assert info["directions_used"] == 2
    trainer.stop()


@pytest.mark.parametrize("cls", [ESTrainer, ARSTrainer])
def test_train_result_checkpoint_and_compute_action(cls, tmp_path):
    config = {"num_workers": 0, "noise_size": NOISE, "seed": 0, "eval_prob": 0.3, "model": {"fcnet_hiddens": [8]}}
    if cls is ESTrainer:
        config.update(episodes_per_batch=10, train_batch_size=200)
    else:
        config.update(num_rollouts=4, rollouts_used=2)
    trainer = cls(env="CartPole-v1", config=config)
    result = trainer.train()
    for key in (
        "episode_reward_mean",
        "episode_len_mean",
        "timesteps_this_iter",
        "timesteps_total",
        "training_iteration",
        "info",
    ):
        assert key in result
    assert result["timesteps_this_iter"] > 0 and result["info"]["episodes_this_iter"] >= 2
    path = trainer.save(str(tmp_path))
    restored = Trainer.from_checkpoint(path)
    assert type(restored) is cls and restored.iteration == 1
    np.testing.assert_array_equal(restored.policy.get_flat_weights(), trainer.policy.get_flat_weights())
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs = rng.uniform(-0.1, 0.1, 4).astype(np.float32)
        action = trainer.compute_action(obs, explore=False)
        assert action in (0, 1) and restored.compute_action(obs, explore=False) == action
    # A checkpoint of another trainer is refused.
    other = (ARSTrainer if cls is ESTrainer else ESTrainer)(
        env="CartPole-v1", config={"num_workers": 0, "noise_size": NOISE, "model": {"fcnet_hiddens": [8]}}
    )
    with pytest.raises(ValueError, match="written by trainer"):
        other.restore(path)
    for t in (trainer, restored, other):
        t.stop()


def test_es_with_two_ray_workers_shares_one_noise_table_and_syncs_filters():
    trainer = _es(num_workers=2)
    try:
        result = trainer.train()
        assert result["info"]["episodes_this_iter"] >= 10
        local_filter = trainer.workers.local_worker().filter
        # The driver's filter holds what both workers saw (every observation of this iteration's rollouts).
        assert local_filter.rs.n >= result["timesteps_this_iter"] - 1
    finally:
        trainer.stop()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda m, s: m["counters"].update(iteration="abc"), "counter 'iteration' must be a non-negative integer"),
        (lambda m, s: s["optimizer"].update(m=np.zeros(3, np.float32)), "field 'optimizer.m' has shape"),
        (lambda m, s: s["filters"]["default_policy"]["rs"].update(mean=np.zeros(7)), "filters.default_policy"),
        (lambda m, s: s["trainer"].update(reward_list=["x"]), "trainer.reward_list"),
    ],
)
def test_es_restore_is_all_or_nothing(tmp_path, corrupt, message):
    """A checkpoint that fails any check leaves the ES trainer exactly as it was (weights, moments, filter,
    counters), whichever part is bad: nothing is applied before everything is checked."""
    from relayrl.agents import checkpoint as ckpt

    config = {
        "num_workers": 0,
        "noise_size": NOISE,
        "seed": 0,
        "episodes_per_batch": 10,
        "train_batch_size": 200,
        "model": {"fcnet_hiddens": [8]},
        "observation_filter": "MeanStdFilter",
    }
    source = ESTrainer(env="CartPole-v1", config=config)
    source.train()
    source.train()
    path = source.save(str(tmp_path / "good"))
    manifest, state = ckpt.read_checkpoint(path)
    target = ESTrainer(env="CartPole-v1", config=config)
    target.train()
    before = (
        target.policy.get_flat_weights().copy(),
        target._flat_optimizer.m.copy(),
        target.workers.local_worker().filter.to_state(),
        target.iteration,
    )
    corrupt(manifest, state)
    bad = ckpt.write_checkpoint(
        str(tmp_path / "bad"),
        {k: v for k, v in manifest.items() if k not in ("format_version", "files", "state")},
        state,
    )
    with pytest.raises(ckpt.CheckpointError, match=message):
        target.restore(bad)
    np.testing.assert_array_equal(target.policy.get_flat_weights(), before[0])
    np.testing.assert_array_equal(target._flat_optimizer.m, before[1])
    after_filter = target.workers.local_worker().filter.to_state()
    np.testing.assert_array_equal(after_filter["rs"]["mean"], before[2]["rs"]["mean"])
    assert target.iteration == before[3] == 1
    target.restore(path)  # the good one still loads
    assert target.iteration == 2
    for t in (source, target):
        t.stop()
