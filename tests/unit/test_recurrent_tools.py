"""Recurrent policies in the tools (issue 13, item 5): compute_action with a state, `relayrl rollout` and the
evaluation runs threading it, checkpoints of recurrent policies, and ONNX / TorchScript export with explicit state
inputs and outputs, checked against the policy."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from relayrl.agents.checkpoint import CheckpointError
from relayrl.agents.ppo import PPOTrainer
from relayrl.agents.trainer import Trainer
from relayrl.cli import main
from relayrl.examples.stateless_cartpole import StatelessCartPole, register
from relayrl.models.torch_model import TorchModel
from relayrl.policy import SampleBatch
from relayrl.policy.export import ONNX_FILE, SIDECAR_FILE, TORCHSCRIPT_FILE
from relayrl.policy.export_recurrent import ExportCheckError

SB = SampleBatch
ENV = register()  # "StatelessCartPole-v1", by name: checkpoints name it and `relayrl rollout` rebuilds it
RNN = {"use_lstm": True, "lstm_cell_size": 8, "fcnet_hiddens": [8], "max_seq_len": 8}


def small(**model) -> dict:
    """A quick PPO config: NoFilter unless a test sets one (the evaluation worker's filter updates while it runs)."""
    return {
        "observation_filter": "NoFilter",
        "num_workers": 0,
        "seed": 0,
        "sample_batch_size": 100,
        "train_batch_size": 200,
        "sgd_minibatch_size": 50,
        "num_sgd_iter": 2,
        "model": {**RNN, **model},
    }


class Recorder:
    """Wraps Trainer.compute_action: every call's (policy id, state in, prev action, prev reward, action, state
    out)."""

    def __init__(self, monkeypatch):
        self.calls: list[dict] = []
        original = Trainer.compute_action

        def compute_action(trainer, obs, state=None, prev_action=None, prev_reward=None, **kwargs):
            out = original(trainer, obs, state, prev_action, prev_reward, **kwargs)
            action, state_out = (out[0], out[1]) if state is not None else (out, None)
            call = {"pid": kwargs.get("policy_id"), "state": state, "prev": (prev_action, prev_reward)}
            self.calls.append({**call, "action": action, "state_out": state_out})
            return out

        monkeypatch.setattr(Trainer, "compute_action", compute_action)


def assert_threaded(calls: list[dict], lengths: list[int], initial: list, reward: float | None) -> None:
    """The calls of consecutive episodes of ``lengths`` steps: each starts from ``initial`` (and zero previous
    action and reward when ``reward`` is not None), each later step from the previous step's state out, action
    and ``reward``."""
    assert len(calls) == sum(lengths)
    i = 0
    for length in lengths:
        for t in range(length):
            call, before = calls[i], calls[i - 1]
            want_state = initial if t == 0 else before["state_out"]
            assert len(call["state"]) == len(initial)
            for s, w in zip(call["state"], want_state):
                np.testing.assert_array_equal(s, w)
            if reward is None:
                assert call["prev"] == (None, None)
            elif t == 0:
                assert np.all(np.asarray(call["prev"][0]) == 0) and call["prev"][1] == 0.0
            else:
                assert np.array_equal(call["prev"][0], before["action"]) and call["prev"][1] == reward
            i += 1


def assert_identical(a, b, where="state"):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}.{i}")
    elif isinstance(a, (np.ndarray, torch.Tensor)):
        x, y = np.asarray(a), np.asarray(b)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), where
    else:
        assert a == b, where


