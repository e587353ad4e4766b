"""Nested (Dict / Tuple) observation and action spaces, UnsupportedSpaceException, images of any size."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from relayrl.models import (
    ModelCatalog,
    MultiActionDistribution,
    TorchModel,
    UnsupportedSpaceException,
    flatten_action,
    restore_original_dimensions,
    unflatten_action,
)
from relayrl.models.action_dist import Categorical, DiagGaussian
from relayrl.models.preprocessors import get_preprocessor

# --- environments -----------------------------------------------------------------------------------------------
DICT_OBS_SPACE = gym.spaces.Dict(
    {
        "sensors": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
        "mode": gym.spaces.Discrete(2),
        "inner": gym.spaces.Tuple((gym.spaces.Box(0.0, 1.0, (2, 2), np.float32), gym.spaces.MultiDiscrete([2, 3]))),
    }
)


class DictObsEnv(gym.Env):
    """Dict observations (one nested Tuple inside); reward 1 for action == mode."""

    observation_space = DICT_OBS_SPACE
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config=None):
        self.t = 0

    def _obs(self):
        return self.observation_space.sample()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self.t = 0
        self.last = self._obs()
        return self.last, {}

    def step(self, action):
        assert self.action_space.contains(action), action
        reward = float(int(action) == int(self.last["mode"]))
        self.t += 1
        self.last = self._obs()
        return self.last, reward, self.t >= 10, False, {}


class BitAndTargetEnv(gym.Env):
    """Tuple(Discrete(2), Box(-1, 1, (2,))) actions: each step pays [a0 == the bit in the observation] plus
    clip(1 - mean|a1 - 0.5|, 0, 1); 10 steps an episode, so the best return is 20. A uniform choice of a0 earns 5
    and N(0, 1) values of a1 (clipped to the bounds) about 3."""

    observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(-1.0, 1.0, (2,), np.float32)))

    def __init__(self, config=None):
        self.rng = np.random.default_rng(0)
        self.t, self.bit = 0, 0

    def _obs(self):
        self.bit = int(self.rng.integers(2))
        return np.eye(2, dtype=np.float32)[self.bit]

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        assert isinstance(action, tuple) and self.action_space.contains(action), action
        a0, a1 = action
        reward = float(int(a0) == self.bit) + float(np.clip(1.0 - np.abs(a1 - 0.5).mean(), 0.0, 1.0))
        self.t += 1
        return self._obs(), reward, self.t >= 10, False, {}


DICT_ACTION_SPACE = gym.spaces.Dict(
    {
        "move": gym.spaces.Discrete(3),
        "force": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
        "grid": gym.spaces.MultiDiscrete([2, 3]),
    }
)


class DictActionEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = DICT_ACTION_SPACE

    def __init__(self, config=None):
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action):
        assert isinstance(action, dict) and self.action_space.contains(action), action
        self.t += 1
        reward = float(action["move"] == 1) - float(np.abs(action["force"]).sum()) + float(action["grid"][1] == 2)
        return np.full(4, 0.1 * self.t, np.float32), reward, self.t >= 8, False, {}


class ImageEnv(gym.Env):
    """Raw 210x160x3 uint8 frames, as ALE gives them without the DeepMind wrappers."""

    observation_space = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, config=None):
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros((210, 160, 3), np.uint8), {}

    def step(self, action):
        self.t += 1
        frame = np.full((210, 160, 3), (self.t * 20) % 256, np.uint8)
        return frame, float(action == 1), self.t >= 16, False, {}


class SpaceEnv(gym.Env):
    """An env with given spaces (for the unsupported-space checks)."""

    def __init__(self, config):
        self.observation_space = config["obs"]
        self.action_space = config["act"]

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


# --- a custom model reading the structure ---------------------------------------------------------------------
class SensorModel(TorchModel):
    """Reads input_dict["obs"]["sensors"] etc., checks every leaf's shape against the batch of obs_flat, and
    records the batch sizes it saw (sampling: num_envs rows; learning: minibatches)."""

    seen: list = []

    def __init__(self, obs_space, action_space, num_outputs, model_config, name):
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        self.net = nn.Linear(3 + 2 + 4 + 5, 16)
        self.logits = nn.Linear(16, num_outputs)
        self.value = nn.Linear(16, 1)
        self._h = None

    def forward(self, input_dict, state, seq_lens):
        obs, flat = input_dict["obs"], input_dict["obs_flat"]
        n = flat.shape[0]
        assert flat.shape == (n, 14), flat.shape
        assert set(obs) == {"sensors", "mode", "inner"}
        assert obs["sensors"].shape == (n, 3) and isinstance(obs["sensors"], torch.Tensor)
        assert obs["mode"].shape == (n, 2)  # Discrete leaves arrive one-hot
        box, multi = obs["inner"]
        assert box.shape == (n, 2, 2) and multi.shape == (n, 5)
        SensorModel.seen.append(n)
        x = torch.cat([obs["sensors"], obs["mode"], box.flatten(1), multi], dim=-1)
        self._h = torch.tanh(self.net(x))
        return self.logits(self._h), state

    def value_function(self):
        return self.value(self._h).squeeze(-1)


# --- unit tests: layouts ---------------------------------------------------------------------------------------------
def test_flat_obs_and_structure_round_trip_by_hand():
    obs = {
        "sensors": np.array([0.5, -0.25, 1.0], np.float32),
        "mode": 1,
        "inner": (np.array([[0.1, 0.2], [0.3, 0.4]], np.float32), np.array([1, 2])),
    }
    prep = get_preprocessor(DICT_OBS_SPACE)(DICT_OBS_SPACE)
    flat = prep.transform(obs)
    # Keys sorted: inner (Box 2x2 raveled, MultiDiscrete one-hot [2]+[3]), mode (one-hot), sensors.
    expected = np.array([0.1, 0.2, 0.3, 0.4, 0, 1, 0, 0, 1, 0, 1, 0.5, -0.25, 1.0], np.float32)
    np.testing.assert_array_equal(flat, expected)
    assert prep.observation_space.original_space is DICT_OBS_SPACE

    batch = np.stack([expected, expected * 2])
    for as_tensor in (False, True):
        x = torch.from_numpy(batch) if as_tensor else batch
        out = restore_original_dimensions(x, prep.observation_space)
        assert sorted(out) == ["inner", "mode", "sensors"]
        get = (lambda t: t.numpy()) if as_tensor else (lambda t: t)
        np.testing.assert_array_equal(get(out["sensors"]), batch[:, 11:])
        np.testing.assert_array_equal(get(out["mode"]), [[0, 1], [0, 2]])
        box, multi = out["inner"]
        np.testing.assert_array_equal(get(box)[0], np.array([[0.1, 0.2], [0.3, 0.4]], np.float32))
        assert get(box).shape == (2, 2, 2)
        np.testing.assert_array_equal(get(multi)[0], [0, 1, 0, 0, 1])
    # The original space itself works too, and a flat space is left alone.
    assert restore_original_dimensions(batch, DICT_OBS_SPACE)["sensors"].shape == (2, 3)
    assert restore_original_dimensions(batch, gym.spaces.Box(-1, 1, (14,))) is batch


def test_flat_action_round_trip_by_hand():
    space = gym.spaces.Dict(
        {
            "b": gym.spaces.Tuple((gym.spaces.Discrete(3, start=1), gym.spaces.Box(-1, 1, (2,), np.float32))),
            "a": gym.spaces.MultiDiscrete([2, 4]),
        }
    )
    action = {"b": (np.int64(3), np.array([0.5, -2.0], np.float32)), "a": np.array([1, 3])}
    row = flatten_action(action, space)
    np.testing.assert_array_equal(row, [1, 3, 2, 0.5, -2.0])  # a, then b: Discrete index (start 1), Box
    back = unflatten_action(row, space)
    assert isinstance(back, dict) and isinstance(back["b"], tuple)
    assert back["b"][0] == 3 and isinstance(back["b"][0], np.integer)
    np.testing.assert_array_equal(back["a"], [1, 3])
    np.testing.assert_array_equal(back["b"][1], [0.5, -2.0])
    clipped = unflatten_action(row, space, clip=True)
    np.testing.assert_array_equal(clipped["b"][1], np.array([0.5, -1.0], np.float32))
    assert space.contains(clipped)


def test_multi_action_distribution_sums_its_leaves():
    space = gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (2,), np.float32)))
    dist_class, n = ModelCatalog.get_action_dist(space, {})
    assert issubclass(dist_class, MultiActionDistribution) and n == 3 + 4
    torch.manual_seed(0)
    inputs, other_inputs = torch.randn(6, n), torch.randn(6, n)
    dist, other = dist_class(inputs), dist_class(other_inputs)
    actions = dist.sample()
    assert actions.shape == (6, 3) and actions.dtype == torch.float32
    cat, gauss = Categorical(inputs[:, :3]), DiagGaussian(inputs[:, 3:])
    cat2, gauss2 = Categorical(other_inputs[:, :3]), DiagGaussian(other_inputs[:, 3:])
    torch.testing.assert_close(dist.logp(actions), cat.logp(actions[:, 0]) + gauss.logp(actions[:, 1:]))
    torch.testing.assert_close(dist.entropy(), cat.entropy() + gauss.entropy())
    torch.testing.assert_close(dist.kl(other), cat.kl(cat2) + gauss.kl(gauss2))
    # The numpy fast path samples the same layout and agrees on the log-likelihood.
    rng = np.random.default_rng(0)
    np_actions = dist_class.numpy_sample(inputs.numpy(), rng, True)
    assert np_actions.shape == (6, 3) and set(np.unique(np_actions[:, 0])) <= {0.0, 1.0, 2.0}
    np.testing.assert_allclose(
        dist_class.numpy_logp(inputs.numpy(), np_actions),
        dist.logp(torch.from_numpy(np_actions)).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )
    mode = dist_class.numpy_sample(inputs.numpy(), rng, False)
    np.testing.assert_array_equal(mode, dist.deterministic_sample().numpy())


# --- training ----------------------------------------------------------------------------------------------------
def test_dict_obs_custom_model_vectorised_ppo():
    from relayrl.agents.ppo import PPOTrainer

    SensorModel.seen = []
    trainer = PPOTrainer(
        env=DictObsEnv,
        config={
            "num_workers": 0,
            "num_envs_per_worker": 4,
            "sample_batch_size": 16,
            "train_batch_size": 64,
            "sgd_minibatch_size": 32,
            "num_sgd_iter": 1,
            "seed": 0,
            "model": {"custom_model": SensorModel},
        },
    )
    try:
        result = trainer.train()
        assert result["timesteps_total"] >= 64
        assert 4 in SensorModel.seen  # batched inference over the 4 sub-envs
        assert 32 in SensorModel.seen  # learner minibatches, restored from the flat obs column
        batch = trainer.workers.local_worker().sample()
        assert batch["obs"].shape[1:] == (14,)  # the batch stores the flattened observations
        assert trainer.compute_action(DICT_OBS_SPACE.sample()) in (0, 1)
    finally:
        trainer.stop()


@pytest.mark.parametrize("run", ["PG", "A2C", "IMPALA"])
def test_dict_actions_one_iteration(run):
    from relayrl import get_trainer_class

    trainer = get_trainer_class(run)(
        env=DictActionEnv,
        config={
            "num_workers": 0,
            "sample_batch_size": 16,
            "train_batch_size": 32,
            "seed": 0,
            "min_iter_time_s": 0,
            "model": {"fcnet_hiddens": [16]},
        },
    )
    try:
        for _ in range(10):  # IMPALA's iteration may end before its learner took the first train batch
            result = trainer.train()
            if result["info"]["num_steps_trained"] >= 32:
                break
        assert result["info"]["num_steps_trained"] >= 32 and result["episodes_total"] >= 1
        assert np.isfinite(result["info"]["learner"]["default_policy"]["policy_loss"])
        action = trainer.compute_action(np.zeros(4, np.float32))
        assert isinstance(action, dict) and sorted(action) == ["force", "grid", "move"]
        assert DICT_ACTION_SPACE["move"].contains(action["move"])
        assert DICT_ACTION_SPACE["grid"].contains(action["grid"])
    finally:
        trainer.stop()


def test_tuple_actions_ppo_learns():
    """PPO learns both the Discrete and the Box part: the threshold (16 of 20) is out of reach of a random policy
    (about 8), of one that learns only the Discrete part (10 + about 2) and of one that learns only the Box part
    (5 + 10). Seed 1 passes 16 after about 10k steps (seeds 2 and 3 after about 11k)."""
    from relayrl.agents.ppo import PPOTrainer

    trainer = PPOTrainer(
        env=BitAndTargetEnv,
        config={
            "num_workers": 0,
            "num_envs_per_worker": 4,
            "sample_batch_size": 50,
            "train_batch_size": 800,
            "sgd_minibatch_size": 100,
            "num_sgd_iter": 8,
            "lr": 3e-3,
            "gamma": 0.5,
            "seed": 1,
            "observation_filter": "NoFilter",
            "model": {"fcnet_hiddens": [32, 32]},
        },
    )
    try:
        assert trainer.get_policy()._fast_path  # the numpy sampling path covers the multi-action distribution
        first = trainer.train()["episode_reward_mean"]
        assert first < 10
        best = first
        for _ in range(29):  # at most 24k steps
            best = max(best, trainer.train()["episode_reward_mean"])
            if best >= 16:
                break
        assert best >= 16, best
        a0, a1 = trainer.compute_action(np.array([0.0, 1.0], np.float32), explore=False)
        assert int(a0) == 1 and np.all(np.abs(np.clip(a1, -1, 1) - 0.5) < 0.5)
    finally:
        trainer.stop()


def test_raw_image_observations_ppo_default_model():
    from relayrl.agents.ppo import PPOTrainer
    from relayrl.models.visionnet import VisionNetwork

    trainer = PPOTrainer(
        env=ImageEnv,
        config={
            "num_workers": 0,
            "sample_batch_size": 32,
            "train_batch_size": 32,
            "sgd_minibatch_size": 16,
            "num_sgd_iter": 1,
            "seed": 0,
            "observation_filter": "NoFilter",
        },
    )
    try:
        model = trainer.get_policy().model
        assert isinstance(model, VisionNetwork) and model.num_features == 256
        result = trainer.train()
        assert result["timesteps_total"] >= 32
        assert np.isfinite(result["info"]["learner"]["default_policy"]["policy_loss"])
    finally:
        trainer.stop()


@pytest.mark.parametrize("shape", [(100, 80, 1), (210, 160, 3), (20, 300, 3)])
def test_vision_network_any_image_size(shape):
    from relayrl.models.visionnet import VisionNetwork

    space = gym.spaces.Box(0, 255, shape, np.uint8)
    model = VisionNetwork(space, gym.spaces.Discrete(4), 4, {}, "m")
    out, _ = model({"obs": torch.zeros(2, *shape)}, [], None)
    assert out.shape == (2, 4) and model.value_function().shape == (2,)
    assert sum(p.numel() for p in model.parameters()) < 1_010_000  # no more than the 84x84 network


def test_vision_network_84x84_unchanged():
    from relayrl.models.visionnet import VisionNetwork

    model = VisionNetwork(gym.spaces.Box(0, 255, (84, 84, 4), np.uint8), gym.spaces.Discrete(6), 6, {}, "m")
    shapes = [tuple(p.shape) for p in model.convs.parameters()]
    assert shapes == [(16, 4, 8, 8), (16,), (32, 16, 4, 4), (32,), (256, 32, 11, 11), (256,)]


def test_cli_rollout_of_tuple_actions(tmp_path):
    """``relayrl rollout`` steps the env with the structured action (Box leaves clipped) and writes it as JSON."""
    import json

    from relayrl import register_env
    from relayrl.agents.ppo import PPOTrainer
    from relayrl.cli import main

    register_env("nested_bit_and_target", lambda config: BitAndTargetEnv(config))
    trainer = PPOTrainer(
        env="nested_bit_and_target",
        config={
            "num_workers": 0,
            "sample_batch_size": 20,
            "train_batch_size": 20,
            "sgd_minibatch_size": 20,
            "num_sgd_iter": 1,
            "seed": 0,
            "model": {"fcnet_hiddens": [8]},
        },
    )
    try:
        trainer.train()
        checkpoint = trainer.save(str(tmp_path / "ckpt"))
    finally:
        trainer.stop()
    out = tmp_path / "episodes.json"
    assert main(["rollout", checkpoint, "--run", "PPO", "--episodes", "1", "--out", str(out)]) == 0
    episode = json.loads(out.read_text().splitlines()[0])
    assert episode["length"] == 10 and len(episode["actions"]) == 10
    a0, a1 = episode["actions"][0]
    assert a0 in (0, 1) and len(a1) == 2


# --- unsupported spaces --------------------------------------------------------------------------------------------
BOX_OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
TUPLE_ACT = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(-1, 1, (2,), np.float32)))


@pytest.mark.parametrize(
    "run, act, message",
    [
        (
            "DQN",
            gym.spaces.Box(-1, 1, (2,), np.float32),
            "DQN does not support the action space Box(-1.0, 1.0, (2,), float32); DQN supports Discrete action spaces",
        ),
        ("DQN", TUPLE_ACT, "DQN does not support the action space Tuple(Discrete(2), Box(-1.0, 1.0, (2,), float32))"),
        (
            "DDPG",
            gym.spaces.Discrete(3),
            "DDPG does not support the action space Discrete(3); DDPG supports Box action",
        ),
        ("TD3", gym.spaces.Discrete(3), "TD3 does not support the action space Discrete(3)"),
        ("APEX", gym.spaces.Box(-1, 1, (2,), np.float32), "APEX does not support the action space Box("),
        ("APEX_DDPG", gym.spaces.Discrete(3), "APEX_DDPG does not support the action space Discrete(3)"),
        ("ES", TUPLE_ACT, "ES does not support the action space Tuple("),
        (
            "ARS",
            gym.spaces.MultiDiscrete([2, 2]),
            "ARS does not support the action space MultiDiscrete([2 2]); ARS supports Discrete, Box action spaces",
        ),
        ("PPO", gym.spaces.MultiBinary(3), "PPO does not support the action space MultiBinary(3)"),
        (
            "PG",
            gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.MultiBinary(2))),
            "PG does not support the action space Tuple(Discrete(2), MultiBinary(2)) (its leaf MultiBinary(2) is not"
            " Discrete, MultiDiscrete or Box)",
        ),
    ],
)
def test_unsupported_space_exception_names_algorithm_and_space(run, act, message):
    from relayrl import get_trainer_class

    # Ape-X needs remote workers in its config; the local worker's policy raises before Ray is started.
    config = {"num_workers": 1 if run.startswith("APEX") else 0, "env_config": {"obs": BOX_OBS, "act": act}}
    if run in ("ES", "ARS"):
        config["noise_size"] = 10_000  # the default table takes seconds to fill
    with pytest.raises(UnsupportedSpaceException) as info:
        get_trainer_class(run)(env=SpaceEnv, config=config)
    assert message in str(info.value)
    assert info.value.algorithm == run and info.value.space == act
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


# --- remote workers ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "run, env, model",
    [
        ("A3C", DictActionEnv, {"fcnet_hiddens": [8]}),  # Dict actions, gradients computed on the remote worker
        ("PPO", DictObsEnv, {"custom_model": SensorModel}),  # the structured obs in a remote worker's sub-envs
    ],
)
def test_nested_spaces_with_a_remote_worker(ray_session, run, env, model):
    from relayrl import get_trainer_class

    trainer = get_trainer_class(run)(
        env=env,
        config={
            "num_workers": 1,
            "num_envs_per_worker": 4,
            "sample_batch_size": 8,
            "train_batch_size": 32,
            "min_iter_time_s": 0,
            "seed": 0,
            "model": model,
            **({"sgd_minibatch_size": 32, "num_sgd_iter": 1} if run == "PPO" else {}),
        },
    )
    try:
        for _ in range(10):
            result = trainer.train()
            if result["info"]["num_steps_trained"] >= 32 and result["episodes_total"] >= 1:
                break
        assert result["info"]["num_steps_trained"] >= 32 and result["episodes_total"] >= 1
    finally:
        trainer.stop()
