"""Policy export: ONNX (onnxruntime) and TorchScript give the policy's deterministic actions, filter included."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.ppo import PPOTrainer
from relayrl.policy.export import ONNX_FILE, SIDECAR_FILE, TORCHSCRIPT_FILE

ort = pytest.importorskip("onnxruntime")

SMALL = {
    "num_workers": 0,
    "sample_batch_size": 128,
    "train_batch_size": 256,
    "sgd_minibatch_size": 64,
    "num_sgd_iter": 2,
    "observation_filter": "MeanStdFilter",
    "model": {"fcnet_hiddens": [32, 32]},
    "seed": 0,
}


def raw_observations(env_id: str, n: int = 100, seed: int = 0) -> np.ndarray:
    """Observations from random play, spread out so that the filter's clipping is exercised too."""
    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
    scale = rng.uniform(0.5, 50.0, size=(n, 1))  # up to far outside the training data: clip at 10 std
    return (np.asarray(out) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def cartpole_trainer():
    trainer = PPOTrainer(env="CartPole-v1", config=SMALL)
    trainer.train()
    trainer.train()
    yield trainer
    trainer.stop()


def test_onnx_and_torchscript_match_deterministic_actions_with_filter(cartpole_trainer, tmp_path):
    trainer = cartpole_trainer
    filt = trainer.workers.local_worker().filters["default_policy"]
    assert filt.rs.n > 100 and np.abs(filt.rs.mean).max() > 1e-3  # a non-trivial filter
    sidecar = trainer.export_policy_model(str(tmp_path))
    assert {ONNX_FILE, TORCHSCRIPT_FILE, SIDECAR_FILE} <= set(os.listdir(tmp_path))
    obs = raw_observations("CartPole-v1")
    expected = np.array([trainer.compute_action(o, explore=False) for o in obs])
    assert 0 < expected.mean() < 1  # both actions occur: the comparison can fail

    session = ort.InferenceSession(str(tmp_path / ONNX_FILE))
    actions, dist_inputs = session.run(None, {"obs": obs})
    np.testing.assert_array_equal(actions, expected)
    filtered = filt(obs, update=False)
    policy_logits = trainer.get_policy().compute_actions(filtered, explore=False)[2]["action_dist_inputs"]
    np.testing.assert_allclose(dist_inputs, policy_logits, rtol=1e-4, atol=1e-5)

    scripted = torch.jit.load(str(tmp_path / TORCHSCRIPT_FILE))
    ts_actions, _ = scripted(torch.from_numpy(obs))
    np.testing.assert_array_equal(ts_actions.numpy(), expected)

    with open(tmp_path / SIDECAR_FILE) as f:
        on_disk = json.load(f)
    assert on_disk == json.loads(json.dumps(sidecar))
    assert on_disk["observation_space"]["shape"] == [4] and on_disk["action_space"] == {
        "type": "Discrete",
        "n": 2,
        "start": 0,
    }
    assert on_disk["observation_filter"]["type"] == "MeanStdFilter"
    assert on_disk["observation_filter"]["rs"]["n"] == filt.rs.n
    assert on_disk["action"]["deterministic"] == "argmax"


def test_policy_export_model_without_filter_is_identity(cartpole_trainer, tmp_path):
    policy = cartpole_trainer.get_policy()
    policy.export_model(str(tmp_path))
    obs = raw_observations("CartPole-v1", n=50, seed=1) / 10.0
    actions, _ = ort.InferenceSession(str(tmp_path / ONNX_FILE)).run(None, {"obs": obs})
    np.testing.assert_array_equal(actions, policy.compute_actions(obs, explore=False)[0])
    with open(tmp_path / SIDECAR_FILE) as f:
        assert json.load(f)["observation_filter"] == {"type": "NoFilter"}


def test_gaussian_export_outputs_the_mean_clipped_to_bounds(tmp_path):
    config = {**SMALL, "model": {"fcnet_hiddens": [16]}}
    trainer = PPOTrainer(env="Pendulum-v1", config=config)
    trainer.train()
    policy = trainer.get_policy()
    with torch.no_grad():  # push the mean outside [-2, 2] for some observations so that clipping matters
        policy.model.logits.bias[0] += 1.5
    trainer.export_policy_model(str(tmp_path))
    obs = raw_observations("Pendulum-v1")
    mean = np.array([trainer.compute_action(o, explore=False) for o in obs]).reshape(len(obs), -1)
    actions, dist_inputs = ort.InferenceSession(str(tmp_path / ONNX_FILE)).run(None, {"obs": obs})
    np.testing.assert_allclose(actions, np.clip(mean, -2.0, 2.0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dist_inputs[:, :1], mean, rtol=1e-4, atol=1e-5)
    with open(tmp_path / SIDECAR_FILE) as f:
        side = json.load(f)
    assert side["action"] == {"distribution": "DiagGaussian", "deterministic": "mean", "clipped_to_bounds": True}
    assert side["action_space"]["low"] == [-2.0] and side["action_space"]["high"] == [2.0]
    trainer.stop()
