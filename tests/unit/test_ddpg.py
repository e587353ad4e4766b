"""DDPG / TD3: target policy smoothing, clipped double Q, delayed actor and target updates, soft updates,
PER weights in the critic loss, noise-free acting, OU noise, and the configs against seed 004."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.ddpg import APEX_DDPG_DEFAULT_CONFIG, DEFAULT_CONFIG, TD3_DEFAULT_CONFIG, DDPGTorchPolicy
from relayrl.agents.ddpg.ddpg_torch_policy import critic_loss_fn, target_policy_actions
from relayrl.agents.registry import get_trainer_class
from relayrl.policy.sample_batch import SampleBatch
from relayrl.utils.exploration import OUNoise

SB = SampleBatch
OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))


def make_policy(base: dict = DEFAULT_CONFIG, **overrides) -> DDPGTorchPolicy:
    torch.manual_seed(0)
    config = {**base, "actor_hiddens": [16], "critic_hiddens": [16], "seed": 0, **overrides}
    return DDPGTorchPolicy(OBS, ACT, config)


def random_batch(n: int = 32, seed: int = 0, weights: np.ndarray | None = None) -> SampleBatch:
    rng = np.random.default_rng(seed)
    cols = {
        SB.OBS: rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        SB.NEXT_OBS: rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        SB.ACTIONS: rng.uniform(ACT.low, ACT.high, (n, 2)).astype(np.float32),
        SB.REWARDS: rng.normal(size=n).astype(np.float32),
        SB.TERMINATEDS: (rng.random(n) < 0.2).astype(np.float32),
        "n_step_discount": np.full(n, 0.99, np.float32),
    }
    if weights is not None:
        cols["weights"] = weights.astype(np.float32)
    return SampleBatch(cols)


def test_target_policy_smoothing_noise_is_clipped_and_scaled():
    policy = make_policy(TD3_DEFAULT_CONFIG)
    target = policy.target_model
    obs = torch.zeros(20000, 3)
    mean = target.policy(obs)[0]
    config = {**policy.config, "target_noise": 0.2, "target_noise_clip": 0.3}
    smoothed = target_policy_actions(target, obs, config)
    half_range = torch.tensor([2.0, 0.5])
    noise = (smoothed - mean) / half_range
    inside = (smoothed > torch.tensor([-2.0, 0.0]) + 1e-6) & (smoothed < torch.tensor([2.0, 1.0]) - 1e-6)
    # Clipped at +-0.3 half-ranges (and then at the bounds), std ~0.2 half-ranges before clipping.
    assert noise.abs().max().item() <= 0.3 + 1e-5
    assert smoothed.min(0).values.ge(torch.tensor([-2.0, 0.0])).all()
    assert smoothed.max(0).values.le(torch.tensor([2.0, 1.0])).all()
    free = noise[:, 0][inside[:, 0] & (noise[:, 0].abs() < 0.29)]
    assert 0.12 < free.std().item() < 0.2
    assert noise.std(0).gt(0.05).all()  # every dimension is perturbed
    off = target_policy_actions(target, obs, {**config, "smooth_target_policy": False})
    assert torch.equal(off, target.policy(obs))


def test_twin_q_target_takes_the_minimum():
    policy = make_policy(TD3_DEFAULT_CONFIG, smooth_target_policy=False)
    tensors = policy.load_batch(random_batch())
    _, _, fetches = critic_loss_fn(policy, policy.model, tensors)
    td = fetches["td_error"]
    with torch.no_grad():
        t = policy.target_model
        a = t.policy(tensors[SB.NEXT_OBS])
        q1, q2 = t.q_values(tensors[SB.NEXT_OBS], a)
        y = tensors[SB.REWARDS] + 0.99 * (1 - tensors[SB.TERMINATEDS]) * torch.min(q1, q2)
        expected = policy.model.q_values(tensors[SB.OBS], tensors[SB.ACTIONS])[0] - y
    assert not torch.allclose(q1, q2)
    np.testing.assert_allclose(td.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_delayed_policy_and_target_updates():
    policy = make_policy(TD3_DEFAULT_CONFIG, policy_delay=3, tau=0.5)
    batch = random_batch()

    def snapshot(module):
        return [p.detach().clone() for p in module.parameters()]

    for step in range(1, 7):
        actor, critic, target = snapshot(policy.model.actor), snapshot(policy.model.q1), snapshot(policy.target_model)
        policy.learn_on_batch(batch)
        actor_changed = any(not torch.equal(a, b) for a, b in zip(actor, policy.model.actor.parameters()))
        target_changed = any(not torch.equal(a, b) for a, b in zip(target, policy.target_model.parameters()))
        critic_changed = any(not torch.equal(a, b) for a, b in zip(critic, policy.model.q1.parameters()))
        assert critic_changed  # the critic learns every update
        assert actor_changed == (step % 3 == 0), step  # the actor every policy_delay updates
        assert target_changed == (step % 3 == 0), step  # and so do the targets
    assert policy.num_updates == 6 and policy.num_actor_updates == 2


def test_soft_target_update_is_polyak_averaging():
    policy = make_policy(tau=0.1)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in policy.target_model.parameters()]
    policy.update_target()
    for b, t, m in zip(before, policy.target_model.parameters(), policy.model.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * m, atol=1e-6)


def test_prioritized_replay_weights_scale_the_critic_loss():
    policy = make_policy(l2_reg=0.0)
    weights = np.random.default_rng(1).random(32)
    weights[:8] = 0.0
    tensors = policy.load_batch(random_batch(weights=weights))
    loss, _, fetches = critic_loss_fn(policy, policy.model, tensors)
    td = fetches["td_error"]
    expected = (torch.tensor(weights, dtype=torch.float32) * 0.5 * td**2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    huber_policy = make_policy(l2_reg=0.0, use_huber=True, huber_threshold=0.1)
    loss, _, fetches = critic_loss_fn(huber_policy, huber_policy.model, tensors)
    td = fetches["td_error"]
    h = torch.where(td.abs() < 0.1, 0.5 * td**2, 0.1 * (td.abs() - 0.05))
    assert loss.item() == pytest.approx((torch.tensor(weights, dtype=torch.float32) * h).mean().item(), rel=1e-5)


def test_learn_on_batch_returns_td_error():
    policy = make_policy()
    out = policy.learn_on_batch(random_batch())
    assert out["td_error"].shape == (32,)
    assert {"critic_loss", "actor_loss", "mean_q"} <= set(out["learner_stats"])


@pytest.mark.parametrize("base", [DEFAULT_CONFIG, TD3_DEFAULT_CONFIG])
def test_explore_false_is_noise_free(base):
    policy = make_policy(base, pure_exploration_steps=0)
    obs = np.random.default_rng(0).uniform(-1, 1, (64, 3)).astype(np.float32)
    greedy = policy.compute_actions(obs, explore=False)[0]
    with torch.no_grad():
        mu = policy.model.policy(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(greedy, mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(policy.compute_actions(obs, explore=False)[0], greedy)
    noisy = policy.compute_actions(obs, explore=True)[0]
    assert not np.allclose(noisy, greedy)
    assert (noisy >= ACT.low).all() and (noisy <= ACT.high).all()


def test_pure_exploration_steps_are_uniform():
    policy = make_policy(TD3_DEFAULT_CONFIG, pure_exploration_steps=100)
    obs = np.zeros((4000, 3), np.float32)
    actions = policy.compute_actions(obs)[0]
    np.testing.assert_allclose(actions.mean(0), [0.0, 0.5], atol=0.06)
    policy.global_timestep = 100
    assert np.abs(policy.compute_actions(obs)[0] - policy.compute_actions(obs, explore=False)[0]).max() < 1.0


def test_ou_noise_is_mean_reverting_and_resets():
    ou = OUNoise(2, theta=0.15, sigma=0.2, rng=np.random.default_rng(0))
    xs = np.stack([ou.sample(3) for _ in range(20000)])
    # Stationary std of x_{t+1} = (1 - theta) x_t + sigma e: sigma / sqrt(1 - (1 - theta)^2).
    np.testing.assert_allclose(xs[1000:].std(), 0.2 / np.sqrt(1 - 0.85**2), rtol=0.1)
    lag1 = np.corrcoef(xs[1000:-1, 0, 0], xs[1001:, 0, 0])[0, 1]
    assert lag1 == pytest.approx(0.85, abs=0.03)  # temporally correlated
    ou.reset(np.array([True, False, False]))
    assert (ou.state[0] == 0).all() and (ou.state[1] != 0).all()


def test_configs_and_registry():
    seed_ddpg = {
        "actor_hiddens": [64, 64],
        "actor_hidden_activation": "relu",
        "critic_hiddens": [64, 64],
        "critic_hidden_activation": "relu",
        "n_step": 1,
        "schedule_max_timesteps": 100000,
        "timesteps_per_iteration": 1000,
        "exploration_fraction": 0.1,
        "exploration_final_eps": 0.02,
        "noise_scale": 0.1,
        "exploration_theta": 0.15,
        "exploration_sigma": 0.2,
        "target_network_update_freq": 0,
        "tau": 0.002,
        "buffer_size": 50000,
        "prioritized_replay": True,
        "prioritized_replay_alpha": 0.6,
        "prioritized_replay_beta": 0.4,
        "prioritized_replay_eps": 1e-6,
        "compress_observations": False,
        "actor_lr": 1e-4,
        "critic_lr": 1e-3,
        "use_huber": False,
        "huber_threshold": 1.0,
        "l2_reg": 1e-6,
        "grad_norm_clipping": None,
        "learning_starts": 1500,
        "sample_batch_size": 1,
        "train_batch_size": 256,
        "num_workers": 0,
        "optimizer_class": "SyncReplayOptimizer",
        "per_worker_exploration": False,
        "worker_side_prioritization": False,
        "min_iter_time_s": 1,
    }
    for key, value in seed_ddpg.items():
        assert DEFAULT_CONFIG[key] == value, key
    td3 = TD3_DEFAULT_CONFIG
    assert (td3["twin_q"], td3["policy_delay"], td3["smooth_target_policy"], td3["exploration_noise_type"]) == (
        True,
        2,
        True,
        "gaussian",
    )
    assert APEX_DDPG_DEFAULT_CONFIG["optimizer_class"] == "AsyncReplayOptimizer"
    assert APEX_DDPG_DEFAULT_CONFIG["num_workers"] == 32 and APEX_DDPG_DEFAULT_CONFIG["n_step"] == 3
    assert get_trainer_class("TD3")._default_config is TD3_DEFAULT_CONFIG
    assert get_trainer_class("APEX_DDPG")._name == "APEX_DDPG"
    with pytest.raises(ValueError, match="policy_delay"):
        get_trainer_class("TD3")(env="Pendulum-v1", config={"policy_delay": 0})
    with pytest.raises(ValueError, match="exploration_noise_type"):
        get_trainer_class("DDPG")(env="Pendulum-v1", config={"exploration_noise_type": "pink"})


def test_a_nan_reward_is_refused_before_the_critic_step():
    """check_nan: the critic's NaN loss raises NonFiniteLossError and no weight or optimizer state changes."""
    from relayrl.policy import NonFiniteLossError

    policy = make_policy()
    before = {k: v.copy() for k, v in policy.get_weights().items()}
    batch = random_batch()
    batch["rewards"] = batch["rewards"].copy()
    batch["rewards"][3] = np.nan
    with pytest.raises(NonFiniteLossError, match="rewards"):
        policy.learn_on_batch(batch)
    after = policy.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)
