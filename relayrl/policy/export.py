"""Export a TorchPolicy for serving: ONNX, TorchScript and a JSON sidecar, observation filter included.

    trainer.export_policy_model("exported/")          # filter of the trainer's local worker baked in
    policy.export_model("exported/")                   # no filter (identity)

    import onnxruntime as ort
    sess = ort.InferenceSession("exported/model.onnx")
    action, dist_inputs = sess.run(None, {"obs": raw_obs_batch.astype(np.float32)})

The exported graph takes the RAW observation batch (as the environment returns it; Discrete observations
as int64 indices, one-hot encoded inside the graph), applies the MeanStdFilter with its mean, std and clip
baked in as constants, runs the model and outputs the deterministic action (argmax for Categorical, the
mean clipped to the Box bounds for DiagGaussian / Deterministic) and the action distribution's inputs.
``export.json`` describes the spaces, the filter state and the clipping, so a server needs nothing else.
The TorchScript file is a ``torch.jit`` archive (load with ``torch.jit.load``, never with pickle). A recurrent
policy's graph also takes and returns its RNN state (and the previous action and reward when its model reads them),
described in the sidecar's "recurrent" section and checked against the policy when written: export_recurrent.py.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from relayrl.models import action_dist as dists
from relayrl.utils.filters import Filter, MeanStdFilter, RunningStat

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"
SIDECAR_FILE = "export.json"
# 1: feed-forward graphs. 2: a recurrent policy's sidecar has a "recurrent" section (its state inputs and outputs).
EXPORT_FORMAT_VERSION = 2


class ExportedPolicy(nn.Module):
    """raw obs -> (filter) -> model -> (deterministic action, dist inputs); everything as graph constants."""

    def __init__(
        self,
        model: nn.Module,
        dist_class: type,
        obs_space: gym.Space,
        action_space: gym.Space,
        filter_consts: tuple[np.ndarray, np.ndarray, float] | None,
    ):
        super().__init__()
        self.model = model
        self.one_hot = int(obs_space.n) if isinstance(obs_space, gym.spaces.Discrete) else 0
        self.has_filter = filter_consts is not None
        mean, inv_std, clip = filter_consts if filter_consts is not None else (np.zeros(1), np.ones(1), 0.0)
        self.register_buffer("obs_mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("obs_inv_std", torch.as_tensor(inv_std, dtype=torch.float32))
        self.clip = float(clip or 0.0)
        self.kind = _dist_kind(dist_class)
        low, high = _bounds(action_space)
        self.clip_actions = low is not None
        self.register_buffer("act_low", torch.as_tensor(low if low is not None else 0.0, dtype=torch.float32))
        self.register_buffer("act_high", torch.as_tensor(high if high is not None else 0.0, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist_inputs, _ = self.model({"obs": self.filtered(obs), "is_training": False}, [], None)
        return self.deterministic_action(dist_inputs), dist_inputs

    def filtered(self, obs: torch.Tensor) -> torch.Tensor:
        """The raw observation batch as the model takes it: one-hot (Discrete), then the filter."""
        x = nn.functional.one_hot(obs.long(), self.one_hot).float() if self.one_hot else obs.float()
        if self.has_filter:
            # Same float32 arithmetic as MeanStdFilter.__call__: (x - mean) * (1 / (std + 1e-8)), then clip.
            x = (x - self.obs_mean) * self.obs_inv_std
            if self.clip:
                x = torch.clamp(x, -self.clip, self.clip)
        return x

    def deterministic_action(self, dist_inputs: torch.Tensor) -> torch.Tensor:
        if self.kind == "categorical":
            return torch.argmax(dist_inputs, dim=-1)
        action = torch.chunk(dist_inputs, 2, dim=-1)[0] if self.kind == "gaussian" else dist_inputs
        if self.clip_actions:
            action = torch.maximum(torch.minimum(action, self.act_high), self.act_low)
        return action


def export_policy(
    policy: Any,
    export_dir: str,
    obs_filter: Filter | None = None,
    raw_obs_space: Any = None,
    onnx: bool = True,
    torchscript: bool = True,
    opset: int = 17,
) -> dict:
    """Writes model.onnx, model.pt and export.json for ``policy`` into ``export_dir``; returns the sidecar.

    ``raw_obs_space``: the environment's observation space when it is Discrete (one-hot in the graph);
    otherwise the graph takes the policy's observation space (the raw one for Box observations). A recurrent
    policy's graph has state inputs and outputs too (relayrl/policy/export_recurrent.py)."""
    if policy.model.get_initial_state():
        from relayrl.policy.export_recurrent import export_recurrent_policy

        return export_recurrent_policy(policy, export_dir, obs_filter, raw_obs_space, onnx, torchscript, opset)
    discrete = isinstance(raw_obs_space, gym.spaces.Discrete)
    obs_space = raw_obs_space if discrete else policy.observation_space
    filter_consts = filter_constants(obs_filter)
    wrapper = ExportedPolicy(policy.model, policy.dist_class, obs_space, policy.action_space, filter_consts)
    wrapper = wrapper.to("cpu").eval()
    example = _example_obs(obs_space)
    os.makedirs(export_dir, exist_ok=True)
    was_training = policy.model.training
    policy.model.eval()
    device = next(policy.model.parameters()).device
    policy.model.to("cpu")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still the portable format
            if onnx:
                torch.onnx.export(
                    wrapper,
                    (example,),
                    os.path.join(export_dir, ONNX_FILE),
                    input_names=["obs"],
                    output_names=["action", "dist_inputs"],
                    opset_version=opset,
                    dynamo=False,
                    dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}, "dist_inputs": {0: "batch"}},
                )
            if torchscript:
                traced = torch.jit.trace(wrapper, (example,), check_trace=False)
                torch.jit.save(traced, os.path.join(export_dir, TORCHSCRIPT_FILE))
    finally:
        policy.model.to(device)
        policy.model.train(was_training)
    sidecar = describe_export(policy, wrapper, obs_space, obs_filter, onnx, torchscript)
    with open(os.path.join(export_dir, SIDECAR_FILE), "w") as f:
        json.dump(sidecar, f, indent=1)
    return sidecar


