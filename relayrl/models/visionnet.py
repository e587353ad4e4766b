"""VisionNetwork: the convolutional model for image observations ([H, W, C], channels last), as in RLlib 2019.

Filters ``[[out_channels, kernel, stride], ...]`` ("same" padding except the last layer, "valid"); for 84x84
Atari frames the default ``[[16, 8, 4], [32, 4, 2], [256, 11, 1]]`` (Mnih et al. 2013's first two layers, then
an 11x11 layer that sees the whole 11x11 map) ends in a 1x1x256 feature vector. ``features(obs)`` gives that
vector (the torso DQN puts its heads on); ``forward`` adds a 1x1 conv to ``num_outputs`` and ``value_function``
a linear value head on the same features.

Images of any other size (raw 210x160x3 Atari frames, 100x80x1, ...) get the same design without
``conv_filters``: the same two "same" layers, then, when their map is larger than 11x11, an s x s average pool
(stride s, s = ceil(max(h, w) / 11), partial windows at the edges kept) that brings it to at most 11x11, and a
last 256-channel layer whose kernel covers the whole remaining map (h' x w'), so the features are again
1x1x256 and the number of weights stays that of the 84x84 network or less, whatever the image size. 84x84 and
42x42 frames keep exactly their networks (no pool layer). Set ``conv_filters`` to choose the layers yourself.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from relayrl.models.torch_model import TorchModel, get_activation, normc_init

# The last layer of the default stacks sees at most an 11x11 map (the whole map of an 84x84 frame).
_MAX_LAST_MAP = 11


def default_conv_filters(shape: tuple[int, ...]) -> list[list[int]]:
    """The filters for an [H, W, C] observation when ``conv_filters`` is not set: the 42x42 stack for 42x42
    frames, else the 84x84 Atari stack, whose last layer VisionNetwork fits to the map other sizes leave."""
    if tuple(shape[:2]) == (42, 42):
        return [[16, 4, 2], [32, 4, 2], [256, 11, 1]]
    return [[16, 8, 4], [32, 4, 2], [256, _MAX_LAST_MAP, 1]]


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
    structured_obs = False  # reads the image batch as it is

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, num_outputs: int, model_config: dict, name: str):
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        user_filters = model_config.get("conv_filters")
        filters = user_filters or default_conv_filters(obs_space.shape)
        activation = get_activation(model_config.get("conv_activation", "relu"))
        in_ch = int(obs_space.shape[-1])
        layers: list[nn.Module] = []
        for out_ch, kernel, stride in filters[:-1]:
            layers += [_SameConv(in_ch, out_ch, kernel, stride), activation()]
            in_ch = out_ch
        dummy = torch.zeros(1, int(obs_space.shape[-1]), *obs_space.shape[:2])
        with torch.no_grad():
            h, w = nn.Sequential(*layers)(dummy).shape[-2:]  # the map the last layer sees (no RNG used)
        out_ch, kernel, stride = filters[-1]
        if not user_filters and (h, w) != (kernel, kernel):
            # An image of another size than the stack's: pool a larger map to at most 11x11, then a kernel that
            # covers the whole map (see the module docstring).
            if max(h, w) > _MAX_LAST_MAP:
                pool = -(-max(h, w) // _MAX_LAST_MAP)
                window = (min(pool, int(h)), min(pool, int(w)))
                layers.append(nn.AvgPool2d(window, window, ceil_mode=True))
                with torch.no_grad():
                    h, w = nn.Sequential(*layers)(dummy).shape[-2:]
            kernel = (int(h), int(w))
        elif min(h, w) < kernel:
            raise ValueError(
                f"model.conv_filters {filters} leave a {h}x{w} map before the last layer, smaller than"
                f" its kernel {kernel}, for observations of shape {tuple(obs_space.shape)}; change the"
                " filters or leave conv_filters unset (a default for any image size)"
            )
        layers += [nn.Conv2d(in_ch, out_ch, kernel, stride), activation()]
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
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
