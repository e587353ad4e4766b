"""The numpy fast path of recurrent models (issue 13): an LSTM / GRU step in numpy equals torch's over 100 steps with
the state carried, through the policy's compute_actions and bootstrap values, behind an action mask, and after the
weights change; a conv torso acts through torch."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.ppo import DEFAULT_CONFIG as PPO_CONFIG
from relayrl.agents.ppo import PPOTorchPolicy
from relayrl.models.catalog import ModelCatalog
from relayrl.models.masked_model import ActionMaskModel
from relayrl.models.preprocessors import get_preprocessor
from relayrl.policy.sample_batch import SampleBatch

SB = SampleBatch
OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
STEPS, ROWS, CELL = 100, 5, 16


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(rnn_type: str, action_space: gym.Space, num_outputs: int, obs_space: gym.Space = OBS, **config):
    torch.manual_seed(0)
    model_config = {"use_lstm": True, "rnn_type": rnn_type, "lstm_cell_size": CELL, "fcnet_hiddens": [8, 8], **config}
    return ModelCatalog.get_model(obs_space, action_space, num_outputs, model_config)


def _torch_step(model, obs, state, prev_actions=None, prev_rewards=None):
    input_dict = {"obs": torch.as_tensor(obs)}
    if prev_actions is not None:
        input_dict[SB.PREV_ACTIONS] = torch.as_tensor(prev_actions)
        input_dict[SB.PREV_REWARDS] = torch.as_tensor(prev_rewards)
    with torch.no_grad():
        out, state = model(input_dict, [torch.as_tensor(s) for s in state], torch.ones(len(obs), dtype=torch.int32))
        return out.numpy(), model.value_function().numpy(), [s.numpy() for s in state]


def _run_both(model, action_space: gym.Space, obs_fn, prev: bool, steps: int = STEPS) -> float:
    """Runs numpy and torch side by side for ``steps`` steps, each carrying its own state; the largest difference
    of their outputs, values and states."""
    rng = np.random.default_rng(0)
    action_space.seed(0)
    state_np = [np.zeros((ROWS, CELL), np.float32) for _ in model.get_initial_state()]
    state_t = [s.copy() for s in state_np]
    worst = 0.0
    for step in range(steps):
        obs = obs_fn(rng, step)
        prev_a = np.stack([action_space.sample() for _ in range(ROWS)]) if prev else None
        prev_r = rng.normal(size=ROWS).astype(np.float32) if prev else None
        logits, values, state_t = _torch_step(model, obs, state_t, prev_a, prev_r)
        np_logits, np_values, state_np = model.numpy_step(obs, state_np, prev_a, prev_r)
        for a, b in zip([np_logits, np_values, *state_np], [logits, values, *state_t]):
            worst = max(worst, float(np.abs(a - b).max()))
    assert np.abs(state_t[0]).max() > 0.1  # the state really moved
    return worst


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize(
    "action_space, num_outputs, extra",
    [
        (gym.spaces.Discrete(3), 3, {}),
        (gym.spaces.MultiDiscrete([2, 3]), 5, {"fcnet_activation": "relu"}),
        (gym.spaces.Box(-1.0, 1.0, (2,), np.float32), 4, {"free_log_std": True}),
    ],
    ids=["discrete", "multidiscrete-relu", "box-free-log-std"],
)
@pytest.mark.parametrize("prev", [False, True], ids=["obs", "prev-action-reward"])
def test_numpy_step_equals_torch_over_100_steps(rnn_type, action_space, num_outputs, extra, prev):
    model = _model(rnn_type, action_space, num_outputs, lstm_use_prev_action_reward=prev, **extra)
    worst = _run_both(model, action_space, lambda rng, _: rng.uniform(-2, 2, (ROWS, 4)).astype(np.float32), prev)
    assert worst < 1e-5


def test_numpy_step_follows_weight_updates_and_asks_for_previous_actions():
    model = _model("lstm", gym.spaces.Discrete(3), 3, lstm_use_prev_action_reward=True)
    obs = np.ones((ROWS, 4), np.float32)
    state = [np.zeros((ROWS, CELL), np.float32)] * 2
    with pytest.raises(ValueError, match="prev_actions"):
        model.numpy_step(obs, state)
    prev = (np.zeros(ROWS, np.int64), np.zeros(ROWS, np.float32))
    before = model.numpy_step(obs, state, *prev)[0]
    with torch.no_grad():
        model.rnn.weight_ih_l0.add_(0.5)  # an in-place change, as an optimizer step or load_state_dict makes
    after = model.numpy_step(obs, state, *prev)[0]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _torch_step(model, obs, state, *prev)[0], atol=1e-6)


def test_a_conv_torso_acts_through_torch():
    model = _model("lstm", gym.spaces.Discrete(3), 3, obs_space=gym.spaces.Box(0, 1, (42, 42, 1)))
    assert model.numpy_step(np.zeros((1, 42, 42, 1), np.float32), [np.zeros((1, CELL), np.float32)] * 2) is None


def test_the_action_mask_wrapper_keeps_its_numpy_path_around_the_rnn():
    n = 4
    masked = gym.spaces.Dict(
        {"action_mask": gym.spaces.Box(0, 1, (n,), np.int8), "observation": gym.spaces.Box(-1, 1, (3,), np.float32)}
    )
    flat = get_preprocessor(masked)(masked).observation_space
    model = _model("gru", gym.spaces.Discrete(n), n, obs_space=flat)
    assert isinstance(model, ActionMaskModel)

    def obs_fn(rng, step):
        masks = rng.random((ROWS, n)) < 0.5
        masks[np.arange(ROWS), rng.integers(0, n, ROWS)] = True
        return np.concatenate([masks, rng.uniform(-1, 1, (ROWS, 3))], axis=1).astype(np.float32)

    assert _run_both(model, gym.spaces.Discrete(n), obs_fn, prev=False) < 1e-5
    obs = obs_fn(np.random.default_rng(1), 0)
    logits = model.numpy_step(obs, [np.zeros((ROWS, CELL), np.float32)])[0]
    assert (logits[obs[:, :n] == 0] == np.finfo(np.float32).min).all()


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_the_policy_acts_in_numpy_exactly_as_in_torch(rnn_type):
    model = {"use_lstm": True, "rnn_type": rnn_type, "lstm_cell_size": CELL, "fcnet_hiddens": [8]}
    model["lstm_use_prev_action_reward"] = True
    config = {**PPO_CONFIG, "model": {**PPO_CONFIG["model"], **model}, "seed": 0}
    torch.manual_seed(0)
    fast = PPOTorchPolicy(OBS, gym.spaces.Discrete(2), config)
    slow = PPOTorchPolicy(OBS, gym.spaces.Discrete(2), config)
    slow.set_weights(fast.get_weights())
    slow._fast_path = False
    assert fast._fast_path
    rng = np.random.default_rng(0)
    states = {p: [np.stack([s] * ROWS) for s in p.get_initial_state()] for p in (fast, slow)}
    prev = (np.zeros(ROWS, np.int64), np.zeros(ROWS, np.float32))
    for _ in range(STEPS):
        obs = rng.uniform(-1, 1, (ROWS, 4)).astype(np.float32)
        out = {}
        for p in (fast, slow):
            out[p] = p.compute_actions(obs, states[p], *prev, explore=False)
            states[p] = out[p][1]
        (a_fast, _, x_fast), (a_slow, _, x_slow) = out[fast], out[slow]
        np.testing.assert_array_equal(a_fast, a_slow)
        for key in (SB.VF_PREDS, SB.ACTION_LOGP, SB.ACTION_DIST_INPUTS):
            np.testing.assert_allclose(x_fast[key], x_slow[key], atol=1e-5)
        for a, b in zip(states[fast], states[slow]):
            np.testing.assert_allclose(a, b, atol=1e-5)
        prev = (a_fast, rng.normal(size=ROWS).astype(np.float32))
    # The sampler's call: log-probabilities deferred to the fragment, value estimates with each step.
    _, _, extra = fast.compute_actions(obs, states[fast], *prev, deferred=True)
    assert SB.VF_PREDS in extra and SB.ACTION_LOGP not in extra
    # Bootstrap values (one step from the recorded state, then the next observation) agree too.
    batch = SampleBatch(
        {
            SB.OBS: obs,
            SB.NEXT_OBS: obs[::-1].copy(),
            SB.ACTIONS: a_fast,
            SB.REWARDS: np.ones(ROWS),
            SB.TERMINATEDS: np.zeros(ROWS, bool),
            SB.PREV_ACTIONS: prev[0],
            SB.PREV_REWARDS: prev[1],
            SB.UNROLL_ID: np.arange(ROWS),
            **{f"state_in_{j}": s for j, s in enumerate(states[fast])},
        }
    )
    np.testing.assert_allclose(fast.bootstrap_values(batch), slow.bootstrap_values(batch), atol=1e-5)
