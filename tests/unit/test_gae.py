"""GAE through the real sampler, against numbers computed by hand from the definition.

The env's observation is the step index within the episode; the reward at step t is t + 1. Episode 0 terminates
after 3 steps; episode 1 runs into a 4-step time limit (a truncation). The policy's value estimate is 0.5 * obs.
"""

import gymnasium as gym
import numpy as np
import pytest

from relayrl.agents.ppo.ppo_torch_policy import postprocess_ppo_gae
from relayrl.evaluation import RolloutWorker
from relayrl.evaluation.postprocessing import Postprocessing, compute_advantages, discount_cumsum
from relayrl.policy import Policy, SampleBatch

GAMMA, LAMBDA = 0.9, 0.8


class CountingEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config=None):
        self.episode = -1

    def reset(self, *, seed=None, options=None):
        self.episode += 1
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        reward = float(self.t + 1)
        self.t += 1
        terminated = self.episode % 2 == 0 and self.t == 3
        return np.array([float(self.t)], np.float32), reward, terminated, False, {}


def make_env(ctx):
    return gym.wrappers.TimeLimit(CountingEnv(), max_episode_steps=4)


class HalfObsValuePolicy(Policy):
    def compute_actions(self, obs_batch, state_batches=None, **kw):
        obs = np.asarray(obs_batch)
        return np.zeros(len(obs), dtype=np.int64), [], {SampleBatch.VF_PREDS: 0.5 * obs[:, 0]}

    def value(self, obs):
        return 0.5 * np.asarray(obs)[:, 0]

    def postprocess_trajectory(self, batch, other_agent_batches=None, episode=None):
        return postprocess_ppo_gae(self, batch)

    def get_weights(self):
        return {}

    def set_weights(self, weights):
        pass


def gae_by_definition(rewards, values, last_value):
    """A_t = sum_l (gamma lambda)^l delta_{t+l}, written as the explicit double sum."""
    v = list(values) + [last_value]
    deltas = [rewards[t] + GAMMA * v[t + 1] - v[t] for t in range(len(rewards))]
    n = len(rewards)
    return [sum((GAMMA * LAMBDA) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]


def sample(batch_mode, fragment):
    config = {"gamma": GAMMA, "lambda": LAMBDA, "use_gae": True}
    worker = RolloutWorker(
        make_env, HalfObsValuePolicy, policy_config=config, sample_batch_size=fragment, batch_mode=batch_mode
    )
    return worker.sample()


def test_terminated_and_truncated_episodes():
    batch = sample("complete_episodes", 7)
    episodes = batch.split_by_episode()
    assert [e.count for e in episodes] == [3, 4]
    terminated, truncated = episodes

    assert terminated[SampleBatch.TERMINATEDS].tolist() == [False, False, True]
    assert not terminated[SampleBatch.TRUNCATEDS].any()
    rewards, values = [1.0, 2.0, 3.0], [0.0, 0.5, 1.0]
    # Termination: the value after the last step is 0.
    expected = gae_by_definition(rewards, values, 0.0)
    np.testing.assert_allclose(terminated[Postprocessing.ADVANTAGES], expected, rtol=1e-6)

    assert truncated[SampleBatch.TRUNCATEDS].tolist() == [False, False, False, True]
    assert not truncated[SampleBatch.TERMINATEDS].any()
    rewards, values = [1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0, 1.5]
    # Time-limit truncation: bootstrap from V(final observation) = 0.5 * 4.
    expected = gae_by_definition(rewards, values, 2.0)
    np.testing.assert_allclose(truncated[Postprocessing.ADVANTAGES], expected, rtol=1e-6)
    np.testing.assert_allclose(
        truncated[Postprocessing.VALUE_TARGETS], np.array(expected) + np.array(values), rtol=1e-6
    )
    # Hand check of one number: delta_3 = 4 + 0.9 * 2 - 1.5 = 4.3 is the last advantage.
    assert truncated[Postprocessing.ADVANTAGES][-1] == pytest.approx(4.3)


def test_fragment_cut_bootstraps_from_next_observation():
    batch = sample("truncate_episodes", 2)
    first, second = batch.split_by_episode()[0], batch.slice(0, 2)
    assert first.count == 2 and second.count == 2
    # Cut after step 2 of episode 0: not terminal, so bootstrap from V(obs=2) = 1.0.
    expected = gae_by_definition([1.0, 2.0], [0.0, 0.5], 1.0)
    np.testing.assert_allclose(first[Postprocessing.ADVANTAGES], expected, rtol=1e-6)


def test_discounted_returns_without_gae():
    batch = SampleBatch({SampleBatch.REWARDS: np.array([1.0, 0.0, 2.0])})
    compute_advantages(batch, last_r=10.0, gamma=0.5, use_gae=False)
    # R_2 = 2 + 0.5 * 10 = 7; R_1 = 0 + 0.5 * 7 = 3.5; R_0 = 1 + 0.5 * 3.5 = 2.75
    np.testing.assert_allclose(batch[Postprocessing.ADVANTAGES], [2.75, 3.5, 7.0])
    np.testing.assert_allclose(discount_cumsum(np.array([1.0, 1.0, 1.0]), 0.5), [1.75, 1.5, 1.0])