def describe_export(
    policy: Any, wrapper: ExportedPolicy, obs_space: gym.Space, obs_filter: Filter | None, onnx: bool, torchscript: bool
) -> dict:
    """The sidecar's description of a feed-forward graph (a recurrent one adds its "recurrent" section)."""
    return {
        "format": "relayrl-policy-export",
        "format_version": EXPORT_FORMAT_VERSION,
        "policy_class": type(policy).__name__,
        "files": {"onnx": ONNX_FILE if onnx else None, "torchscript": TORCHSCRIPT_FILE if torchscript else None},
        "inputs": {"obs": "raw observation batch" + (" (int64 indices)" if wrapper.one_hot else " (float32)")},
        "outputs": {"action": "deterministic action", "dist_inputs": f"inputs of {policy.dist_class.__name__}"},
        "observation_space": space_to_json(obs_space),
        "action_space": space_to_json(policy.action_space),
        "observation_filter": _jsonable(obs_filter.to_state()) if obs_filter is not None else {"type": "NoFilter"},
        "action": {
            "distribution": policy.dist_class.__name__,
            "deterministic": "argmax" if wrapper.kind == "categorical" else "mean",
            "clipped_to_bounds": bool(wrapper.clip_actions and wrapper.kind != "categorical"),
        },
    }


def filter_constants(obs_filter: Filter | None) -> tuple[np.ndarray, np.ndarray, float] | None:
    """``(mean, 1 / (std + 1e-8), clip)`` as float32, exactly as MeanStdFilter normalises; None for identity."""
    if obs_filter is None or getattr(obs_filter, "is_identity", False) or not isinstance(obs_filter, MeanStdFilter):
        return None
    state = obs_filter.to_state()
    rs = RunningStat.from_state(state["rs"])
    shape = tuple(state["shape"])
    mean = rs.mean if state["demean"] and rs.n > 0 else np.zeros(shape)
    std = rs.std if state["destd"] and rs.n > 1 else np.ones(shape)
    return mean.astype(np.float32), (1.0 / (std + 1e-8)).astype(np.float32), float(state["clip"] or 0.0)


def space_to_json(space: gym.Space) -> dict:
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _jsonable(space.low),
            "high": _jsonable(space.high),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": _jsonable(space.nvec)}
    return {"type": type(space).__name__, "repr": repr(space)}


def _dist_kind(dist_class: type) -> str:
    if issubclass(dist_class, dists.Categorical):
        return "categorical"
    if issubclass(dist_class, dists.DiagGaussian):
        return "gaussian"
    if dist_class.__name__ == "Deterministic":
        return "deterministic"
    raise NotImplementedError(f"export_model does not support action distribution {dist_class.__name__}")


def _bounds(space: gym.Space) -> tuple[np.ndarray | None, np.ndarray | None]:
    if isinstance(space, gym.spaces.Box) and np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high)):
        return space.low.astype(np.float32), space.high.astype(np.float32)
    return None, None


def _example_obs(space: gym.Space, batch: int = 2) -> torch.Tensor:
    if isinstance(space, gym.spaces.Discrete):
        return torch.zeros((batch,), dtype=torch.int64)
    if not isinstance(space, gym.spaces.Box):
        raise NotImplementedError(f"export_model supports Box and Discrete observations, not {space}")
    return torch.zeros((batch, *space.shape), dtype=torch.float32)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()] if x.ndim else _jsonable(x.item())
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else repr(float(x))
    if isinstance(x, np.integer):
        return int(x)
    return x


# --- several policies (multi-agent) -------------------------------------------------------------------------
POLICY_INDEX_FILE = "policies.json"


def policy_dir_name(policy_id: str) -> str:
    """A directory name for a policy id: the id itself where it is a safe file name, else percent-encoded (every
    character but letters, digits, ``_``, ``-`` and ``.``: "player/1" -> "player%2F1", "p 0" -> "p%200"; a leading
    "." too, so "." and ".." are no paths). Distinct ids give distinct names; ``urllib.parse.unquote`` reverses it."""
    from urllib.parse import quote

    if not isinstance(policy_id, str) or not policy_id:
        raise ValueError(f"a policy id is a non-empty string, got {policy_id!r}")
    name = quote(policy_id, safe="")
    return "%2E" + name[1:] if name.startswith(".") else name


def write_policy_index(export_dir: str, policy_ids: list[str]) -> dict[str, str]:
    """Writes ``export_dir/policies.json`` ({"format_version", "policies": {id: directory}}) and returns the map."""
    dirs = {pid: policy_dir_name(pid) for pid in policy_ids}
    os.makedirs(export_dir, exist_ok=True)
    with open(os.path.join(export_dir, POLICY_INDEX_FILE), "w") as f:
        json.dump({"format_version": EXPORT_FORMAT_VERSION, "policies": dirs}, f, indent=1)
    return dirs