# --- compute_action -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prev", [False, True])
def test_compute_action_with_state_over_an_episode_equals_sampling(prev):
    config = {**small(lstm_use_prev_action_reward=prev), "explore": False, "batch_mode": "complete_episodes"}
    # No filter: the batch's observations are those compute_action takes. prev_reward: the clipped reward.
    trainer = PPOTrainer(env=ENV, config={**config, "observation_filter": "NoFilter", "clip_rewards": 0.5})
    try:
        batch = trainer.workers.local_worker().sample()
        rows = np.flatnonzero(batch[SB.EPS_ID] == batch[SB.EPS_ID][0])
        assert batch[SB.T][rows[0]] == 0 and len(rows) > 5 and batch[SB.TERMINATEDS][rows[-1]]
        policy = trainer.get_policy()
        state, prev_action, prev_reward = policy.get_initial_state(), np.int64(0), 0.0
        for i in rows:
            for j, s in enumerate(state):
                np.testing.assert_allclose(s, batch[f"state_in_{j}"][i], atol=1e-6)
            if prev:
                assert batch[SB.PREV_ACTIONS][i] == prev_action and batch[SB.PREV_REWARDS][i] == prev_reward
            action, state, extra = trainer.compute_action(batch[SB.OBS][i], state, prev_action, prev_reward)
            assert action == batch[SB.ACTIONS][i]
            np.testing.assert_allclose(extra[SB.ACTION_DIST_INPUTS], batch[SB.ACTION_DIST_INPUTS][i], atol=1e-6)
            np.testing.assert_allclose(extra[SB.VF_PREDS], batch[SB.VF_PREDS][i], atol=1e-6)
            prev_action, prev_reward = action, float(batch[SB.REWARDS][i])
        assert prev_reward == 0.5
        obs = batch[SB.OBS][0]
        with pytest.raises(ValueError, match=r"'default_policy' is recurrent: pass its state.*get_initial_state"):
            trainer.compute_action(obs)
        if prev:
            with pytest.raises(ValueError, match=r"lstm_use_prev_action_reward\): pass prev_action and prev_reward"):
                trainer.compute_action(obs, policy.get_initial_state())
        else:  # prev_action / prev_reward are not required, and the state may come back as it came out
            action, state_out, _ = trainer.compute_action(obs, [np.asarray(s) for s in policy.get_initial_state()])
            assert action in (0, 1) and [s.shape for s in state_out] == [(8,), (8,)]
    finally:
        trainer.stop()


def test_a_feed_forward_policy_keeps_its_return_values():
    trainer = PPOTrainer(env="CartPole-v1", config={**small(), "model": {"fcnet_hiddens": [8]}})
    try:
        obs = np.zeros(4, np.float32)
        assert trainer.compute_action(obs, explore=False) in (0, 1)  # the action alone, as before
        action, state_out, extra = trainer.compute_action(obs, [], explore=False)  # a state given: the triple
        assert action in (0, 1) and state_out == [] and SB.ACTION_DIST_INPUTS in extra
        assert trainer.get_policy().get_initial_state() == [] and not trainer.get_policy().is_recurrent()
    finally:
        trainer.stop()


# --- rollout, evaluation, checkpoints ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A PPO + LSTM (previous action and reward as inputs) trained twice and saved."""
    config = {**small(lstm_use_prev_action_reward=True), "clip_rewards": 0.5, "observation_filter": "MeanStdFilter"}
    trainer = PPOTrainer(env=ENV, config=config)
    trainer.train()
    trainer.train()
    path = trainer.save(str(tmp_path_factory.mktemp("ckpt")))
    yield trainer, path
    trainer.stop()


def test_rollout_threads_the_state_and_resets_it_per_episode(checkpoint, tmp_path, monkeypatch):
    trainer, path = checkpoint
    recorder = Recorder(monkeypatch)
    out = str(tmp_path / "episodes.jsonl")
    assert main(["rollout", path, "--episodes", "3", "--out", out]) == 0
    with open(out) as f:
        lengths = [json.loads(line)["length"] for line in f]
    assert len(lengths) == 3 and min(lengths) > 1
    initial = trainer.get_policy().get_initial_state()
    assert_threaded(recorder.calls, lengths, initial, reward=0.5)  # CartPole's 1.0, clipped as in training
    assert all(c["pid"] == "default_policy" for c in recorder.calls)


