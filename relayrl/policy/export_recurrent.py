"""Export of a recurrent policy (``model.use_lstm``): one step of a batch of episodes, the RNN state explicit.

    sidecar = trainer.export_policy_model("exported/")           # model.onnx, model.pt, export.json
    rec = sidecar["recurrent"]
    sess = ort.InferenceSession("exported/model.onnx")
    state = [np.array([s] * num_envs, np.float32) for s in rec["initial_state"]]   # at each episode's start
    feeds = {"obs": raw_obs, **dict(zip(rec["state_inputs"], state))}
    feeds.update(prev_action=..., prev_reward=...)     # only when rec["prev_action"]: zeros at an episode's start
    action, dist_inputs, *state = sess.run(None, feeds)   # state_out_* are the next call's state_in_*

Inputs ``obs``, ``state_in_0..`` (LSTM: h, c; GRU: h), then ``prev_action``, ``prev_reward`` when the model reads
them (``lstm_use_prev_action_reward``); outputs ``action``, ``dist_inputs``, ``state_out_0..``. Each call advances
every row (episode) of the batch by one step, so there is no ``seq_lens`` input (it would be all ones; the graph
makes it). The observation filter and the deterministic action are those of the feed-forward export (export.py).

Checked at export time: the written files (TorchScript always, ONNX where onnxruntime is installed) are run for
``CHECK_STEPS`` steps on a batch of ``CHECK_BATCH`` episodes, state fed back, against ``policy.compute_actions``
(deterministic actions, dist inputs and states to 1e-5); a mismatch is an ExportCheckError. A model whose forward
fixes the batch size when traced (``len(tensor)`` where ``tensor.shape[0]`` would stay symbolic) fails that check
at a batch of 3; it is then exported for a batch of one episode per call (``"batch": 1`` in the sidecar).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from relayrl.policy.export import (
    ONNX_FILE,
    SIDECAR_FILE,
    TORCHSCRIPT_FILE,
    ExportedPolicy,
    _example_obs,
    _jsonable,
    describe_export,
    filter_constants,
)
from relayrl.policy.sample_batch import SampleBatch

logger = logging.getLogger(__name__)

CHECK_STEPS = 8
CHECK_BATCH = 3
PREV_ACTION, PREV_REWARD = "prev_action", "prev_reward"


class ExportCheckError(ValueError):
    """The exported graph does not reproduce the policy (actions, dist inputs or state)."""


class ExportedRecurrentPolicy(ExportedPolicy):
    """(raw obs, state_in_*, [prev_action, prev_reward]) -> (action, dist_inputs, state_out_*), one step."""

    def __init__(self, *args: Any, num_states: int, prev_action_reward: bool):
        super().__init__(*args)
        self.num_states = num_states
        self.prev_action_reward = prev_action_reward

    def forward(self, obs: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        input_dict = {"obs": self.filtered(obs), "is_training": False}
        if self.prev_action_reward:
            input_dict[SampleBatch.PREV_ACTIONS] = inputs[self.num_states]
            input_dict[SampleBatch.PREV_REWARDS] = inputs[self.num_states + 1]
        seq_lens = torch.ones(obs.shape[0], dtype=torch.int32)  # one step per row
        dist_inputs, state_out = self.model(input_dict, list(inputs[: self.num_states]), seq_lens)
        return (self.deterministic_action(dist_inputs), dist_inputs, *state_out)


def export_recurrent_policy(
    policy: Any,
    export_dir: str,
    obs_filter: Any = None,
    raw_obs_space: Any = None,
    onnx: bool = True,
    torchscript: bool = True,
    opset: int = 17,
) -> dict:
    """Writes model.onnx, model.pt and export.json of a recurrent ``policy``, checks them, returns the sidecar."""
    obs_space = raw_obs_space if isinstance(raw_obs_space, gym.spaces.Discrete) else policy.observation_space
    initial = [np.asarray(s, dtype=np.float32) for s in policy.get_initial_state()]
    # As the sampler decides it (evaluation/sampler.py wants_prev_action_reward; policy/ does not import it).
    prev = bool((policy.config.get("model") or {}).get("lstm_use_prev_action_reward"))
    wrapper = ExportedRecurrentPolicy(
        policy.model,
        policy.dist_class,
        obs_space,
        policy.action_space,
        filter_constants(obs_filter),
        num_states=len(initial),
        prev_action_reward=prev,
    )
    names = _io_names(len(initial), prev)
    os.makedirs(export_dir, exist_ok=True)
    check = {"onnx": onnx, "torchscript": torchscript, "obs_filter": obs_filter, "obs_space": obs_space}
    try:
        _write(policy, wrapper, export_dir, names, initial, obs_space, 2, True, onnx, torchscript, opset)
        checked = _check(policy, wrapper, export_dir, names, initial, batch=CHECK_BATCH, **check)
        batch: Any = "batch"
    except ExportCheckError as dynamic_error:
        try:  # a model that fixes the batch size when traced: export it for one episode per call
            _write(policy, wrapper, export_dir, names, initial, obs_space, 1, False, onnx, torchscript, opset)
            checked = _check(policy, wrapper, export_dir, names, initial, batch=1, **check)
        except ExportCheckError as e:
            for name in (ONNX_FILE, TORCHSCRIPT_FILE, SIDECAR_FILE):  # no wrong graph (or stale sidecar) stays
                if os.path.exists(os.path.join(export_dir, name)):
                    os.remove(os.path.join(export_dir, name))
            raise ExportCheckError(f"{dynamic_error}; exported for a batch of 1 as well: {e}") from e
        logger.warning("export: the model fixes the batch size when traced (%s); exported for batch 1", dynamic_error)
        batch = 1
    sidecar = describe_export(policy, wrapper, obs_space, obs_filter, onnx, torchscript)
    sidecar["recurrent"] = _describe_recurrent(policy, names, initial, batch, checked)
    sidecar["inputs"].update(
        {n: f"RNN state {i} before this step, [{batch}, ...] float32" for i, n in enumerate(names["state_in"])}
    )
    sidecar["outputs"].update({n: f"RNN state {i} after this step" for i, n in enumerate(names["state_out"])})
    if prev:
        sidecar["inputs"][PREV_ACTION] = "the previous action of each episode (zeros at its start)"
        sidecar["inputs"][PREV_REWARD] = "the previous reward of each episode, float32 (0 at its start)"
    with open(os.path.join(export_dir, SIDECAR_FILE), "w") as f:
        json.dump(sidecar, f, indent=1)
    return sidecar


def _io_names(num_states: int, prev: bool) -> dict[str, list[str]]:
    state_in = [f"state_in_{i}" for i in range(num_states)]
    state_out = [f"state_out_{i}" for i in range(num_states)]
    inputs = ["obs", *state_in, *([PREV_ACTION, PREV_REWARD] if prev else [])]
    return {
        "inputs": inputs,
        "outputs": ["action", "dist_inputs", *state_out],
        "state_in": state_in,
        "state_out": state_out,
    }


def _prev_action_example(space: gym.Space, batch: int) -> np.ndarray:
    """Zero previous actions as the graph takes them: int64 indices (Discrete, MultiDiscrete), float32 (Box)."""
    if isinstance(space, gym.spaces.Discrete):
        return np.zeros(batch, np.int64)
    dtype = np.int64 if isinstance(space, gym.spaces.MultiDiscrete) else np.float32
    return np.zeros((batch, *space.shape), dtype)


def _example_inputs(names: dict, initial: list, obs_space: gym.Space, action_space: gym.Space, batch: int) -> tuple:
    example = [_example_obs(obs_space, batch)] + [torch.from_numpy(np.stack([s] * batch)) for s in initial]
    if PREV_ACTION in names["inputs"]:
        example += [torch.from_numpy(_prev_action_example(action_space, batch)), torch.zeros(batch)]
    return tuple(example)


def _write(policy, wrapper, export_dir, names, initial, obs_space, batch, dynamic, onnx, torchscript, opset) -> None:
    """Traces ``wrapper`` on a batch of ``batch`` rows into the files (``dynamic``: any batch size)."""
    example = _example_inputs(names, initial, obs_space, policy.action_space, batch)
    axes = {n: {0: "batch"} for n in names["inputs"] + names["outputs"]} if dynamic else None
    was_training, device = policy.model.training, next(policy.model.parameters()).device
    wrapper.to("cpu").eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch.jit is deprecated, still the portable format; the tracer's warnings (a Python int taken from a
            # tensor, ONNX's note on RNNs at batch sizes other than 1) are what _check verifies instead.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*(batch_size other than 1|legacy TorchScript-based ONNX)")
            if onnx:
                torch.onnx.export(
                    wrapper,
                    example,
                    os.path.join(export_dir, ONNX_FILE),
                    input_names=names["inputs"],
                    output_names=names["outputs"],
                    opset_version=opset,
                    dynamo=False,
                    dynamic_axes=axes,
                )
            if torchscript:
                traced = torch.jit.trace(wrapper, example, check_trace=False)
                torch.jit.save(traced, os.path.join(export_dir, TORCHSCRIPT_FILE))
    finally:
        policy.model.to(device)
        policy.model.train(was_training)


def _check(policy, wrapper, export_dir, names, initial, batch, onnx, torchscript, obs_filter, obs_space) -> list:
    """Runs the written files for CHECK_STEPS steps on ``batch`` episodes against ``policy.compute_actions``;
    returns the kinds of file checked."""
    runners = _runners(export_dir, names, onnx, torchscript)
    rng = np.random.default_rng(0)
    state = [np.stack([s] * batch) for s in initial]
    prev = {PREV_ACTION: _prev_action_example(policy.action_space, batch), PREV_REWARD: np.zeros(batch, np.float32)}
    want_prev = PREV_ACTION in names["inputs"]
    for step in range(CHECK_STEPS):
        raw = _probe_obs(obs_space, batch, rng)
        kwargs = {"prev_action_batch": prev[PREV_ACTION], "prev_reward_batch": prev[PREV_REWARD]} if want_prev else {}
        actions, state_out, extra = policy.compute_actions(
            _policy_obs(raw, obs_space, obs_filter), state, explore=False, **kwargs
        )
        want = [_as_exported(actions, wrapper), extra[SampleBatch.ACTION_DIST_INPUTS], *state_out]
        feeds = {"obs": raw, **dict(zip(names["state_in"], state)), **(prev if want_prev else {})}
        for kind, run in runners.items():
            try:
                got = run(feeds)
            except Exception as e:  # e.g. a Reshape to the traced batch size
                last = ([line for line in str(e).splitlines() if line.strip()] or [""])[-1]  # TorchScript: a traceback
                last = last if last.startswith(type(e).__name__) else f"{type(e).__name__}: {last}"
                raise ExportCheckError(
                    f"the exported {kind} graph fails on a batch of {batch} at step {step}: {last[:300]}"
                ) from e
            _compare(kind, step, batch, names["outputs"], got, want, wrapper.kind)
        state = [np.asarray(s, dtype=np.float32) for s in state_out]
        prev = {PREV_ACTION: np.asarray(actions), PREV_REWARD: rng.normal(size=batch).astype(np.float32)}
    return [kind.lower() for kind in runners]


def _runners(export_dir: str, names: dict, onnx: bool, torchscript: bool) -> dict:
    runners = {}
    if torchscript:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(os.path.join(export_dir, TORCHSCRIPT_FILE))

        def run_torchscript(feeds: dict) -> list:
            with torch.no_grad():
                return [t.numpy() for t in module(*[torch.from_numpy(feeds[n]) for n in names["inputs"]])]

        runners["TorchScript"] = run_torchscript
    if onnx:
        try:
            import onnxruntime as ort
        except ImportError:  # the check runs where onnxruntime is installed (relayrl[export])
            return runners
        session = ort.InferenceSession(os.path.join(export_dir, ONNX_FILE), providers=["CPUExecutionProvider"])
        runners["ONNX"] = lambda feeds: session.run(None, feeds)
    return runners


def _probe_obs(space: gym.Space, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Raw observations for the check: uniform within finite bounds, standard normal where a bound is infinite."""
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, int(space.n), size=batch).astype(np.int64)
    low = np.broadcast_to(space.low, space.shape).astype(np.float64)
    high = np.broadcast_to(space.high, space.shape).astype(np.float64)
    finite = np.isfinite(low) & np.isfinite(high)
    normal = rng.normal(size=(batch, *space.shape))
    uniform = low + rng.uniform(size=(batch, *space.shape)) * np.where(finite, high - low, 0.0)
    return np.where(finite, uniform, normal).astype(np.float32)


