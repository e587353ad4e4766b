"""RLlib 0.6-0.8-era code calling the worker as it did then: ``PolicyEvaluator(env_creator, policy_graph=...)``, its
filters by the id "default", ``sample_batch_size`` as the steps of one ``sample()``, the 0.8 names
(``rollout_fragment_length``, ``framework``, ``compute_advantages(use_critic=...)``, ``soft_horizon=False``), an env
registered with Tune before ``ray.init`` and an RLlib 0.7-API multi-agent env (adapted)."""

from __future__ import annotations

import random
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from relayrl.agents.pg import PGTrainer
from relayrl.env import MultiAgentEnv
from relayrl.evaluation import PolicyEvaluator, RolloutWorker, compute_advantages
from relayrl.policy import Policy, SampleBatch


class RandomPolicy(Policy):
    """Acts at random; postprocesses with Monte-Carlo advantages (RLlib 0.6 tests' mock policy graph)."""

    def compute_actions(self, obs_batch, state_batches=None, prev_action_batch=None, prev_reward_batch=None,
                        episodes=None, **kwargs):  # fmt: skip
        return [random.choice([0, 1]) for _ in obs_batch], [], {}

    def postprocess_trajectory(self, batch, other_agent_batches=None, episode=None):
        assert episode is not None
        return compute_advantages(batch, 100.0, 0.9, use_gae=False)

    def get_weights(self):
        return {}

    def set_weights(self, weights):
        pass


def cartpole(ctx):
    return gym.make("CartPole-v1")


def test_policy_graph_keyword_and_the_rllib_batch_columns():
    worker = PolicyEvaluator(env_creator=cartpole, policy_graph=RandomPolicy, batch_steps=50)
    batch = worker.sample()
    for key in ("obs", "actions", "rewards", "dones", "advantages", "prev_rewards", "prev_actions"):
        assert np.abs(np.mean(batch[key])) > 0, key
    assert batch["advantages"][0] > 1
    with pytest.raises(TypeError, match="takes one policy"):
        RolloutWorker(cartpole, RandomPolicy, policy_graph=RandomPolicy)
    with pytest.raises(TypeError, match="takes one policy"):
        RolloutWorker(cartpole)


def test_filters_answer_to_the_id_default_and_rs_n_is_settable():
    worker = RolloutWorker(cartpole, RandomPolicy, observation_filter="MeanStdFilter", sample_batch_size=20)
    worker.sample()
    filters = worker.get_filters(flush_after=True)
    obs_filter = filters["default"]
    assert obs_filter.rs.n >= 20 and obs_filter is filters["default_policy"]  # steps and reset observations
    new = obs_filter.copy()
    new.rs._n = 100
    assert new.rs.n == 100
    worker.sync_filters({"default": new})
    assert worker.get_filters()["default"].rs.n >= 100


def test_sample_batch_size_counts_the_steps_of_one_sample_over_all_sub_envs():
    worker = RolloutWorker(cartpole, RandomPolicy, rollout_fragment_length=5, num_envs=2)
    assert worker.sample_batch_size == worker.rollout_fragment_length == 10
    assert worker.sample().count == 10
    assert worker.async_env.vector_env.envs == worker.foreach_env(lambda env: env)


def test_rllib_08_names_in_configs_and_keywords():
    trainer = PGTrainer(env="CartPole-v1", config={"framework": "torch", "rollout_fragment_length": 25,
                                                   "train_batch_size": 50, "num_workers": 0})  # fmt: skip
    try:
        assert trainer.config["sample_batch_size"] == 25 and "framework" not in trainer.config
        assert trainer.train()["timesteps_this_iter"] == 50
    finally:
        trainer.stop()
    RolloutWorker(cartpole, RandomPolicy, soft_horizon=False)  # what horizon does here
    with pytest.raises(ValueError, match="soft_horizon=True is not supported"):
        RolloutWorker(cartpole, RandomPolicy, soft_horizon=True)


def test_compute_advantages_without_the_critic_ignores_vf_preds():
    batch = SampleBatch({"rewards": np.ones(3), "vf_preds": np.full(3, 5.0, np.float32),
                         "dones": np.array([False, False, True])})  # fmt: skip
    with_critic = compute_advantages(batch.copy(), 0.0, 0.5, use_gae=False)
    without = compute_advantages(batch.copy(), 0.0, 0.5, use_gae=False, use_critic=False)
    np.testing.assert_allclose(without["advantages"], [1.75, 1.5, 1.0])
    np.testing.assert_allclose(with_critic["advantages"], [-3.25, -3.5, -4.0])


TUNE_REGISTERED = """
import gymnasium as gym, ray
from ray.tune.registry import register_env
from relayrl.agents.pg import PGTrainer

assert not ray.is_initialized()
register_env("rllib_era_tune_env", lambda config: gym.make("CartPole-v1"))
trainer = PGTrainer(env="rllib_era_tune_env", config={"num_workers": 0, "train_batch_size": 50})
print("steps", trainer.train()["timesteps_this_iter"])
trainer.stop()
"""


def test_an_env_registered_with_tune_before_ray_init_is_found():
    out = subprocess.run([sys.executable, "-c", TUNE_REGISTERED], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split("steps")[-1]) >= 50


class OldMultiAgent(MultiAgentEnv):
    """RLlib 0.6's multi-agent API: reset() without a seed returns the observation dict alone; step() returns
    (obs, rewards, dones, infos). Agent "b" leaves after 2 steps, the episode ends after ``length``."""

    observation_space = gym.spaces.Discrete(10)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length=4):
        self.length, self.seeds = length, []

    def seed(self, n=None):
        self.seeds.append(n)

    def reset(self):
        self.t = 0
        return {"a": 0, "b": 0}

    def step(self, actions):
        self.t += 1
        obs = {"a": self.t} if self.t > 2 else {"a": self.t, "b": self.t}
        dones = {"__all__": self.t >= self.length, **({"b": True} if self.t == 2 else {})}
        return obs, dict.fromkeys(obs, 1.0), dones, dict.fromkeys(obs, {})


def test_an_old_api_multi_agent_env_is_adapted_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        worker = RolloutWorker(lambda ctx: OldMultiAgent(), RandomPolicy, seed=7, sample_batch_size=8)
        batch = worker.sample()
    assert "OldMultiAgent has RLlib 0.7's MultiAgentEnv API" in caplog.text
    assert batch.count == 8  # env steps: two episodes of 4
    rows = batch.policy_batches["default_policy"]
    assert rows.count == 8 + 4  # "a" acts 4 times per episode, "b" twice
    assert rows[SampleBatch.TERMINATEDS].sum() == 4 and not rows[SampleBatch.TRUNCATEDS].any()
    assert worker.foreach_env(lambda env: env.seeds) == [[7]]
