"""A sample fragment is postprocessed in one call: the columns that the policy leaves out per step (log-probs,
value estimates) and the advantages must be the same numbers as computed trajectory by trajectory in torch."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.ppo import DEFAULT_CONFIG as PPO_CONFIG
from relayrl.agents.ppo import PPOTorchPolicy
from relayrl.evaluation import RolloutWorker
from relayrl.evaluation.postprocessing import Postprocessing, compute_advantages
from relayrl.models.action_dist import Categorical, DiagGaussian
from relayrl.policy import Policy, SampleBatch

SB = SampleBatch
DEFERRED = (SB.ACTION_LOGP, SB.VF_PREDS, Postprocessing.ADVANTAGES, Postprocessing.VALUE_TARGETS)


def ppo_worker(env: str, **config) -> RolloutWorker:
    return RolloutWorker(
        lambda ctx: gym.make(env),
        PPOTorchPolicy,
        policy_config={**PPO_CONFIG, "seed": 1, "num_envs_per_worker": 4, "sample_batch_size": 50, **config},
    )


def three_trajectories() -> SampleBatch:
    rng = np.random.default_rng(0)
    lengths = [5, 1, 7]
    return SampleBatch(
        {
            SB.REWARDS: rng.normal(size=sum(lengths)),
            SB.VF_PREDS: rng.normal(size=sum(lengths)).astype(np.float32),
            SB.UNROLL_ID: np.repeat([10, 11, 12], lengths),
        }
    )


@pytest.mark.parametrize("use_gae", [True, False])
def test_advantages_of_concatenated_trajectories_equal_one_by_one(use_gae):
    batch = three_trajectories()
    last_r = np.array([0.0, 2.5, -1.0])
    joined = compute_advantages(batch.copy(), last_r, 0.9, 0.8, use_gae)
    pieces = [compute_advantages(p.copy(), r, 0.9, 0.8, use_gae) for p, r in zip(batch.split_trajectories(), last_r)]
    assert [p.count for p in pieces] == [5, 1, 7]
    for key in (Postprocessing.ADVANTAGES, Postprocessing.VALUE_TARGETS):
        np.testing.assert_allclose(joined[key], np.concatenate([p[key] for p in pieces]), rtol=1e-6)


def test_trajectory_ends_follow_unroll_ids():
    batch = three_trajectories()
    assert np.flatnonzero(batch.trajectory_ends()).tolist() == [4, 5, 12]
    single = SampleBatch({SB.REWARDS: np.ones(3)})
    assert single.trajectory_ends().tolist() == [False, False, True]


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
def test_deferred_logp_and_values_match_torch(env):
    worker = ppo_worker(env)
    policy = worker.policy_map["default_policy"]
    batch = worker.sample()
    assert batch.count == 200
    with torch.no_grad():
        inputs, _ = policy.model({"obs": torch.as_tensor(batch[SB.OBS]), "is_training": False}, [], None)
        dist = policy.dist_class(inputs, policy.model)
        logp = dist.logp(torch.as_tensor(batch[SB.ACTIONS])).numpy()
        values = policy.model.value_function().numpy()
    np.testing.assert_allclose(batch[SB.ACTION_DIST_INPUTS], inputs.numpy(), atol=1e-5)
    np.testing.assert_allclose(batch[SB.ACTION_LOGP], logp, atol=1e-4)
    np.testing.assert_allclose(batch[SB.VF_PREDS], values, atol=1e-5)


def test_one_call_for_the_fragment_equals_trajectory_by_trajectory():
    worker = ppo_worker("CartPole-v1")
    policy = worker.policy_map["default_policy"]
    sampled = worker.sample()
    assert len(np.unique(sampled[SB.UNROLL_ID])) > 4  # several episodes ended inside the fragment
    raw = SampleBatch({k: v for k, v in sampled.items() if k not in DEFERRED})
    joined = policy.postprocess_fragment(raw.copy())
    one_by_one = SampleBatch.concat_samples([policy.postprocess_trajectory(p.copy()) for p in raw.split_trajectories()])
    for key in DEFERRED:
        np.testing.assert_allclose(joined[key], one_by_one[key], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(joined[key], sampled[key], rtol=1e-5, atol=1e-5)


def test_direct_compute_actions_returns_every_column():
    worker = ppo_worker("CartPole-v1")
    policy = worker.policy_map["default_policy"]
    obs = np.zeros((3, 4), np.float32)
    _, _, extra = policy.compute_actions(obs)
    assert {SB.ACTION_DIST_INPUTS, SB.ACTION_LOGP, SB.VF_PREDS} <= set(extra)
    assert np.all(extra[SB.ACTION_LOGP] <= 0)
    _, _, deferred = policy.compute_actions(obs, deferred=True)
    assert set(deferred) == {SB.ACTION_DIST_INPUTS}


@pytest.mark.parametrize(
    "dist_class,inputs,actions",
    [
        (Categorical, np.random.default_rng(0).normal(size=(6, 3)) * 5, np.array([0, 1, 2, 2, 1, 0])),
        (DiagGaussian, np.random.default_rng(1).normal(size=(6, 4)), np.random.default_rng(2).normal(size=(6, 2))),
    ],
)
def test_numpy_logp_matches_torch(dist_class, inputs, actions):
    inputs = inputs.astype(np.float32)
    expected = dist_class(torch.as_tensor(inputs)).logp(torch.as_tensor(actions)).numpy()
    np.testing.assert_allclose(dist_class.numpy_logp(inputs, actions), expected, rtol=1e-5, atol=1e-5)


class StrictSignaturePolicy(Policy):
    """A user's policy whose compute_actions takes no extra keywords: the sampler must not pass any."""

    def compute_actions(
        self,
        obs_batch,
        state_batches=None,
        prev_action_batch=None,
        prev_reward_batch=None,
        info_batch=None,
        episodes=None,
    ):
        return np.ones(len(obs_batch), dtype=np.int64), [], {}

    def get_weights(self):
        return {}

    def set_weights(self, weights):
        pass


def test_policy_without_extra_keywords_is_sampled():
    worker = RolloutWorker(
        lambda ctx: gym.make("CartPole-v1"),
        StrictSignaturePolicy,
        policy_config={"num_envs_per_worker": 2, "sample_batch_size": 30},
    )
    batch = worker.sample()
    assert batch.count == 60 and set(batch[SB.ACTIONS].tolist()) == {1}


def test_complete_episodes_longer_than_a_fragment():
    worker = RolloutWorker(
        lambda ctx: gym.make("CartPole-v1"),
        StrictSignaturePolicy,
        policy_config={"num_envs_per_worker": 2, "sample_batch_size": 3, "batch_mode": "complete_episodes", "seed": 0},
    )
    batch = worker.sample()
    episodes = batch.split_by_episode()
    assert episodes and all(ep[SB.DONES][-1] and not ep[SB.DONES][:-1].any() for ep in episodes)
    assert all(ep[SB.T].tolist() == list(range(ep.count)) for ep in episodes)
    assert sum(m.episode_length for m in worker.get_metrics()) >= batch.count
