"""The seeds' code examples, with only imports and environment names changed."""

import time

import gymnasium as gym
import numpy as np
import pytest
import ray

from relayrl import Policy, PolicyEvaluator, SampleBatch
from relayrl.optimizers import AsyncSamplesOptimizer, SyncSamplesOptimizer


# --- seed 001: a policy written from scratch ------------------------------------------------------------------
class CustomPolicy(Policy):
    """Example of a custom policy written from scratch.

    You might find it more convenient to extend TF/TorchPolicy instead
    for a real policy.
    """

    def __init__(self, observation_space, action_space, config):
        Policy.__init__(self, observation_space, action_space, config)
        # example parameter
        self.w = 1.0

    def compute_actions(
        self,
        obs_batch,
        state_batches,
        prev_action_batch=None,
        prev_reward_batch=None,
        info_batch=None,
        episodes=None,
        **kwargs,
    ):
        # return action batch, RNN states, extra values to include in batch
        return [self.action_space.sample() for _ in obs_batch], [], {}

    def learn_on_batch(self, samples):
        # implement your learning code here
        self.w += 1.0  # (test addition: count the learning steps)
        return {}  # return stats

    def get_weights(self):
        return {"w": self.w}

    def set_weights(self, weights):
        self.w = weights["w"]


def test_seed_001_policy_evaluation_loop(ray_session):
    # Setup policy and remote policy evaluation actors
    env = gym.make("CartPole-v0")
    policy = CustomPolicy(env.observation_space, env.action_space, {})
    remote_evaluators = [
        PolicyEvaluator.as_remote().remote(lambda c: gym.make("CartPole-v0"), CustomPolicy) for _ in range(2)
    ]

    for _ in range(2):
        # Gather a batch of samples
        T1 = SampleBatch.concat_samples(ray.get([w.sample.remote() for w in remote_evaluators]))

        # Improve the policy using the T1 batch
        policy.learn_on_batch(T1)

        # Broadcast weights to the policy evaluation workers
        weights = ray.put({"default_policy": policy.get_weights()})
        for w in remote_evaluators:
            w.set_weights.remote(weights)

    assert T1.count == 2 * 200  # sample_batch_size defaults to 200 steps per evaluator
    assert set(np.unique(T1[SampleBatch.ACTIONS])) <= {0, 1}
    remote_w = ray.get([w.for_policy.remote(lambda p: p.get_weights()) for w in remote_evaluators])
    assert remote_w == [{"w": 3.0}, {"w": 3.0}]


def test_seed_001_with_a_policy_optimizer(ray_session):
    # Same setup as before
    local_evaluator = PolicyEvaluator(lambda c: gym.make("CartPole-v0"), CustomPolicy)
    remote_evaluators = [
        PolicyEvaluator.as_remote().remote(lambda c: gym.make("CartPole-v0"), CustomPolicy) for _ in range(2)
    ]

    optimizer = SyncSamplesOptimizer(local_evaluator, remote_evaluators, train_batch_size=500)

    for _ in range(2):
        optimizer.step()

    assert optimizer.num_steps_sampled >= 1000
    # Each step learned once on the local policy and broadcast its weights before sampling.
    assert local_evaluator.get_weights()["default_policy"] == {"w": 3.0}
    got = optimizer.foreach_evaluator(lambda ev: ev.for_policy(lambda p: p.get_weights()))
    assert got[0] == {"w": 3.0} and got[1:] == [{"w": 2.0}, {"w": 2.0}]
    assert "sample_time_ms" in optimizer.stats()


def test_seed_001_with_the_async_samples_optimizer_as_written(ray_session):
    # seed 001's own lines: "this optimizer implements the IMPALA architecture", with the from-scratch policy
    local_evaluator = PolicyEvaluator(lambda c: gym.make("CartPole-v0"), CustomPolicy)
    remote_evaluators = [
        PolicyEvaluator.as_remote().remote(lambda c: gym.make("CartPole-v0"), CustomPolicy) for _ in range(2)
    ]
    optimizer = AsyncSamplesOptimizer(local_evaluator, remote_evaluators, train_batch_size=500)
    try:
        deadline = time.monotonic() + 60
        while optimizer.num_steps_trained < 1000 and time.monotonic() < deadline:
            optimizer.step()
        assert optimizer.num_steps_trained >= 1000
        assert local_evaluator.get_weights()["default_policy"]["w"] >= 3.0  # learn_on_batch ran on each train batch
    finally:
        optimizer.stop()


