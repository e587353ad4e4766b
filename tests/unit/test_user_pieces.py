"""A user's own pieces as RLlib-era code writes them: numpy numbers in a config, a MultiBinary observation space, a
preprocessor with the 0.7 ``_init_shape(obs_space, options)`` signature, ``episode.last_raw_obs_for`` in a
callback, and ``compute_action`` acting in the env's bounds like the sampler does."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from relayrl.agents.pg import PGTrainer
from relayrl.agents.ppo import PPOTorchPolicy, PPOTrainer
from relayrl.models import ModelCatalog, Preprocessor

SMALL = {"num_workers": 0, "train_batch_size": 64, "sample_batch_size": 32, "seed": 0}


class NarrowBoxEnv(gym.Env):
    """Box actions in [-0.1, 0.1]: a fresh Gaussian policy (std 1) samples far outside them."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(3, np.float32), -float(np.sum(np.square(action))), False, self.t >= 20, {}


class BitsEnv(gym.Env):
    """MultiBinary observations; reward 1 for action == the first bit."""

    observation_space = gym.spaces.MultiBinary(5)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.obs = 0, self.np_random.integers(0, 2, 5).astype(np.int8)
        return self.obs, {}

    def step(self, action):
        self.t += 1
        reward = float(int(action) == int(self.obs[0]))
        self.obs = self.np_random.integers(0, 2, 5).astype(np.int8)
        return self.obs, reward, False, self.t >= 10, {}


@pytest.mark.parametrize("clip", [True, False])
def test_compute_action_clips_box_actions_to_their_bounds_when_clip_actions(clip):
    trainer = PGTrainer(env=NarrowBoxEnv, config={**SMALL, "clip_actions": clip})
    try:
        actions = np.array([trainer.compute_action(np.zeros(3, np.float32), explore=True) for _ in range(50)])
        inside = np.all(np.abs(actions) <= 0.1 + 1e-7)
        assert inside if clip else not inside
    finally:
        trainer.stop()


def test_numpy_numbers_in_a_config_are_taken_and_the_config_stays_json():
    config = {
        **SMALL,
        "train_batch_size": np.int64(64),
        "lr": np.float32(1e-3),
        "sgd_minibatch_size": np.arange(32, 33)[0],
        "num_sgd_iter": np.int32(2),
        "model": {"fcnet_hiddens": [np.int64(16), np.int64(16)]},
    }
    trainer = PPOTrainer(env="CartPole-v1", config=config)
    try:
        assert type(trainer.config["train_batch_size"]) is int and type(trainer.config["lr"]) is float
        assert trainer.config["model"]["fcnet_hiddens"] == [16, 16]
        json.dumps(trainer.config, default=lambda x: None)  # params.json and checkpoint manifests
        assert trainer.train()["info"]["num_steps_trained"] >= 64
    finally:
        trainer.stop()


def test_multibinary_observations_train_and_act():
    trainer = PPOTrainer(env=BitsEnv, config={**SMALL, "sgd_minibatch_size": 32, "num_sgd_iter": 2})
    try:
        result = trainer.train()
        assert result["timesteps_total"] >= 64
        assert trainer.workers.local_worker().sample()["obs"].shape[1:] == (5,)
        assert trainer.compute_action(np.array([1, 0, 1, 1, 0], np.int8)) in (0, 1)
    finally:
        trainer.stop()


class SquaresPreprocessor(Preprocessor):
    """RLlib 0.7's custom preprocessor: ``_init_shape`` takes the space and the options."""

    def _init_shape(self, obs_space, options):
        return (2 * obs_space.shape[0],)

    def transform(self, observation):
        o = np.asarray(observation, np.float32)
        return np.concatenate([o, o**2])


def test_a_preprocessor_with_the_0_7_init_shape_signature():
    ModelCatalog.register_custom_preprocessor("squares_0_7", SquaresPreprocessor)
    trainer = PGTrainer(env="CartPole-v1", config={**SMALL, "model": {"custom_preprocessor": "squares_0_7"}})
    try:
        trainer.train()
        assert trainer.workers.local_worker().sample()["obs"].shape[1:] == (8,)
        assert trainer.compute_action(np.zeros(4, np.float32)) in (0, 1)
    finally:
        trainer.stop()


