"""Base class of torch models: ``model(input_dict, state, seq_lens) -> (dist_inputs, state_out)``.

Usage by a policy::

    out, state_out = model({"obs": obs_tensor}, state, seq_lens)
    values = model.value_function()        # value of the last forward's observations

A custom model subclasses ``TorchModel``, is registered with ``ModelCatalog.register_custom_model(name, cls)``
and is selected with ``config["model"]["custom_model"] = name``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn


class TorchModel(nn.Module):
    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        num_outputs: int,
        model_config: dict,
        name: str,
    ):
        super().__init__()
        self.obs_space = obs_space
        self.action_space = action_space
        self.num_outputs = num_outputs
        self.model_config = model_config
        self.name = name

    def forward(self, input_dict: dict, state: list, seq_lens: torch.Tensor | None) -> tuple[torch.Tensor, list]:
        raise NotImplementedError

    def value_function(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no value function")

    def get_initial_state(self) -> list[np.ndarray]:
        return []

    def numpy_forward(self, obs: np.ndarray, value: bool = True) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Optional fast path for CPU inference without autograd: ``(dist_inputs, values)`` in numpy
        (``values`` None unless ``value``).

        Returns None when the model has none; the policy then uses the torch forward."""
        return None

    def numpy_value(self, obs: np.ndarray) -> np.ndarray | None:
        """Optional fast path for value estimates only; None when the model has none."""
        out = self.numpy_forward(obs, value=True)
        return None if out is None else out[1]

    def reset_numpy_mirrors(self) -> None:
        """Models with numpy copies of their layers (``relayrl.models.numpy_mirror``) drop them here."""

    def _apply(self, fn, *args, **kwargs):
        # Moving or casting the model (.to, .cuda, .double) swaps its tensors' data: rebuild the numpy copies.
        out = super()._apply(fn, *args, **kwargs)
        self.reset_numpy_mirrors()
        return out


def normc_init(weight: torch.Tensor, std: float = 1.0) -> None:
    """Gaussian weights with each output unit's incoming weight vector scaled to norm ``std``."""
    with torch.no_grad():
        w = torch.randn_like(weight)
        w *= std / w.pow(2).sum(dim=1, keepdim=True).sqrt()
        weight.copy_(w)


ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "linear": nn.Identity, None: nn.Identity}


def get_activation(name: str | None) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is unknown; choose one of {sorted(k for k in ACTIVATIONS if k)}")
    return ACTIVATIONS[name]
