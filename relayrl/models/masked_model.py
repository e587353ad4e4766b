"""ActionMaskModel: the catalog's default model behind an action mask (``relayrl.models.action_mask``).

With a Dict observation holding an action mask, a policy's flat observation holds the mask's columns next to
the inner observation's (FlattenPreprocessor's sorted-key layout). The wrapper slices them apart, runs the
default model (FullyConnectedNetwork, or VisionNetwork for an image inner observation) on the inner columns only,
so the torso never sees the mask, and sets the logits of illegal actions to the lowest float (``mask_logits``):
the Categorical then gives them probability 0, so they are never sampled and carry no log-probability or
entropy mass, in the torch forward (acting and losses) and in the numpy fast path alike. The value function is
the inner model's. The same design as RLlib's action-masking example (``examples/models/action_mask_model.py``).

Built by ``ModelCatalog.get_model`` for any observation space with a ``model.action_mask_key`` entry (default
``"action_mask"``, PettingZoo's) and no ``custom_model``, whatever the algorithm::

    model = ModelCatalog.get_model(flat_space, Discrete(9), 9, {"fcnet_hiddens": [64]})   # an ActionMaskModel
    logits, _ = model({"obs": flat_obs}, [], None)       # illegal actions' logits: torch.finfo(float32).min
    values = model.value_function()                       # the inner model's
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from relayrl.models.action_mask import ACTION_MASK, check_legal, mask_columns, mask_logits, split_action_mask
from relayrl.models.preprocessors import get_preprocessor
from relayrl.models.torch_model import TorchModel


class ActionMaskModel(TorchModel):
    """The catalog's default model for the observation without its action mask, with illegal actions' logits at
    the lowest float.

    Args:
        obs_space: the policy's flat observation space carrying the Dict as ``original_space`` (or the Dict);
            it must hold the ``model_config["action_mask_key"]`` entry, one column per action.
        action_space: a Discrete space with as many actions as the mask has entries.
        num_outputs: the number of actions (the Categorical's inputs).
        model_config: the ``model`` config; the inner model is built from it.
        name: a name for the model; the inner one is ``name`` too.
    """

    structured_obs = False  # slices the flat observation vector

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, num_outputs: int, model_config: dict, name: str):
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        from relayrl.models.catalog import ModelCatalog

        key = model_config.get("action_mask_key", ACTION_MASK)
        cols = mask_columns(obs_space, action_space, key)
        if cols is None:
            raise ValueError(f"ActionMaskModel: the observation space {obs_space} has no {key!r} entry")
        self.mask_start, self.mask_end = cols
        inner_space = split_action_mask(obs_space, key)[0]
        if inner_space is None:
            raise ValueError(f"the observation holds only its {key!r} entry: the model has nothing else to see")
        # An image keeps its shape (VisionNetwork); anything else is the flat columns FlattenPreprocessor made.
        self.inner_shape: tuple[int, ...] | None = None
        if isinstance(inner_space, gym.spaces.Box) and len(inner_space.shape) == 3:
            self.inner_shape, inner_obs_space = tuple(inner_space.shape), inner_space
        else:
            size = get_preprocessor(inner_space)(inner_space).size
            inner_obs_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
            if isinstance(inner_space, (gym.spaces.Dict, gym.spaces.Tuple)):
                inner_obs_space.original_space = inner_space
        inner_config = {**model_config, "action_mask_key": None}
        self.inner = ModelCatalog.get_model(inner_obs_space, action_space, num_outputs, inner_config, name)

    def _split(self, obs):
        """(inner observations in the inner model's shape, mask columns) of a flat batch (torch or numpy)."""
        # flatten(1) and reshape(-1, ...), not len(obs): a traced export (relayrl.policy.export) keeps any batch size.
        obs = obs.flatten(1) if isinstance(obs, torch.Tensor) else obs.reshape(len(obs), -1)
        s, e = self.mask_start, self.mask_end
        if s == 0:  # "action_mask" sorts first among PettingZoo's keys: a view, no copy
            inner = obs[:, e:]
        elif isinstance(obs, torch.Tensor):
            inner = torch.cat([obs[:, :s], obs[:, e:]], dim=1)
        else:
            inner = np.concatenate([obs[:, :s], obs[:, e:]], axis=1)
        if self.inner_shape is not None:
            inner = inner.reshape(-1, *self.inner_shape)
        return inner, obs[:, s:e]

    def forward(self, input_dict: dict, state: list, seq_lens) -> tuple[torch.Tensor, list]:
        inner, mask = self._split(input_dict["obs"])
        rest = {k: v for k, v in input_dict.items() if k not in ("obs", "obs_flat")}
        logits, state = self.inner({**rest, "obs": inner}, state, seq_lens)
        return mask_logits(logits, mask), state

    def value_function(self) -> torch.Tensor:
        return self.inner.value_function()

    def get_initial_state(self) -> list[np.ndarray]:
        return self.inner.get_initial_state()

    def numpy_forward(self, obs: np.ndarray, value: bool = True) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The inner model's numpy forward with illegal actions' logits at the lowest float; None when the inner
        model has no numpy path. Only acting calls it: an all-zero mask row is a ValueError (``check_legal``)."""
        inner, mask = self._split(obs)
        out = self.inner.numpy_forward(inner, value)
        return None if out is None else (self._mask_numpy(out[0], mask), out[1])

    @staticmethod
    def _mask_numpy(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
        illegal = mask <= 0
        if illegal.all(axis=1).any():
            check_legal(~illegal)  # raises, naming the row
        # In place (the inner forward's output is a fresh array), and check_legal only for a failing batch: measured
        # ~1.5 us a call less than np.where plus check_legal on every call (a one-row step here: ~21 us, ~14 us
        # for the same network without a mask).
        np.copyto(logits, np.finfo(logits.dtype).min, where=illegal)
        return logits

    def numpy_step(self, obs: np.ndarray, state: list, prev_actions=None, prev_rewards=None, value: bool = True):
        """``numpy_forward`` for a recurrent inner model (``use_lstm``): its one-step numpy path, masked alike."""
        inner, mask = self._split(obs)
        out = self.inner.numpy_step(inner, state, prev_actions, prev_rewards, value)
        if out is None:
            return None
        return (self._mask_numpy(out[0], mask), *out[1:])

    def numpy_value(self, obs: np.ndarray) -> np.ndarray | None:
        # Values do not depend on the mask (a final observation may have no legal action).
        return self.inner.numpy_value(self._split(obs)[0])
