"""PPO's loss on a fixed batch against the same quantities computed by hand in numpy."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTorchPolicy
from relayrl.config import merge_dicts
from relayrl.evaluation.postprocessing import Postprocessing
from relayrl.policy import SampleBatch


def log_softmax(x):
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_ppo_loss_matches_numpy():
    torch.manual_seed(0)
    obs_space, act_space = gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(3)
    config = merge_dicts(
        DEFAULT_CONFIG,
        {
            "model": {"fcnet_hiddens": [8]},
            "kl_coeff": 0.3,
            "entropy_coeff": 0.01,
            "clip_param": 0.2,
            "vf_clip_param": 0.5,
            "vf_loss_coeff": 0.7,
        },
    )
    policy = PPOTorchPolicy(obs_space, act_space, config)
    rng = np.random.default_rng(0)
    n = 6
    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    old_logits = rng.normal(size=(n, 3)).astype(np.float32)
    actions = rng.integers(0, 3, n)
    old_logp = log_softmax(old_logits)[np.arange(n), actions]
    adv = rng.normal(size=n).astype(np.float32)
    targets = rng.normal(size=n).astype(np.float32)
    vf_preds = rng.normal(size=n).astype(np.float32)
    batch = SampleBatch(
        {
            SampleBatch.OBS: obs,
            SampleBatch.ACTIONS: actions,
            SampleBatch.ACTION_DIST_INPUTS: old_logits,
            SampleBatch.ACTION_LOGP: old_logp.astype(np.float32),
            Postprocessing.ADVANTAGES: adv,
            Postprocessing.VALUE_TARGETS: targets,
            SampleBatch.VF_PREDS: vf_preds,
        }
    )
    tensors = policy.load_batch(batch)
    loss, loss_stats, _ = policy.compute_loss(policy.model, tensors)
    loss = loss.item()

    # The same quantities by hand, from the model's current outputs.
    with torch.no_grad():
        logits, _ = policy.model({"obs": torch.from_numpy(obs)}, [], None)
        values = policy.model.value_function().numpy()
    logits = logits.numpy()
    logp_all = log_softmax(logits)
    ratio = np.exp(logp_all[np.arange(n), actions] - old_logp)
    surrogate = np.minimum(adv * ratio, adv * np.clip(ratio, 0.8, 1.2))
    old_p = np.exp(log_softmax(old_logits))
    kl = (old_p * (log_softmax(old_logits) - logp_all)).sum(-1)
    entropy = -(np.exp(logp_all) * logp_all).sum(-1)
    vf_clipped = vf_preds + np.clip(values - vf_preds, -0.5, 0.5)
    vf_loss = np.maximum((values - targets) ** 2, (vf_clipped - targets) ** 2)
    expected = np.mean(-surrogate + 0.3 * kl + 0.7 * vf_loss - 0.01 * entropy)
    assert abs(loss - expected) < 1e-5, (loss, expected)
    stats = policy.stats(tensors, loss_stats)
    assert abs(stats["kl"] - kl.mean()) < 1e-5
    assert abs(stats["entropy"] - entropy.mean()) < 1e-5
    assert 0 < stats["clip_fraction"] < 1 and abs(stats["clip_fraction"] - np.mean(np.abs(ratio - 1) > 0.2)) < 1e-6
    assert abs(stats["approx_kl"] - np.mean((ratio - 1) - np.log(ratio))) < 1e-5


def test_kl_coefficient_adapts():
    policy = PPOTorchPolicy(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2), dict(DEFAULT_CONFIG))
    policy.kl_coeff = 0.2
    assert policy.update_kl(0.05) == pytest.approx(0.3)  # above 2 * kl_target (0.01): * 1.5
    assert policy.update_kl(0.001) == pytest.approx(0.15)  # below kl_target / 2: * 0.5
    assert policy.update_kl(0.01) == pytest.approx(0.15)  # within the band: unchanged


def test_continuous_actions_logp_against_numpy():
    torch.manual_seed(1)
    policy = PPOTorchPolicy(
        gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Box(-2, 2, (2,), np.float32), dict(DEFAULT_CONFIG)
    )
    obs = np.random.default_rng(2).uniform(-1, 1, (5, 2)).astype(np.float32)
    actions, _, extra = policy.compute_actions(obs)
    mean, log_std = np.split(extra[SampleBatch.ACTION_DIST_INPUTS], 2, axis=-1)
    expected = (-0.5 * ((actions - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(extra[SampleBatch.ACTION_LOGP], expected, rtol=1e-4, atol=1e-4)
    # The numpy fast path and the torch model agree on the distribution inputs.
    with torch.no_grad():
        out, _ = policy.model({"obs": torch.from_numpy(obs)}, [], None)
        torch_values = policy.model.value_function().numpy()
    np.testing.assert_allclose(extra[SampleBatch.ACTION_DIST_INPUTS], out.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(policy.value(obs), torch_values, rtol=1e-5, atol=1e-6)


def test_lr_schedule_follows_timesteps():
    from relayrl.agents.ppo import PPOTrainer

    trainer = PPOTrainer(
        env="CartPole-v1",
        config={
            "lr_schedule": [[0, 1e-3], [800, 1e-4]],
            "train_batch_size": 400,
            "sample_batch_size": 100,
            "sgd_minibatch_size": 100,
            "num_sgd_iter": 1,
            "model": {"fcnet_hiddens": [8]},
        },
    )
    policy = trainer.get_policy()
    trainer.train()
    assert policy.cur_lr == pytest.approx(1e-3 + (1e-4 - 1e-3) * 400 / 800)
    assert policy._optimizers[0].param_groups[0]["lr"] == policy.cur_lr
    trainer.train()
    trainer.train()
    assert policy.cur_lr == pytest.approx(1e-4)