def test_checkpoint_round_trip_is_bit_identical(checkpoint):
    trainer, path = checkpoint
    restored = Trainer.from_checkpoint(path)
    try:
        a, b = trainer.get_policy().get_state(), restored.get_policy().get_state()
        assert a["global_timestep"] > 0 and any("rnn" in k for k in a["weights"])
        assert a["optimizers"][0]["exp_avg"]  # Adam's moments exist after two iterations
        assert_identical(a, b)  # weights and optimizer state: same keys, dtypes, shapes and bits
        assert_identical(
            trainer.workers.local_worker().get_filter_states(), restored.workers.local_worker().get_filter_states()
        )
        # The same actions and states, step by step, from the same start.
        obs = np.random.default_rng(1).normal(size=(30, 2)).astype(np.float32)
        runs = []
        for t in (trainer, restored):
            state, prev, out = t.get_policy().get_initial_state(), (0, 0.0), []
            for o in obs:
                action, state, extra = t.compute_action(o, state, *prev, explore=False)
                prev = (action, 0.5)
                out.append((action, [s.copy() for s in state], extra[SB.ACTION_DIST_INPUTS]))
            runs.append(out)
        for (a1, s1, d1), (a2, s2, d2) in zip(*runs):
            assert a1 == a2 and np.array_equal(d1, d2) and all(np.array_equal(x, y) for x, y in zip(s1, s2))
    finally:
        restored.stop()
    # A checkpoint of an LSTM policy does not go into a GRU one (other weight shapes): named, nothing changed.
    with pytest.raises(CheckpointError, match="rnn"):
        Trainer.from_checkpoint(path, {"model": {"rnn_type": "gru"}})


def test_evaluation_runs_the_recurrent_policy_with_its_state():
    config = {
        **small(),
        "evaluation_interval": 1,
        "evaluation_num_episodes": 2,
        "evaluation_config": {"explore": False},
    }
    trainer = PPOTrainer(env=ENV, config=config)
    try:
        evaluation = trainer.train()["evaluation"]
        # The evaluation worker (seed 0) resets its env with seed 0, then unseeded: replay those two episodes
        # greedily with compute_action, the state reset at each start.
        env, returns = StatelessCartPole(), []
        obs, _ = env.reset(seed=0)
        for _ in range(2):
            state, done, ret = trainer.get_policy().get_initial_state(), False, 0.0
            while not done:
                action, state, _ = trainer.compute_action(obs, state, explore=False)
                obs, reward, terminated, truncated, _ = env.step(action)
                ret, done = ret + reward, terminated or truncated
            returns.append(ret)
            obs, _ = env.reset()
        assert evaluation["episodes_this_iter"] == 2
        assert (evaluation["episode_reward_min"], evaluation["episode_reward_max"]) == (min(returns), max(returns))
    finally:
        trainer.stop()


def test_multi_agent_rollout_evaluation_and_export_of_recurrent_policies(tmp_path, monkeypatch):
    config = {
        **small(),
        "evaluation_interval": 1,
        "evaluation_num_episodes": 1,
        "multiagent": {
            "policies": {
                "lstm": [None, None, None, {"model": {"lstm_use_prev_action_reward": True}}],
                "gru": [None, None, None, {"model": {"rnn_type": "gru"}}],
            },
            "policy_mapping_fn": {0: "lstm", 1: "gru"},
        },
    }
    trainer = PPOTrainer(env=f"multi_agent:{ENV}", config=config)
    try:
        result = trainer.train()
        assert result["evaluation"]["episodes_this_iter"] == 1
        path = trainer.save(str(tmp_path / "ckpt"))
        recorder = Recorder(monkeypatch)
        out = str(tmp_path / "episodes.jsonl")
        assert main(["rollout", path, "--episodes", "2", "--out", out]) == 0
        with open(out) as f:
            episodes = [json.loads(line) for line in f]
        for pid, agent in (("lstm", "0"), ("gru", "1")):
            calls = [c for c in recorder.calls if c["pid"] == pid]
            lengths = [int(e["agent_returns"][agent]) for e in episodes]  # CartPole: one step per reward
            initial = trainer.get_policy(pid).get_initial_state()
            assert len(initial) == (2 if pid == "lstm" else 1)
            assert_threaded(calls, lengths, initial, reward=1.0 if pid == "lstm" else None)
        sidecars = trainer.export_policy_models(str(tmp_path / "exported"))
        assert sidecars["lstm"]["recurrent"]["state_inputs"] == ["state_in_0", "state_in_1"]
        assert sidecars["lstm"]["recurrent"]["prev_action"]["dtype"] == "int64"
        assert sidecars["gru"]["recurrent"]["state_inputs"] == ["state_in_0"]
        assert sidecars["gru"]["recurrent"]["prev_action"] is None
    finally:
        trainer.stop()


