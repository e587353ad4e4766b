"""RandomPolicy: uniformly random actions, legal ones only when the observation carries an action mask; never learns.

An opponent for multi-agent training (``multiagent: {policies: {"random": (RandomPolicy, None, None, {})},
policies_to_train: ["learner"]}``) and a baseline for evaluation.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from relayrl.models.action_mask import ACTION_MASK, mask_columns
from relayrl.policy.policy import Policy


class RandomPolicy(Policy):
    """Args: the (preprocessed) observation space, the action space, a config (``seed``; ``model.action_mask_key``
    names the mask entry, default ``"action_mask"``)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, config: dict):
        super().__init__(observation_space, action_space, config)
        key = (config.get("model") or {}).get("action_mask_key", ACTION_MASK)
        self._mask = mask_columns(observation_space, action_space, key)
        self._rng = np.random.default_rng(config.get("seed"))
        action_space.seed(None if config.get("seed") is None else int(config["seed"]))

    def compute_actions(self, obs_batch: Any, state_batches: list | None = None, *args: Any, **kwargs: Any):
        n = len(obs_batch)
        if self._mask is None:
            return np.array([self.action_space.sample() for _ in range(n)]), [], {}
        start, end = self._mask
        legal = np.asarray(obs_batch)[:, start:end] > 0
        if not legal.any(axis=1).all():
            raise ValueError("an observation's action mask is all zeros: no legal action to choose from")
        # a uniform draw among each row's legal actions: the arg max of random keys over the legal entries
        keys = np.where(legal, self._rng.random(legal.shape), -1.0)
        return keys.argmax(axis=1).astype(np.int64), [], {}

    def learn_on_batch(self, samples: Any) -> dict:
        return {}

    def compute_gradients(self, postprocessed_batch: Any) -> tuple[list, dict]:
        return [], {}

    def apply_gradients(self, gradients: Any) -> None:
        pass

    def get_weights(self) -> dict:
        return {}

    def set_weights(self, weights: Any) -> None:
        pass
