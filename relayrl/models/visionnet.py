"""VisionNetwork: the convolutional model for image observations ([H, W, C], channels last), as in RLlib 2019.

Filters ``[[out_channels, kernel, stride], ...]`` ("same" padding except the last layer, "valid"); for 84x84
Atari frames the default ``[[16, 8, 4], [32, 4, 2], [256, 11, 1]]`` (Mnih et al. 2013's first two layers, then
an 11x11 layer that sees the whole 11x11 map) ends in a 1x1x256 feature vector. ``features(obs)`` gives that
vector (the torso DQN puts its heads on); ``forward`` adds a 1x1 conv to ``num_outputs`` and ``value_function``
a linear value head on the same features.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from relayrl.models.torch_model import TorchModel, get_activation, normc_init


def default_conv_filters(shape: tuple[int, ...]) -> list[list[int]]:
    """The filters for an [H, W, C] observation when ``conv_filters`` is not set (84x84 and 42x42 known)."""
    if tuple(shape[:2]) == (84, 84):
        return [[16, 8, 4], [32, 4, 2], [256, 11, 1]]
    if tuple(shape[:2]) == (42, 42):
        return [[16, 4, 2], [32, 4, 2], [256, 11, 1]]
    raise ValueError(f"no default conv_filters for observations of shape {shape}; set model.conv_filters")


class _SameConv(nn.Module):
    """A Conv2d with TensorFlow-style "same" padding (asymmetric when the total is odd)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride)
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            out = -(-size // self.stride)
            total = max((out - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return self.conv(F.pad(x, pads))


class VisionNetwork(TorchModel):
    def __init__(self, obs_space: gym.Space, action_space: gym.Space, num_outputs: int, model_config: dict, name: str):
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        filters = model_config.get("conv_filters") or default_conv_filters(obs_space.shape)
        activation = get_activation(model_config.get("conv_activation", "relu"))
        in_ch = int(obs_space.shape[-1])
        layers: list[nn.Module] = []
        for out_ch, kernel, stride in filters[:-1]:
            layers += [_SameConv(in_ch, out_ch, kernel, stride), activation()]
            in_ch = out_ch
        out_ch, kernel, stride = filters[-1]
        layers += [nn.Conv2d(in_ch, out_ch, kernel, stride), activation()]
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            dummy = torch.zeros(1, int(obs_space.shape[-1]), *obs_space.shape[:2])
            self.num_features = int(np.prod(self.convs(dummy).shape[1:]))
        self.logits = nn.Linear(self.num_features, num_outputs) if num_outputs else None
        if self.logits is not None:
            normc_init(self.logits.weight, 0.01)
            nn.init.zeros_(self.logits.bias)
        self.value_branch = nn.Linear(self.num_features, 1)
        normc_init(self.value_branch.weight, 0.01)
        nn.init.zeros_(self.value_branch.bias)
        self._features: torch.Tensor | None = None

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] observations (any dtype; uint8 frames are used as they are) -> [B, num_features]."""
        x = obs.float().permute(0, 3, 1, 2)
        return self.convs(x).flatten(1)

    def forward(self, input_dict: dict, state: list, seq_lens) -> tuple[torch.Tensor, list]:
        self._features = self.features(input_dict["obs"])
        if self.logits is None:
            return self._features, state
        return self.logits(self._features), state

    def value_function(self) -> torch.Tensor:
        return self.value_branch(self._features).squeeze(-1)
