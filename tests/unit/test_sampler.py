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


def _previous_in_episode(values, eps_id, t):
    """Each row's previous row of the same episode (rows of one env in time order), zero at an episode's start."""
    out = np.zeros_like(values)
    for i in range(1, len(values)):
        if t[i] != 0 and eps_id[i] == eps_id[i - 1]:
            out[i] = values[i - 1]
    return out


@pytest.mark.parametrize("num_envs", [1, 3])
def test_batches_hold_prev_actions_and_prev_rewards_for_every_policy(num_envs):
    """RLlib's batches always carry the previous step's action and (clipped) reward, zeros at an episode's start;
    across fragments, a running episode's first row of the next fragment holds its last step."""
    worker = RolloutWorker(cartpole, RecordingPolicy, num_envs_per_worker=num_envs, sample_batch_size=30,
                           clip_rewards=0.5, seed=1)  # fmt: skip
    first, second = worker.sample(), worker.sample()
    for batch in (first, second):
        eps, t = batch[SampleBatch.EPS_ID], batch[SampleBatch.T]
        rows = batch.count // num_envs
        for e in range(num_envs):
            part = slice(e * rows, (e + 1) * rows)
            for key, column in ((SampleBatch.PREV_ACTIONS, SampleBatch.ACTIONS),
                                (SampleBatch.PREV_REWARDS, SampleBatch.REWARDS)):  # fmt: skip
                want = _previous_in_episode(batch[column][part], eps[part], t[part])
                got = batch[key][part]
                assert got[1:].tolist() == want[1:].tolist(), key
    assert set(first[SampleBatch.PREV_REWARDS].tolist()) <= {0.0, 0.5}
    assert first[SampleBatch.PREV_ACTIONS].dtype == first[SampleBatch.ACTIONS].dtype
    continued = 0
    for e in range(num_envs):  # the second fragment's first row continues the first fragment's last
        end, start = (e + 1) * 30 - 1, e * 30
        continues = second[SampleBatch.T][start] != 0
        continued += continues
        want_action = first[SampleBatch.ACTIONS][end] if continues else 0
        want_reward = first[SampleBatch.REWARDS][end] if continues else 0.0
        assert second[SampleBatch.PREV_ACTIONS][start] == want_action
        assert second[SampleBatch.PREV_REWARDS][start] == want_reward
    assert first[SampleBatch.PREV_ACTIONS][0] == 0 and first[SampleBatch.PREV_REWARDS][0] == 0.0
    assert num_envs == 1 or continued  # seed 1: episodes run on across the fragments
