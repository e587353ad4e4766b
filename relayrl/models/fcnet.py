"""The default model for flat observations: an MLP for the action distribution and one for the value."""

from __future__ import annotations

import operator

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from relayrl.models.torch_model import TorchModel, get_activation, normc_init

# In-place numpy twins of the activations, called as ``act(x, out=x)``.
_NUMPY_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x, out: np.maximum(x, 0.0, out=out), "linear": None, None: None}
_VERSION = operator.attrgetter("_version")


def _mlp(in_size: int, hiddens: list[int], activation: str, out_size: int | None, out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hiddens:
        linear = nn.Linear(in_size, size)
        normc_init(linear.weight, 1.0)
        nn.init.zeros_(linear.bias)
        layers += [linear, get_activation(activation)()]
        in_size = size
    if out_size is not None:
        linear = nn.Linear(in_size, out_size)
        normc_init(linear.weight, out_std)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
    return nn.Sequential(*layers)


class FullyConnectedNetwork(TorchModel):
    """``fcnet_hiddens`` layers of ``fcnet_activation``; a separate value MLP unless ``vf_share_layers``;
    with ``free_log_std`` the second half of the outputs (a Gaussian's log-stds) is a free parameter."""

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, num_outputs: int, model_config: dict, name: str):
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        hiddens = list(model_config.get("fcnet_hiddens", [256, 256]))
        activation = model_config.get("fcnet_activation", "tanh")
        self.free_log_std = bool(model_config.get("free_log_std", False))
        self.vf_share_layers = bool(model_config.get("vf_share_layers", False))
        in_size = int(np.prod(obs_space.shape))
        if self.free_log_std:
            if num_outputs % 2:
                raise ValueError(f"free_log_std needs an even number of outputs, got {num_outputs}")
            num_outputs //= 2
            self.log_std = nn.Parameter(torch.zeros(num_outputs))
        self.hidden = _mlp(in_size, hiddens, activation, None, 1.0)
        last = hiddens[-1] if hiddens else in_size
        self.logits = nn.Linear(last, num_outputs)
        normc_init(self.logits.weight, 0.01)
        nn.init.zeros_(self.logits.bias)
        if self.vf_share_layers:
            self.value_branch = _mlp(last, [], activation, 1, 0.01)
        else:
            self.value_branch = _mlp(in_size, hiddens, activation, 1, 1.0)
        self._activation = activation
        self._features: torch.Tensor | None = None
        self._obs: torch.Tensor | None = None
        self._np_cache: tuple | None = None
        self._np_params: list | None = None

    def forward(self, input_dict: dict, state: list, seq_lens) -> tuple[torch.Tensor, list]:
        obs = input_dict["obs"].float().flatten(1)
        self._obs = obs
        self._features = self.hidden(obs)
        out = self.logits(self._features)
        if self.free_log_std:
            out = torch.cat([out, self.log_std.expand_as(out)], dim=-1)
        return out, state

    def value_function(self) -> torch.Tensor:
        src = self._features if self.vf_share_layers else self._obs
        return self.value_branch(src).squeeze(-1)

    # --- fast CPU inference --------------------------------------------------------------------------------
    def numpy_forward(self, obs: np.ndarray, value: bool = True) -> tuple[np.ndarray, np.ndarray | None] | None:
        params = self._numpy_params()
        if params is None:
            return None
        hidden, (w, b), value_layers, log_std = params
        x = obs.reshape(len(obs), -1).astype(np.float32, copy=False)
        features = _np_mlp(x, hidden, self._np_act)
        out = features @ w
        out += b
        if log_std is not None:
            out = np.concatenate([out, np.broadcast_to(log_std, out.shape)], axis=-1)
        if not value:
            return out, None
        vf = _np_mlp(features if self.vf_share_layers else x, value_layers, self._np_act, last_linear=True)
        return out, vf[:, 0]

    def numpy_value(self, obs: np.ndarray) -> np.ndarray | None:
        """Value estimates only (skips the policy layers when they are not shared)."""
        if self.vf_share_layers:
            out = self.numpy_forward(obs, value=True)
            return None if out is None else out[1]
        params = self._numpy_params()
        if params is None:
            return None
        x = obs.reshape(len(obs), -1).astype(np.float32, copy=False)
        return _np_mlp(x, params[2], self._np_act, last_linear=True)[:, 0]

    def _numpy_params(self):
        """Weights as numpy ``[in, out]`` copies, refreshed whenever a parameter was changed in place
        (optimizer steps and ``load_state_dict`` bump torch's per-tensor version counters). None when the
        model is not on the CPU or its activation has no numpy twin."""
        if self._np_params is None:
            self._np_params = list(self.parameters())
        versions = list(map(_VERSION, self._np_params))
        if self._np_cache is None or self._np_cache[0] != versions:
            if self._activation not in _NUMPY_ACTIVATIONS or self._np_params[0].device.type != "cpu":
                return None
            self._np_act = _NUMPY_ACTIVATIONS[self._activation]
            def linears(seq):
                return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
                        for m in seq if isinstance(m, nn.Linear)]
            logits = (self.logits.weight.detach().numpy().T.copy(), self.logits.bias.detach().numpy().copy())
            log_std = self.log_std.detach().numpy().copy() if self.free_log_std else None
            self._np_cache = (versions, (linears(self.hidden), logits, linears(self.value_branch), log_std))
        return self._np_cache[1]


def _np_mlp(x: np.ndarray, layers: list, act, last_linear: bool = False) -> np.ndarray:
    last = len(layers) - 1
    for i, (w, b) in enumerate(layers):
        x = x @ w
        x += b
        if act is not None and not (last_linear and i == last):
            act(x, out=x)
    return x
