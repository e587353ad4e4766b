"""The default model for flat observations: an MLP for the action distribution and one for the value."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from relayrl.models import numpy_mirror
from relayrl.models.numpy_mirror import NumpyMirror, linear_layers
from relayrl.models.torch_model import TorchModel, get_activation, normc_init


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

    structured_obs = False  # reads the flat observation vector

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
        self._np_act = numpy_mirror.ACTIVATIONS.get(activation)
        self._features: torch.Tensor | None = None
        self._obs: torch.Tensor | None = None
        self.reset_numpy_mirrors()

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
    def reset_numpy_mirrors(self) -> None:
        policy_modules = [*self.hidden, self.logits]
        params = [p for m in policy_modules for p in m.parameters()]
        self._np_policy = NumpyMirror(params + ([self.log_std] if self.free_log_std else []), self._build_np_policy)
        self._np_value = NumpyMirror(self.value_branch.parameters(), self._build_np_value)
        self._np_usable = self._activation in numpy_mirror.ACTIVATIONS and self.logits.weight.device.type == "cpu"

    # Bound methods, not lambdas: a deep copy of the model (a target network) must build from its own layers.
    def _build_np_policy(self) -> tuple:
        log_std = self.log_std.detach().numpy().copy() if self.free_log_std else None
        return linear_layers(self.hidden), linear_layers([self.logits])[0], log_std

    def _build_np_value(self) -> list:
        return linear_layers(self.value_branch)

    def numpy_forward(self, obs: np.ndarray, value: bool = True) -> tuple[np.ndarray, np.ndarray | None] | None:
        if not self._np_usable:
            return None
        hidden, (w, b), log_std = self._np_policy.get()
        x = obs.reshape(len(obs), -1).astype(np.float32, copy=False)
        act = self._np_act
        features = x
        for hw, hb in hidden:  # the hot loop of the sampler: numpy_mirror.mlp without its checks
            features = features @ hw
            features += hb
            if act is not None:
                act(features, out=features)
        out = features @ w
        out += b
        if log_std is not None:
            out = np.concatenate([out, np.broadcast_to(log_std, out.shape)], axis=-1)
        if not value:
            return out, None
        src = features if self.vf_share_layers else x
        return out, numpy_mirror.mlp(src, self._np_value.get(), act, last_linear=True)[:, 0]

    def numpy_value(self, obs: np.ndarray) -> np.ndarray | None:
        """Value estimates only (skips the policy layers when they are not shared)."""
        if self.vf_share_layers:
            out = self.numpy_forward(obs, value=True)
            return None if out is None else out[1]
        if not self._np_usable:
            return None
        x = obs.reshape(len(obs), -1).astype(np.float32, copy=False)
        return numpy_mirror.mlp(x, self._np_value.get(), self._np_act, last_linear=True)[:, 0]
