"""The sampling loop: batching, episode modes, horizon, clipping, observation handling, determinism."""

import gymnasium as gym
import numpy as np
import pytest

from relayrl.agents.pg import PGTrainer
from relayrl.agents.ppo import PPOTrainer
from relayrl.evaluation import RolloutWorker
from relayrl.policy import Policy, SampleBatch


class RecordingPolicy(Policy):
    """Acts at random; records the size of every compute_actions call."""

    calls: list = []

    def compute_actions(self, obs_batch, state_batches=None, **kw):
        RecordingPolicy.calls.append(len(obs_batch))
        return np.array([self.action_space.sample() for _ in obs_batch]), [], {}

    def get_weights(self):
        return {}

    def set_weights(self, weights):
        pass


def cartpole(ctx):
    return gym.make("CartPole-v1")


def test_one_batched_call_per_step_over_all_sub_envs():
    RecordingPolicy.calls = []
    worker = RolloutWorker(cartpole, RecordingPolicy, num_envs_per_worker=4, sample_batch_size=10)
    batch = worker.sample()
    assert batch.count == 40
    assert RecordingPolicy.calls == [4] * 10
    # Each sub-env contributes its 10 steps contiguously (env by env, in time order).
    t = batch[SampleBatch.T].reshape(4, 10)
    assert all(np.all(np.diff(row)[row[1:] != 0] == 1) for row in t)


def test_complete_episodes_mode_returns_whole_episodes():
    worker = RolloutWorker(cartpole, RecordingPolicy, batch_mode="complete_episodes", sample_batch_size=5)
    batch = worker.sample()
    assert batch.count >= 5
    for episode in batch.split_by_episode():
        assert episode[SampleBatch.DONES][-1] and not episode[SampleBatch.DONES][:-1].any()
        assert episode[SampleBatch.T][0] == 0


def test_horizon_truncates_episodes():
    worker = RolloutWorker(cartpole, RecordingPolicy, horizon=3, sample_batch_size=30, batch_mode="complete_episodes")
    batch = worker.sample()
    lengths = [e.count for e in batch.split_by_episode()]
    assert max(lengths) <= 3
    assert any(batch[SampleBatch.TRUNCATEDS])
    metrics = worker.get_metrics()
    assert metrics and all(m.episode_length <= 3 for m in metrics)


class BigActionPolicy(RecordingPolicy):
    def compute_actions(self, obs_batch, state_batches=None, **kw):
        return np.full((len(obs_batch), 1), 5.0, dtype=np.float32), [], {}


class ActionRecordingPendulum(gym.Wrapper):
    seen: list = []

    def step(self, action):
        ActionRecordingPendulum.seen.append(np.array(action))
        return self.env.step(action)


def test_clip_actions_for_the_env_only():
    ActionRecordingPendulum.seen = []
    worker = RolloutWorker(
        lambda ctx: ActionRecordingPendulum(gym.make("Pendulum-v1")), BigActionPolicy, sample_batch_size=5
    )
    batch = worker.sample()
    assert np.all(batch[SampleBatch.ACTIONS] == 5.0)  # the batch keeps what the policy chose
    assert all(np.all(a == 2.0) for a in ActionRecordingPendulum.seen)  # the env got the clipped action


def test_discrete_observations_are_one_hot():
    worker = RolloutWorker(lambda ctx: gym.make("FrozenLake-v1"), RecordingPolicy, sample_batch_size=8)
    obs = worker.sample()[SampleBatch.OBS]
    assert obs.shape == (8, 16)
    assert np.all(obs.sum(axis=1) == 1)


def test_reward_clipping():
    worker = RolloutWorker(lambda ctx: gym.make("Pendulum-v1"), BigActionPolicy, clip_rewards=True, sample_batch_size=5)
    assert set(np.unique(worker.sample()[SampleBatch.REWARDS])) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("trainer_cls", [PGTrainer, PPOTrainer])
def test_same_seed_same_rewards(trainer_cls):
    def run(seed):
        config = {"seed": seed, "train_batch_size": 400, "num_envs_per_worker": 2, "sample_batch_size": 100}
        if trainer_cls is PPOTrainer:
            config.update(sgd_minibatch_size=100, num_sgd_iter=2)
        trainer = trainer_cls(env="CartPole-v1", config=config)
        rewards = [trainer.train()["episode_reward_mean"] for _ in range(3)]
        weights = trainer.get_policy().get_weights()
        return rewards, weights

    (r1, w1), (r2, w2), (r3, _) = run(7), run(7), run(8)
    assert r1 == r2
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert r1 != r3
