"""Action masks for the policy-gradient family (issue 12, item 5): a Dict observation with an ``action_mask``
entry makes illegal actions impossible (numpy fast path and torch path), log-probabilities and entropies are
those of the distribution renormalised over the legal actions, the torso never sees the mask, an all-zero mask is
an error, and PPO learns on a single-agent masked env without ever choosing an illegal action."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.a3c import A2CTrainer, A3CTorchPolicy
from relayrl.agents.impala import DEFAULT_CONFIG as IMPALA_CONFIG
from relayrl.agents.impala import VTraceTorchPolicy
from relayrl.agents.pg import PGTorchPolicy
from relayrl.agents.ppo import DEFAULT_CONFIG as PPO_CONFIG
from relayrl.agents.ppo import PPOTrainer
from relayrl.agents.ppo.ppo_torch_policy import PPOTorchPolicy
from relayrl.env.registry import register_env
from relayrl.evaluation.rollout_worker import RolloutWorker
from relayrl.models.action_dist import Categorical
from relayrl.models.action_mask import action_mask_columns, mask_logits
from relayrl.models.catalog import ModelCatalog
from relayrl.models.fcnet import FullyConnectedNetwork
from relayrl.models.masked_model import ActionMaskModel
from relayrl.models.preprocessors import get_preprocessor
from relayrl.models.visionnet import VisionNetwork
from relayrl.policy.sample_batch import SampleBatch

N = 4
MASKED = gym.spaces.Dict(
    {"action_mask": gym.spaces.Box(0, 1, (N,), np.int8), "observation": gym.spaces.Box(-1.0, 1.0, (3,), np.float32)}
)
ACT = gym.spaces.Discrete(N)
LOWEST = np.finfo(np.float32).min


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def flat(space: gym.Space = MASKED) -> gym.Space:
    """The policy's observation space as a RolloutWorker builds it (the flat Box carrying the Dict)."""
    return get_preprocessor(space)(space).observation_space


def make_policy(cls=PPOTorchPolicy, defaults=PPO_CONFIG, space: gym.Space = MASKED, **model):
    config = {
        **defaults,
        "observation_filter": "NoFilter",
        "model": {**defaults["model"], "fcnet_hiddens": [16], **model},
        "seed": 0,
    }
    torch.manual_seed(0)
    return cls(flat(space), ACT, config)