def _policy_obs(raw: np.ndarray, space: gym.Space, obs_filter: Any) -> np.ndarray:
    """What the policy takes for ``raw``: one-hot (Discrete), then filtered without updating the filter."""
    x = np.eye(int(space.n), dtype=np.float32)[raw] if isinstance(space, gym.spaces.Discrete) else raw
    return np.asarray(obs_filter(x, update=False), dtype=np.float32) if obs_filter is not None else x


def _as_exported(actions: Any, wrapper: ExportedPolicy) -> np.ndarray:
    """The policy's deterministic actions as the graph outputs them (a Box's clipped to its bounds)."""
    actions = np.asarray(actions)
    if wrapper.kind != "categorical" and wrapper.clip_actions:
        return np.clip(actions, wrapper.act_low.numpy(), wrapper.act_high.numpy())
    return actions


def _compare(kind: str, step: int, batch: int, names: list, got: list, want: list, dist_kind: str) -> None:
    where = f"the exported {kind} graph (batch {batch}) at step {step}"
    for name, g, w in zip(names, got, want):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            raise ExportCheckError(f"{where}: {name} has shape {g.shape}, the policy's {w.shape}")
        if name == "action" and dist_kind == "categorical":
            logits = np.sort(np.asarray(want[1]), axis=-1)
            clear = logits[..., -1] - logits[..., -2] > 1e-4  # a near tie may go either way in float32
            if not np.array_equal(g[clear], w[clear]):
                raise ExportCheckError(f"{where}: actions {g.tolist()}, the policy's {w.tolist()}")
        elif not np.allclose(g, w, rtol=1e-4, atol=1e-5):
            raise ExportCheckError(f"{where}: {name} differs from the policy's by up to {np.abs(g - w).max():.3g}")