# --- export ---------------------------------------------------------------------------------------------------------
def run_exported(kind: str, export_dir: str, sidecar: dict):
    """A function feeds -> outputs of the exported file ``kind`` (inputs in the sidecar's order)."""
    names = list(sidecar["inputs"])
    if kind == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(os.path.join(export_dir, ONNX_FILE))
        return lambda feeds: session.run(None, feeds)
    module = torch.jit.load(os.path.join(export_dir, TORCHSCRIPT_FILE))
    return lambda feeds: [t.detach().numpy() for t in module(*[torch.from_numpy(feeds[n]) for n in names])]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "env,rnn_type,prev",
    [(ENV, "lstm", False), (ENV, "lstm", True), (ENV, "gru", False), (ENV, "gru", True), ("Pendulum-v1", "lstm", True)],
)
def test_export_round_trip_with_state_for_100_steps(env, rnn_type, prev, tmp_path):
    config = {**small(rnn_type=rnn_type, lstm_use_prev_action_reward=prev), "observation_filter": "MeanStdFilter"}
    trainer = PPOTrainer(env=env, config=config)
    try:
        trainer.train()
        sidecar = trainer.export_policy_model(str(tmp_path))
        assert {ONNX_FILE, TORCHSCRIPT_FILE, SIDECAR_FILE} <= set(os.listdir(tmp_path))
        with open(tmp_path / SIDECAR_FILE) as f:
            assert json.load(f) == json.loads(json.dumps(sidecar))
        rec, policy = sidecar["recurrent"], trainer.get_policy()
        num_states = 2 if rnn_type == "lstm" else 1
        assert rec["state_inputs"] == [f"state_in_{i}" for i in range(num_states)]
        assert rec["state_outputs"] == [f"state_out_{i}" for i in range(num_states)]
        assert rec["initial_state"] == [s.tolist() for s in policy.get_initial_state()]
        assert rec["batch"] in ("dynamic", 1) and rec["state_shapes"][0][1:] == [8] and rec["seq_lens"] is None
        assert list(sidecar["inputs"]) == ["obs", *rec["state_inputs"], *(["prev_action", "prev_reward"] * prev)]
        assert list(sidecar["outputs"]) == ["action", "dist_inputs", *rec["state_outputs"]]
        assert (rec["prev_action"] is not None) == prev and sidecar["observation_filter"]["type"] == "MeanStdFilter"
        assert rec["checked"]["files"] == ["torchscript", "onnx"]
        runners = {kind: run_exported(kind, str(tmp_path), sidecar) for kind in ("onnx", "torchscript")}
        continuous = isinstance(policy.action_space, gym.spaces.Box)
        # 100 steps of the real env, over several episodes: the exported graphs, their state fed back, against
        # the trainer's compute_action (the filter included), all reset to the initial state at episode starts.
        gym_env = gym.make("Pendulum-v1") if continuous else StatelessCartPole()
        obs, _ = gym_env.reset(seed=0)
        starts, state, prev_in = 0, None, None
        for step in range(100):
            if state is None:
                state = policy.get_initial_state()
                exported = {kind: [np.array([s], np.float32) for s in rec["initial_state"]] for kind in runners}
                prev_in = (np.zeros(policy.action_space.shape, np.float32) if continuous else np.int64(0), 0.0)
                starts += 1
            action, state_next, extra = trainer.compute_action(obs, state, *prev_in, explore=False)
            for kind, run in runners.items():
                feeds = {"obs": np.asarray(obs, np.float32)[None], **dict(zip(rec["state_inputs"], exported[kind]))}
                if prev:
                    feeds["prev_action"] = np.asarray(prev_in[0])[None]
                    feeds["prev_reward"] = np.array([prev_in[1]], np.float32)
                got_action, got_inputs, *got_state = run(feeds)
                if continuous:  # the mean, clipped to the bounds in the graph
                    np.testing.assert_allclose(got_action[0], np.clip(action, -2, 2), rtol=1e-4, atol=1e-5)
                else:
                    assert got_action[0] == action, (kind, step)
                np.testing.assert_allclose(got_inputs[0], extra[SB.ACTION_DIST_INPUTS], rtol=1e-4, atol=1e-5)
                for g, w in zip(got_state, state_next):
                    np.testing.assert_allclose(g[0], w, rtol=0, atol=1e-5, err_msg=f"{kind} step {step}")
                exported[kind] = got_state
            state = state_next
            obs, reward, terminated, truncated, _ = gym_env.step(np.clip(action, -2, 2) if continuous else action)
            prev_in = (action, float(reward))
            if terminated or truncated:
                obs, _ = gym_env.reset()
                state = None
        assert starts > 1 or continuous  # CartPole: the reset at an episode's start is exercised too
    finally:
        trainer.stop()