def test_last_raw_obs_for_in_a_callback_is_the_env_observation():
    seen = []
    callbacks = {"on_episode_step": lambda info: seen.append(info["episode"].last_raw_obs_for())}
    trainer = PGTrainer(env=BitsEnv, config={**SMALL, "callbacks": callbacks})
    try:
        trainer.workers.local_worker().sample()
        assert seen and all(o.dtype == np.int8 and o.shape == (5,) for o in seen)
    finally:
        trainer.stop()


def test_an_env_class_is_made_with_its_config_or_with_nothing_else_a_clear_error():
    from relayrl.env.registry import EnvContext, get_env_creator

    class WithConfig(BitsEnv):
        def __init__(self, config):
            self.config = config

    class TwoArguments(BitsEnv):
        def __init__(self, config, other):
            pass

    assert isinstance(get_env_creator(BitsEnv)(EnvContext({})), BitsEnv)
    assert get_env_creator(WithConfig)(EnvContext({"size": 3})).config == {"size": 3}
    with pytest.raises(ValueError, match=r"env class TwoArguments cannot be made: its constructor"):
        get_env_creator(TwoArguments)


def test_rllib_0_7_names_collect_metrics_sample_batch_size_and_policy_graphs():
    from relayrl.evaluation import RolloutWorker, collect_metrics

    worker = RolloutWorker(lambda ctx: gym.make("CartPole-v1"), PPOTorchPolicy, batch_steps=100)
    assert worker.sample_batch_size == 100
    for _ in range(3):  # 300 steps of a fresh policy: CartPole episodes end
        worker.sample()
    result = collect_metrics(worker)
    assert result["episodes_this_iter"] >= 1 and result["episode_reward_mean"] > 0

    policies = {"p0": (None, None, None, {}), "p1": (None, None, None, {})}
    config = {**SMALL, "multiagent": {"policy_graphs": policies, "policy_mapping_fn": lambda agent: f"p{agent}"}}
    trainer = PPOTrainer(env="multi_agent:CartPole-v1", config={**config, "sgd_minibatch_size": 32})
    try:
        assert sorted(trainer.workers.local_worker().policy_map) == ["p0", "p1"]
    finally:
        trainer.stop()
    with pytest.raises(ValueError, match="both multiagent.policy_graphs and its new name policies"):
        PPOTrainer(env="multi_agent:CartPole-v1", config={"multiagent": {"policy_graphs": {}, "policies": {}}})


def test_a_vector_env_with_rllib_0_7_signatures_is_a_clear_error():
    from relayrl.env import VectorEnv
    from relayrl.evaluation import RolloutWorker

    class OldVectorEnv(VectorEnv):
        def __init__(self):
            super().__init__(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2), 2)

        def vector_reset(self):  # RLlib 0.7: no seeds
            return [np.zeros(2, np.float32)] * 2

        def reset_at(self, index):
            return np.zeros(2, np.float32)

    with pytest.raises(TypeError, match=r"OldVectorEnv.vector_reset\(\) cannot take what the sampler passes"):
        RolloutWorker(lambda ctx: OldVectorEnv(), PPOTorchPolicy).sample()


def test_a_multibinary_leaf_of_a_dict_observation_is_flattened_and_restored_with_its_shape():
    from relayrl.models.preprocessors import get_preprocessor, restore_original_dimensions

    space = gym.spaces.Dict({"bits": gym.spaces.MultiBinary((2, 3)), "x": gym.spaces.Box(-1, 1, (2,), np.float32)})
    prep = get_preprocessor(space)(space)
    obs = space.sample()
    flat = prep.transform(obs)
    assert flat.shape == (8,) and prep.observation_space.shape == (8,)
    restored = restore_original_dimensions(flat[None], prep.observation_space)
    np.testing.assert_array_equal(restored["bits"][0], obs["bits"].astype(np.float32))
    np.testing.assert_array_equal(restored["x"][0], obs["x"])
