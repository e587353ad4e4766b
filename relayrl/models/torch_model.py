"""Base class of torch models: ``model(input_dict, state, seq_lens) -> (dist_inputs, state_out)``.

Usage by a policy::

    out, state_out = model({"obs": obs_tensor}, state, seq_lens)
    values = model.value_function()        # value of the last forward's observations

A custom model subclasses ``TorchModel``, is registered with ``ModelCatalog.register_custom_model(name, cls)``
and is selected with ``config["model"]["custom_model"] = name``.

Policies always pass the preprocessed, flat observations as ``input_dict["obs"]``; calling the model adds
``input_dict["obs_flat"]`` (those flat observations) and, when the environment's observation space is a Dict or
Tuple, replaces ``input_dict["obs"]`` by that structure (``restore_original_dimensions``: per-leaf batches, Box
leaves in their shape, Discrete leaves one-hot), so a custom model reads ``input_dict["obs"]["sensors"]``. Its
``obs_space`` is then the flat Box, with the Dict / Tuple space as ``obs_space.original_space``.
Models that want the flat vector only (the built-in ones) set ``structured_obs = False``.

A recurrent model returns its zero state from ``get_initial_state()`` (one unbatched array per state tensor; a
non-empty list is what makes a policy recurrent: sequence learning, and acting in numpy only through
``numpy_step``) and takes padded rows:
``forward(input_dict, state, seq_lens)`` gets ``B * T`` rows, sequence ``b``'s real steps first in its ``T`` rows
(``seq_lens[b]`` of them), ``state`` as ``[B, ...]`` tensors (the state before each sequence), and
``input_dict["prev_actions"]`` / ``["prev_rewards"]`` when the batch has them; it returns ``state_out`` likewise
batched. ``relayrl.models.recurrent.RecurrentNetwork`` (``use_lstm``) is the built-in one.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn


class TorchModel(nn.Module):
    """Base of every torch model: ``model(input_dict, state, seq_lens) -> (dist_inputs, state_out)`` and
    ``value_function()`` for the values of the last forward's observations.

    Args:
        obs_space: the (preprocessed) observation space; a flat Box whose ``original_space`` is the env's Dict or
            Tuple space when it had one.
        action_space: the env's action space.
        num_outputs: size of the action distribution's inputs (``ModelCatalog.get_action_dist``).
        model_config: the ``model`` config (MODEL_DEFAULTS merged with the user's; ``custom_options`` for yours).
        name: a name for the model (used in exports).
    """

    #: Whether ``forward`` gets Dict / Tuple observations in their structure as ``input_dict["obs"]`` (else flat;
    #: ``input_dict["obs_flat"]`` is there either way).
    structured_obs = True

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

    def __call__(self, input_dict: dict, *args, **kwargs):
        # The one place where the losses' and the policy's ``model({"obs": flat}, ...)`` gain obs_flat and the
        # structured obs, so that no loss function needs to know about nested spaces.
        if "obs_flat" not in input_dict:
            flat = input_dict["obs"]
            input_dict = {**input_dict, "obs_flat": flat}
            restore = self._obs_restore_fn()
            if restore is not None and isinstance(flat, torch.Tensor):
                input_dict["obs"] = restore(flat)
        return super().__call__(input_dict, *args, **kwargs)

    def _obs_restore_fn(self):
        """The structure-restoring function of this model's observation space, built on first use (None for a
        flat space, or when ``structured_obs`` is False)."""
        cache = self.__dict__
        if "_obs_restore" not in cache:
            from relayrl.models.preprocessors import obs_restorer

            space = getattr(self, "obs_space", None)
            cache["_obs_restore"] = obs_restorer(space) if self.structured_obs and space is not None else None
        return cache["_obs_restore"]

    def value_function(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no value function")

    def get_initial_state(self) -> list[np.ndarray]:
        return []

    def numpy_forward(self, obs: np.ndarray, value: bool = True) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Optional fast path for CPU inference without autograd: ``(dist_inputs, values)`` in numpy
        (``values`` None unless ``value``).

        Returns None when the model has none; the policy then uses the torch forward."""
        return None

    def numpy_step(
        self, obs: np.ndarray, state: list, prev_actions=None, prev_rewards=None, value: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]] | None:
        """A recurrent model's optional fast path for CPU inference: one step per row from ``state`` (``[B, ...]``
        arrays), as ``(dist_inputs, values or None, state_out)`` in numpy. None when the model has none."""
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