def test_seed_003_async_gradients_optimizer_on_a_bare_worker_set(ray_session):
    # seed 003: AsyncGradientsOptimizer(workers, grads_per_step), the workers made without a trainer's config
    from relayrl import WorkerSet
    from relayrl.agents.pg import PGTorchPolicy
    from relayrl.optimizers import AsyncGradientsOptimizer

    workers = WorkerSet(lambda c: gym.make("CartPole-v1"), PGTorchPolicy, num_workers=2)
    try:
        optimizer = AsyncGradientsOptimizer(workers, grads_per_step=4)
        optimizer.step()
        assert optimizer.num_steps_sampled >= 4 * 200
        hidden = workers.foreach_worker(lambda w: w.policy_map["default_policy"].config["model"]["fcnet_hiddens"])
        assert hidden == [[256, 256]] * 3  # the model defaults, on the remote workers too
    finally:
        workers.stop()


def test_seed_001_local_only_optimizer_no_ray_needed():
    local = PolicyEvaluator(lambda c: gym.make("CartPole-v0"), CustomPolicy, batch_steps=50)
    optimizer = SyncSamplesOptimizer.make(
        lambda c: gym.make("CartPole-v0"), CustomPolicy, num_workers=0, optimizer_config={"train_batch_size": 100}
    )
    optimizer.step()
    assert optimizer.num_steps_sampled >= 100
    assert local.sample().count == 50


# --- seed 002: the Python API ---------------------------------------------------------------------------------
def test_seed_002_agent_api(tmp_path):
    import relayrl.agents.ppo as ppo

    config = ppo.DEFAULT_CONFIG.copy()
    config["num_gpus"] = 0
    config["num_workers"] = 0
    config["train_batch_size"] = 400
    config["sgd_minibatch_size"] = 64
    config["num_sgd_iter"] = 2
    agent = ppo.PPOAgent(config=config, env="CartPole-v0")
    result = agent.train()
    assert result["training_iteration"] == 1 and result["timesteps_total"] >= 400
    checkpoint = agent.save(str(tmp_path))
    agent.restore(checkpoint)
    # Get weights of the local policy
    w1 = agent.local_evaluator.policy_map["default"].get_weights()
    # Same as above
    w2 = agent.local_evaluator.for_policy(lambda p: p.get_weights())
    # Get list of weights of each evaluator, including remote replicas
    w3 = agent.optimizer.foreach_evaluator(lambda ev: ev.for_policy(lambda p: p.get_weights()))
    w4 = agent.optimizer.foreach_evaluator_with_index(lambda ev, i: ev.for_policy(lambda p: p.get_weights()))
    for w in (w2, w3[0], w4[0]):
        assert all(np.array_equal(w1[k], w[k]) for k in w1)


def test_seed_001_custom_policy_with_prioritized_replay_gets_a_clear_error():
    from relayrl.optimizers import SyncReplayOptimizer

    local_evaluator = PolicyEvaluator(lambda c: gym.make("CartPole-v0"), CustomPolicy, batch_steps=50)
    optimizer = SyncReplayOptimizer(
        local_evaluator, [], learning_starts=50, buffer_size=1000, train_batch_size=32, prioritized_replay=True
    )
    with pytest.raises(ValueError, match="learn_on_batch returned no 'td_error'.*prioritized_replay: False"):
        for _ in range(3):
            optimizer.step()
    uniform = SyncReplayOptimizer(
        local_evaluator, [], learning_starts=50, buffer_size=1000, train_batch_size=32, prioritized_replay=False
    )
    for _ in range(3):
        uniform.step()
    assert uniform.num_steps_trained >= 32