class ShapeLSTM(TorchModel):
    """A custom recurrent TorchModel whose forward keeps the batch symbolic (``shape[0]``, never ``len``)."""

    structured_obs = False

    def __init__(self, obs_space, action_space, num_outputs, model_config, name):
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        self.rnn = nn.LSTM(int(np.prod(obs_space.shape)), 6, batch_first=True)
        self.logits, self.value_branch = nn.Linear(6, num_outputs), nn.Linear(6, 1)
        self._out = None

    def get_initial_state(self):
        return [np.zeros(6, np.float32), np.full(6, 0.1, np.float32)]  # not zeros: the sidecar carries it

    def forward(self, input_dict, state, seq_lens):
        x = input_dict["obs"].float()
        b = state[0].shape[0]
        x = x.reshape(b, x.shape[0] // b, x.shape[-1])
        out, (h, c) = self.rnn(x, (state[0].unsqueeze(0), state[1].unsqueeze(0)))
        self._out = out.reshape(-1, 6)
        return self.logits(self._out), [h.squeeze(0), c.squeeze(0)]

    def value_function(self):
        return self.value_branch(self._out).squeeze(-1)


class ValueBranchingLSTM(ShapeLSTM):
    """Takes a Python branch on the observation's values: a trace keeps one branch, so no export reproduces it."""

    def forward(self, input_dict, state, seq_lens):
        logits, state_out = super().forward(input_dict, state, seq_lens)
        return (logits + 1.0 if float(input_dict["obs"].sum()) > 0 else logits), state_out


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_a_model_with_a_symbolic_batch_exports_for_any_batch_and_a_wrong_export_is_refused(tmp_path):
    from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTorchPolicy
    from relayrl.config import merge_dicts

    obs_space, act_space = gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(4)
    config = merge_dicts(DEFAULT_CONFIG, {"model": {"custom_model": ShapeLSTM, "max_seq_len": 4}})
    torch.manual_seed(0)
    policy = PPOTorchPolicy(obs_space, act_space, config)
    sidecar = policy.export_model(str(tmp_path))
    rec = sidecar["recurrent"]
    assert rec["batch"] == "dynamic" and rec["state_shapes"] == [["batch", 6], ["batch", 6]]
    assert rec["initial_state"][1] == pytest.approx([0.1] * 6) and rec["checked"]["batch"] == 3
    rng = np.random.default_rng(0)
    state = [np.stack([s] * 5) for s in policy.get_initial_state()]
    exported = [s.copy() for s in state]
    run = run_exported("onnx", str(tmp_path), sidecar)
    for _ in range(20):
        obs = rng.uniform(-1, 1, (5, 3)).astype(np.float32)
        actions, state, _ = policy.compute_actions(obs, state, explore=False)
        got_actions, _, *exported = run({"obs": obs, "state_in_0": exported[0], "state_in_1": exported[1]})
        np.testing.assert_array_equal(got_actions, actions)
        for g, w in zip(exported, state):
            np.testing.assert_allclose(g, w, atol=1e-5)

    bad = PPOTorchPolicy(obs_space, act_space, {**config, "model": {"custom_model": ValueBranchingLSTM}})
    with pytest.raises(ExportCheckError, match="exported TorchScript graph .* at step .*dist_inputs differs"):
        bad.export_model(str(tmp_path / "bad"))
    assert os.listdir(tmp_path / "bad") == []  # the graphs that failed the check are not left behind