def masked_obs(masks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat observations: the mask columns first ("action_mask" sorts before "observation"), then 3 features."""
    rng = np.random.default_rng(seed)
    return np.concatenate([masks, rng.uniform(-1, 1, (len(masks), 3))], axis=1).astype(np.float32)


def random_masks(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = rng.random((n, N)) < 0.5
    masks[np.arange(n), rng.integers(0, N, n)] = True  # at least one legal action per row
    return masks.astype(np.float32)


def favour_illegal(policy) -> None:
    """Makes action 3 (and 1) far likelier than the others before masking: a leak would show at once."""
    with torch.no_grad():
        policy.model.inner.logits.bias[:] = torch.tensor([0.0, 8.0, 0.0, 8.0])


# --- the model ---------------------------------------------------------------------------------------------
def test_catalog_wraps_the_default_model_and_the_torso_never_sees_the_mask():
    policy = make_policy()
    model = policy.model
    assert isinstance(model, ActionMaskModel) and isinstance(model.inner, FullyConnectedNetwork)
    assert model.inner.hidden[0].in_features == 3 and model.inner.value_branch[0].in_features == 3
    assert policy._fast_path  # the numpy path serves masked models too
    obs = masked_obs(random_masks(64))
    other = obs.copy()
    other[:, :N] = random_masks(64, seed=1)  # other masks, same features
    t = torch.from_numpy
    logits, _ = model({"obs": t(obs)}, [], None)
    values = model.value_function()
    inner_logits, _ = model.inner({"obs": t(obs[:, N:])}, [], None)
    legal = obs[:, :N] > 0
    np.testing.assert_array_equal(logits.detach().numpy()[legal], inner_logits.detach().numpy()[legal])
    assert (logits.detach().numpy()[~legal] == LOWEST).all()
    model({"obs": t(other)}, [], None)
    torch.testing.assert_close(model.value_function(), values)  # values do not depend on the mask
    np_logits, np_values = model.numpy_forward(obs)
    np.testing.assert_allclose(np_logits[legal], logits.detach().numpy()[legal], rtol=1e-5, atol=1e-6)
    assert (np_logits[~legal] == LOWEST).all() and np_logits.dtype == np.float32
    np.testing.assert_allclose(np_values, values.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.numpy_value(other), np_values, rtol=1e-6)


def test_mask_key_none_or_renamed_and_space_mismatch():
    plain = make_policy(action_mask_key=None)  # the entry is an ordinary observation
    assert isinstance(plain.model, FullyConnectedNetwork) and plain.model.hidden[0].in_features == N + 3
    renamed = gym.spaces.Dict({"legal": MASKED["action_mask"], "observation": MASKED["observation"]})
    assert isinstance(make_policy(space=renamed).model, FullyConnectedNetwork)
    keyed = make_policy(PGTorchPolicy, PPO_CONFIG, space=renamed, action_mask_key="legal")
    assert isinstance(keyed.model, ActionMaskModel) and keyed.model.inner.hidden[0].in_features == 3
    with pytest.raises(ValueError, match="masks 4 actions but the action space is Discrete.5."):
        ModelCatalog.get_model(flat(), gym.spaces.Discrete(5), 5, {})
    with pytest.raises(ValueError, match="action_mask_key"):
        ModelCatalog.get_model(flat(), ACT, N, {"action_mask_key": ""})


def test_image_observation_behind_a_mask_gets_the_vision_network():
    space = gym.spaces.Dict(
        {"action_mask": gym.spaces.Box(0, 1, (N,), np.int8), "board": gym.spaces.Box(0, 1, (6, 6, 2), np.float32)}
    )
    policy = make_policy(A3CTorchPolicy, PPO_CONFIG, space=space, conv_filters=[[4, 3, 1], [8, 6, 1]])
    assert isinstance(policy.model.inner, VisionNetwork)
    rng = np.random.default_rng(0)
    masks = random_masks(500)
    obs = np.concatenate([masks, rng.random((500, 72))], axis=1).astype(np.float32)
    with torch.no_grad():
        policy.model.inner.logits.bias[:] = torch.tensor([0.0, 8.0, 0.0, 8.0])
    actions, _, _ = policy.compute_actions(obs)  # no numpy path for convolutions: the torch path
    assert masks[np.arange(500), actions].all()


# --- acting ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("algo", ["PPO", "IMPALA"])
def test_a_masked_action_is_never_sampled_in_100k_draws(algo, fast):
    policy = make_policy(*((VTraceTorchPolicy, IMPALA_CONFIG) if algo == "IMPALA" else (PPOTorchPolicy, PPO_CONFIG)))
    favour_illegal(policy)
    if not fast:
        policy._fast_path = False
    else:
        policy.model.forward = None  # the numpy path must not fall back to torch
    masks = random_masks(100_000)
    obs = masked_obs(masks)
    for explore in (True, False):
        actions, _, extra = policy.compute_actions(obs, explore=explore)
        assert masks[np.arange(len(obs)), actions].all(), f"an illegal action was chosen (explore={explore})"
        assert np.isfinite(extra[SampleBatch.ACTION_LOGP]).all()
    # Sampling follows the renormalised legal distribution: rows whose only legal actions are 0 and 1.
    rows = (masks == [1, 1, 0, 0]).all(1)
    assert (actions[rows] == 1).all()  # the deterministic action: the larger legal logit
    actions, _, _ = policy.compute_actions(obs, explore=True)
    p1 = 1 / (1 + np.exp(-8.0))  # softmax of logits ~(0, 8) over the legal pair
    assert abs(np.mean(actions[rows] == 1) - p1) < 0.01


@pytest.mark.parametrize("fast", [True, False], ids=["numpy", "torch"])
def test_an_all_zero_mask_is_an_error_when_acting_but_not_for_values(fast):
    policy = make_policy(VTraceTorchPolicy, IMPALA_CONFIG)
    policy._fast_path = fast
    masks = random_masks(4)
    masks[2] = 0.0
    obs = masked_obs(masks)
    for explore in (True, False):
        with pytest.raises(ValueError, match="action mask is all zeros: no legal action"):
            policy.compute_actions(obs, explore=explore)
    # A final observation may allow nothing (PettingZoo's after a game ends): its value is still needed.
    assert np.isfinite(policy.value(obs)).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_the_exported_policy_masks_at_any_batch_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    policy = make_policy()
    favour_illegal(policy)
    policy.export_model(str(tmp_path))  # traced with a batch of 2
    masks = random_masks(7, seed=3)
    obs = masked_obs(masks)
    want = np.where(masks > 0, policy.compute_actions(obs, explore=False)[2][SampleBatch.ACTION_DIST_INPUTS], LOWEST)
    scripted = torch.jit.load(str(tmp_path / "model.pt"))(torch.from_numpy(obs))[0].numpy()
    onnx = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"obs": obs})[0]
    for actions in (scripted, onnx):
        np.testing.assert_array_equal(actions, want.argmax(1))
        assert masks[np.arange(7), actions].all()


# --- the loss ----------------------------------------------------------------------------------------------
def test_logp_entropy_kl_are_over_the_legal_actions_and_gradients_stay_finite():
    rng = np.random.default_rng(0)
    raw = torch.tensor(rng.normal(0, 3, (6, N)), dtype=torch.float32, requires_grad=True)
    masks = random_masks(6, seed=2)
    masks[0] = [1, 0, 0, 0]  # a single legal action: entropy 0, logp 0
    masked = mask_logits(raw, torch.from_numpy(masks))
    dist = Categorical(masked)
    actions = torch.tensor([int(np.flatnonzero(m)[-1]) for m in masks])
    want_logp, want_entropy = [], []
    for row, m, a in zip(raw.detach().numpy().astype(np.float64), masks > 0, actions.numpy()):
        z = np.exp(row[m] - row[m].max())
        p = z / z.sum()  # the distribution renormalised over the legal actions
        want_logp.append(np.log(p[np.flatnonzero(m).tolist().index(a)]))
        want_entropy.append(-(p * np.log(p)).sum())
    np.testing.assert_allclose(dist.logp(actions).detach().numpy(), want_logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dist.entropy().detach().numpy(), want_entropy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        Categorical.numpy_logp(masked.detach().numpy(), actions.numpy()), want_logp, rtol=1e-5, atol=1e-6
    )
    other = Categorical(mask_logits(raw.detach() * 0.5, torch.from_numpy(masks)))
    kl = dist.kl(other).detach().numpy()
    for i, m in enumerate(masks > 0):
        p = torch.softmax(raw[i, m].detach().double(), 0).numpy()
        q = torch.softmax(0.5 * raw[i, m].detach().double(), 0).numpy()
        assert kl[i] == pytest.approx((p * np.log(p / q)).sum(), rel=1e-4, abs=1e-6)
    (dist.logp(actions).sum() + dist.entropy().sum() + dist.kl(other).sum()).backward()
    assert torch.isfinite(raw.grad).all()
    assert (raw.grad[torch.from_numpy(masks) == 0] == 0).all()  # nothing flows into illegal actions' logits


@pytest.mark.parametrize("algo", ["PPO", "IMPALA"])
def test_a_learning_step_on_masked_data_is_finite(algo):
    cls, defaults = (VTraceTorchPolicy, IMPALA_CONFIG) if algo == "IMPALA" else (PPOTorchPolicy, PPO_CONFIG)
    policy = make_policy(cls, defaults)
    favour_illegal(policy)
    T = policy.config["sample_batch_size"] if algo == "IMPALA" else 20
    masks = random_masks(T + 1)
    masks[-1] = 0.0  # the final next observation allows nothing
    obs = masked_obs(masks)
    actions, _, extra = policy.compute_actions(obs[:T])
    batch = SampleBatch(
        {
            SampleBatch.OBS: obs[:T],
            SampleBatch.NEXT_OBS: obs[1:],
            SampleBatch.ACTIONS: actions,
            SampleBatch.REWARDS: np.ones(T, np.float32),
            SampleBatch.TERMINATEDS: np.eye(1, T, T - 1, dtype=bool)[0],
            SampleBatch.TRUNCATEDS: np.zeros(T, bool),
            SampleBatch.EPS_ID: np.zeros(T, np.int64),
            **extra,
        }
    )
    batch = policy.postprocess_trajectory(batch)
    before = {k: v.copy() for k, v in policy.get_weights().items()}
    stats = policy.learn_on_batch(batch)["learner_stats"]
    assert all(np.isfinite(v) for v in stats.values() if isinstance(v, float))
    assert any(not np.array_equal(before[k], v) for k, v in policy.get_weights().items())


def test_a_mean_std_filter_leaves_the_mask_columns_as_they_are():
    config = {**PPO_CONFIG, "seed": 0, "sample_batch_size": 200}
    assert config["observation_filter"] == "MeanStdFilter"
    worker = RolloutWorker(lambda ctx: MaskedChoiceEnv(ctx), PPOTorchPolicy, policy_config=config)
    for _ in range(3):
        batch = worker.sample()
    start, end = action_mask_columns(worker.get_policy().observation_space)
    masks = batch[SampleBatch.OBS][:, start:end]
    assert set(np.unique(masks).tolist()) == {0.0, 1.0}  # raw 0 / 1, not standardised
    other = np.delete(batch[SampleBatch.OBS], np.s_[start:end], axis=1)
    assert abs(other.mean()) < 0.5 and 0.5 < other.std() < 1.5  # the other columns are standardised
    assert worker.sampler.env.get_sub_environments()[0].illegal == 0
    assert worker.get_filters()["default_policy"].copy().passthrough == (start, end)


# --- learning on a single-agent masked env -------------------------------------------------------------------
class MaskedChoiceEnv(gym.Env):
    """Four actions, a random non-empty subset legal at each step (``action_mask``); the observation's first
    entry says whether the highest (+1) or the lowest (-1) legal action earns reward 1. Counts illegal actions.

    A uniformly random legal policy earns ~5 per 10-step episode; one that reads the sign earns 10."""

    def __init__(self, config=None):
        self.observation_space = gym.spaces.Dict(
            {
                "action_mask": gym.spaces.Box(0, 1, (N,), np.int8),
                "observation": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
            }
        )
        self.action_space = gym.spaces.Discrete(N)
        self.rng = np.random.default_rng(0)
        self.illegal = self.steps = 0

    def _obs(self):
        mask = self.rng.random(N) < 0.5
        mask[self.rng.integers(N)] = True
        self.mask, self.sign = mask.astype(np.int8), float(self.rng.choice([-1.0, 1.0]))
        return {"action_mask": self.mask, "observation": np.array([self.sign, self.rng.uniform(-1, 1)], np.float32)}

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        legal = np.flatnonzero(self.mask)
        self.illegal += int(self.mask[action] == 0)
        reward = float(action == (legal[-1] if self.sign > 0 else legal[0]))
        return self._obs(), reward, False, self.t >= 10, {}


register_env("masked_choice_test_env", lambda ctx: MaskedChoiceEnv(ctx))
SMALL = {
    "seed": 0,
    "num_workers": 0,
    "observation_filter": "NoFilter",
    "min_iter_time_s": 0,
    "model": {"fcnet_hiddens": [32]},
}


def test_ppo_learns_a_masked_env_without_ever_choosing_an_illegal_action():
    config = {**SMALL, "train_batch_size": 500, "sample_batch_size": 100, "sgd_minibatch_size": 100, "lr": 3e-3}
    trainer = PPOTrainer(env="masked_choice_test_env", config=config)
    try:
        assert isinstance(trainer.get_policy().model, ActionMaskModel)
        first = trainer.train()["episode_reward_mean"]
        for _ in range(11):
            result = trainer.train()
        env = trainer.workers.local_worker().async_env.get_sub_environments()[0]
        assert env.steps >= 6000 and env.illegal == 0
        # ~5 for a random legal policy; 9.45 with seed 0 after 12 iterations (about 1.5 s).
        assert first < 6.0 and result["episode_reward_mean"] > 8.5
    finally:
        trainer.stop()
    # The env's counter works: with masking off the same policy does choose illegal actions.
    trainer = PPOTrainer(env="masked_choice_test_env", config={**config, "model": {"action_mask_key": None}})
    try:
        trainer.train()
        assert trainer.workers.local_worker().async_env.get_sub_environments()[0].illegal > 0
    finally:
        trainer.stop()


def test_a2c_acts_legally_on_the_masked_env():
    trainer = A2CTrainer(env="masked_choice_test_env", config={**SMALL, "train_batch_size": 200})
    try:
        trainer.train()
        env = trainer.workers.local_worker().async_env.get_sub_environments()[0]
        assert env.steps >= 200 and env.illegal == 0
    finally:
        trainer.stop()
