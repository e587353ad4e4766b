"""``sample_async``: the sampler thread and the learner share one model (issue 10, item 7).

A model's forward caches its features for ``value_function()`` (the conv net, most custom models). Without a
lock, the sampler thread's forward could land between the learner's forward and its ``value_function()`` (and
the other way round): value estimates of the wrong observations, or a shape error. A3C on 84x84 images failed
within seconds.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.a3c import DEFAULT_CONFIG as A3C_CONFIG
from relayrl.agents.a3c import A3CTorchPolicy
from relayrl.evaluation.rollout_worker import RolloutWorker
from relayrl.policy.sample_batch import SampleBatch

SMALL_CONV = {"conv_filters": [[8, 4, 2], [16, 4, 2], [32, 11, 1]]}  # 42x42 -> 21x21 -> 11x11 -> 1x1


class TinyImageEnv(gym.Env):
    """Random 42x42x3 uint8 frames, two actions, reward 1 per step, 20 steps an episode."""

    observation_space = gym.spaces.Box(0, 255, (42, 42, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._frame(), {}

    def step(self, action):
        self._t += 1
        return self._frame(), 1.0, False, self._t >= 20, {}

    def _frame(self):
        return self.np_random.integers(0, 256, self.observation_space.shape, dtype=np.uint8)


@pytest.fixture
def async_worker():
    # lr 0: learn_on_batch leaves the weights as they are, so every result can be checked against a reference
    # policy with the same weights that no other thread touches.
    config = {**A3C_CONFIG, "num_workers": 0, "sample_batch_size": 5, "lr": 0.0, "model": SMALL_CONV, "seed": 0}
    worker = RolloutWorker(lambda ctx: TinyImageEnv(), A3CTorchPolicy, policy_config=config)
    yield worker, config
    worker.stop()


def test_sample_async_does_not_race_the_learner(async_worker):
    worker, config = async_worker
    policy = worker.get_policy()
    assert not policy._fast_path  # the conv net runs the torch forward, which caches its features
    reference = A3CTorchPolicy(policy.observation_space, policy.action_space, config)
    reference.set_weights(policy.get_weights())
    # 15 rows: neither the sampler's 1 row per step nor its 5-row fragments, so a value estimate of the other
    # thread's observations has the wrong shape as well as the wrong numbers.
    train_batch = SampleBatch.concat_samples([worker.sample() for _ in range(3)])
    assert train_batch.count == 15
    ref_grads, ref_info = reference.compute_gradients(train_batch)
    ref_vf_loss = ref_info["learner_stats"]["vf_loss"]

    weights = policy.get_weights()
    for _ in range(30):  # the unlocked code failed within 1-3 rounds
        grads, info = worker.compute_gradients(train_batch)  # the sampler thread keeps stepping meanwhile
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
        stats = worker.learn_on_batch(train_batch)["learner_stats"]
        assert stats["vf_loss"] == pytest.approx(ref_vf_loss, rel=1e-4)
        worker.set_weights({"default_policy": weights})
        # A fragment sampled meanwhile: its value estimates are those of its own observations.
        batch = worker.sample()
        with torch.no_grad():
            expected = reference.value(batch[SampleBatch.OBS])
        np.testing.assert_allclose(batch[SampleBatch.VF_PREDS], expected, rtol=1e-4, atol=1e-5)


def test_impala_without_remote_workers_shares_the_learner_lock_with_the_sampler():
    """IMPALA with num_workers 0: the driver samples while the learner thread trains the same model; both take
    the optimizer's lock (each policy call, each optimizer step)."""
    from relayrl.agents.impala import ImpalaTrainer

    trainer = ImpalaTrainer(
        env="CartPole-v1",
        config={"num_workers": 0, "model": {"fcnet_hiddens": [8]}, "sample_batch_size": 20, "train_batch_size": 40},
    )
    try:
        trainer.train()
        worker = trainer.workers.local_worker()
        assert worker._model_lock is trainer.optimizer.lock
        assert worker.sampler._lock is trainer.optimizer.lock
    finally:
        trainer.stop()
