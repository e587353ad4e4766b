"""Numpy policies for the derivative-free trainers (ES, ARS): a flat parameter vector and a deterministic action.

    policy = make_policy("MLPPolicy", obs_space, action_space, model_config)   # or "LinearPolicy"
    theta = policy.get_flat_weights()
    policy.set_flat_weights(theta + sigma * eps)
    actions = policy.compute_actions(filtered_obs_batch)

Actions are deterministic, as in both papers: Discrete takes the argmax of the logits, Box the network output
clipped to the bounds. Exploration comes from the parameter perturbations (Salimans et al. 2017, sec. 2;
Mania et al. 2018, sec. 3). Pure numpy: a perturbed rollout costs a few matrix-vector products per step.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from relayrl.models.spaces import check_action_space

_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0), "linear": lambda x: x}


class FlatPolicy:
    """Layers ``(W, b)`` stored as views into one float32 vector, so get/set of the flat weights is one copy."""

    def __init__(
        self,
        obs_size: int,
        action_space: gym.Space,
        hiddens: list[int],
        activation: str,
        use_bias: bool,
        seed: int | None = None,
    ):
        check_action_space("ES/ARS", action_space, [gym.spaces.Discrete, gym.spaces.Box])
        discrete = isinstance(action_space, gym.spaces.Discrete)
        out_size = int(action_space.n) if discrete else int(np.prod(action_space.shape))
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        self.action_space = action_space
        self._discrete = isinstance(action_space, gym.spaces.Discrete)
        self._act = _ACTIVATIONS[activation]
        sizes = [obs_size, *hiddens, out_size]
        shapes = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            shapes.append((a, b))
            if use_bias:
                shapes.append((b,))
        self.num_params = int(sum(np.prod(s) for s in shapes))
        self.theta = np.zeros(self.num_params, dtype=np.float32)
        self._views: list[np.ndarray] = []
        offset = 0
        for s in shapes:
            n = int(np.prod(s))
            self._views.append(self.theta[offset : offset + n].reshape(s))
            offset += n
        self._use_bias = use_bias
        self._init_weights(np.random.default_rng(seed), hiddens)

    def _init_weights(self, rng: np.random.Generator, hiddens: list[int]) -> None:
        if not hiddens:
            return  # linear policies start at 0 (ARS, Algorithm 2: M_0 = 0)
        weights = self._views[:: 2 if self._use_bias else 1]
        for i, w in enumerate(weights):
            std = 0.01 if i == len(weights) - 1 else 1.0  # normc init, small last layer (as in fcnet)
            x = rng.standard_normal(w.shape).astype(np.float32)
            w[:] = x * std / np.sqrt(np.square(x).sum(axis=0, keepdims=True))

    def get_flat_weights(self) -> np.ndarray:
        return self.theta.copy()

    def set_flat_weights(self, theta: np.ndarray) -> None:
        theta = np.asarray(theta, dtype=np.float32)
        if theta.shape != self.theta.shape:
            raise ValueError(f"flat weights of shape {theta.shape}, the policy has {self.theta.shape}")
        self.theta[:] = theta

    def forward(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
        step = 2 if self._use_bias else 1
        layers = self._views
        n = len(layers) // step
        for i in range(n):
            x = x @ layers[i * step]
            if self._use_bias:
                x = x + layers[i * step + 1]
            if i < n - 1:
                x = self._act(x)
        return x

    def compute_actions(self, obs: np.ndarray) -> np.ndarray:
        out = self.forward(obs)
        if self._discrete:
            return out.argmax(axis=-1)
        space = self.action_space
        return np.clip(out.reshape(len(out), *space.shape), space.low, space.high).astype(space.dtype)


def make_policy(
    policy_type: str, obs_size: int, action_space: gym.Space, model_config: dict, seed: int | None = None
) -> FlatPolicy:
    """``"LinearPolicy"``: ``a = M x`` (ARS, no bias); ``"MLPPolicy"``: ``fcnet_hiddens`` layers of
    ``fcnet_activation`` with biases (the model config's MLP, as RLlib's ES used)."""
    if policy_type == "LinearPolicy":
        return FlatPolicy(obs_size, action_space, [], "linear", use_bias=False, seed=seed)
    if policy_type == "MLPPolicy":
        return FlatPolicy(
            obs_size,
            action_space,
            list(model_config.get("fcnet_hiddens", [256, 256])),
            model_config.get("fcnet_activation", "tanh"),
            use_bias=True,
            seed=seed,
        )
    raise ValueError(f"unknown policy_type {policy_type!r}; choose 'LinearPolicy' or 'MLPPolicy'")