def _describe_recurrent(policy: Any, names: dict, initial: list, batch: Any, checked: list) -> dict:
    model_config = policy.config.get("model") or {}
    prev_action = _prev_action_example(policy.action_space, 1)
    prev = {
        PREV_ACTION: {"input": PREV_ACTION, "dtype": str(prev_action.dtype), "shape": [batch, *prev_action.shape[1:]]},
        # As the sampler fed it in training: clipped (clip_rewards) in a single-agent env; in a multi-agent env
        # the sum of the agent's rewards since its previous action.
        PREV_REWARD: {"input": PREV_REWARD, "dtype": "float32", "shape": [batch]},
    }
    with_prev = PREV_ACTION in names["inputs"]
    return {
        "batch": "dynamic" if batch == "batch" else batch,
        "steps_per_call": 1,
        "seq_lens": None,  # one step per row: seq_lens would be all ones, so it is no input
        "state_inputs": names["state_in"],
        "state_outputs": names["state_out"],
        "state_shapes": [[batch, *s.shape] for s in initial],
        "state_dtype": "float32",
        "initial_state": _jsonable(initial),
        "reset": "at each episode's start feed initial_state (and zero prev_action / prev_reward); then each call's"
        " state_out_* as the next call's state_in_*",
        "prev_action": prev[PREV_ACTION] if with_prev else None,
        "prev_reward": {**prev[PREV_REWARD], "clip_rewards": _jsonable(policy.config.get("clip_rewards"))}
        if with_prev
        else None,
        "model": {k: model_config.get(k) for k in ("rnn_type", "lstm_cell_size", "max_seq_len") if k in model_config},
        "checked": {"steps": CHECK_STEPS, "batch": CHECK_BATCH if batch == "batch" else 1, "files": checked},
    }
