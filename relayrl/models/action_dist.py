"""Action distributions over a model's output vector ("dist inputs").

Each class is built from a batch of dist inputs and offers ``sample``, ``deterministic_sample``, ``logp``,
``entropy``, ``kl`` and ``sampled_action_logp`` in torch; ``numpy_sample`` and ``numpy_logp`` are the same
sampling (the same distribution, another RNG) and log-likelihood in numpy, used by the fast CPU inference path
of TorchPolicy.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch


class ActionDistribution:
    def __init__(self, inputs: torch.Tensor, model=None):
        self.inputs = inputs
        self.model = model
        self.last_sample: torch.Tensor | None = None

    @staticmethod
    def required_model_output_shape(action_space: gym.Space, model_config: dict) -> int:
        raise NotImplementedError

    def sample(self) -> torch.Tensor:
        raise NotImplementedError

    def deterministic_sample(self) -> torch.Tensor:
        raise NotImplementedError

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def entropy(self) -> torch.Tensor:
        raise NotImplementedError

    def kl(self, other: "ActionDistribution") -> torch.Tensor:
        raise NotImplementedError

    def sampled_action_logp(self) -> torch.Tensor:
        return self.logp(self.last_sample)

    @staticmethod
    def numpy_sample(inputs: np.ndarray, rng: np.random.Generator, explore: bool) -> np.ndarray:
        """Actions for a batch of dist inputs (the mode when not ``explore``), or raises NotImplementedError."""
        raise NotImplementedError

    @staticmethod
    def numpy_logp(inputs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Log-probabilities of ``actions`` under a batch of dist inputs, or raises NotImplementedError."""
        raise NotImplementedError


class Categorical(ActionDistribution):
    """A categorical over ``n`` discrete actions, parameterised by logits."""

    def __init__(self, inputs: torch.Tensor, model=None):
        super().__init__(inputs, model)
        self.log_probs = torch.log_softmax(inputs, dim=-1)

    @staticmethod
    def required_model_output_shape(action_space: gym.Space, model_config: dict) -> int:
        return int(action_space.n)

    def sample(self) -> torch.Tensor:
        self.last_sample = torch.multinomial(self.log_probs.exp(), 1).squeeze(-1)
        return self.last_sample

    def deterministic_sample(self) -> torch.Tensor:
        self.last_sample = self.inputs.argmax(dim=-1)
        return self.last_sample

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        return self.log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.log_probs.exp() * self.log_probs).sum(-1)

    def kl(self, other: "Categorical") -> torch.Tensor:
        return (self.log_probs.exp() * (self.log_probs - other.log_probs)).sum(-1)

    @staticmethod
    def numpy_sample(inputs: np.ndarray, rng: np.random.Generator, explore: bool) -> np.ndarray:
        # Gumbel-max: argmax(logits + G) with G ~ Gumbel(0, 1) is a sample of the categorical.
        return (inputs + rng.gumbel(size=inputs.shape)).argmax(axis=-1) if explore else inputs.argmax(axis=-1)

    @staticmethod
    def numpy_logp(inputs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        z = inputs - inputs.max(axis=-1, keepdims=True)
        chosen = z[np.arange(len(z)), np.asarray(actions, dtype=np.intp)]
        return chosen - np.log(np.exp(z).sum(axis=-1))


class MultiCategorical(ActionDistribution):
    """Independent categoricals for a MultiDiscrete space; inputs are their logits side by side."""

    def __init__(self, inputs: torch.Tensor, model=None, input_lens: tuple[int, ...] = ()):
        super().__init__(inputs, model)
        self.cats = [Categorical(x) for x in torch.split(inputs, list(input_lens), dim=-1)]

    @staticmethod
    def required_model_output_shape(action_space: gym.Space, model_config: dict) -> int:
        return int(np.sum(action_space.nvec))

    def sample(self) -> torch.Tensor:
        self.last_sample = torch.stack([c.sample() for c in self.cats], dim=-1)
        return self.last_sample

    def deterministic_sample(self) -> torch.Tensor:
        self.last_sample = torch.stack([c.deterministic_sample() for c in self.cats], dim=-1)
        return self.last_sample

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        return sum(c.logp(a) for c, a in zip(self.cats, torch.unbind(actions, dim=-1)))

    def entropy(self) -> torch.Tensor:
        return sum(c.entropy() for c in self.cats)

    def kl(self, other: "MultiCategorical") -> torch.Tensor:
        return sum(c.kl(o) for c, o in zip(self.cats, other.cats))


class DiagGaussian(ActionDistribution):
    """A Gaussian with diagonal covariance; inputs are ``[mean, log_std]`` side by side."""

    def __init__(self, inputs: torch.Tensor, model=None):
        super().__init__(inputs, model)
        self.mean, self.log_std = torch.chunk(inputs, 2, dim=-1)
        self.std = self.log_std.exp()

    @staticmethod
    def required_model_output_shape(action_space: gym.Space, model_config: dict) -> int:
        return int(np.prod(action_space.shape)) * 2

    def sample(self) -> torch.Tensor:
        self.last_sample = self.mean + self.std * torch.randn_like(self.mean)
        return self.last_sample

    def deterministic_sample(self) -> torch.Tensor:
        self.last_sample = self.mean
        return self.last_sample

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - self.mean) / self.std
        return -0.5 * (z * z).sum(-1) - self.log_std.sum(-1) - 0.5 * math.log(2 * math.pi) * self.mean.shape[-1]

    def entropy(self) -> torch.Tensor:
        return (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    def kl(self, other: "DiagGaussian") -> torch.Tensor:
        return (
            other.log_std
            - self.log_std
            + (self.std.pow(2) + (self.mean - other.mean).pow(2)) / (2.0 * other.std.pow(2))
            - 0.5
        ).sum(-1)

    @staticmethod
    def numpy_sample(inputs: np.ndarray, rng: np.random.Generator, explore: bool) -> np.ndarray:
        mean, log_std = np.split(inputs, 2, axis=-1)
        if not explore:
            return mean.astype(np.float32)
        return (mean + np.exp(log_std) * rng.standard_normal(mean.shape).astype(mean.dtype)).astype(np.float32)

    @staticmethod
    def numpy_logp(inputs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        mean, log_std = np.split(inputs, 2, axis=-1)
        z = (actions - mean) * np.exp(-log_std)
        logp = -0.5 * (z * z).sum(-1) - log_std.sum(-1) - 0.5 * math.log(2 * math.pi) * mean.shape[-1]
        return logp.astype(np.float32)


class Deterministic(ActionDistribution):
    """A point mass at the inputs (DDPG's actor output)."""

    @staticmethod
    def required_model_output_shape(action_space: gym.Space, model_config: dict) -> int:
        return int(np.prod(action_space.shape))

    def sample(self) -> torch.Tensor:
        self.last_sample = self.inputs
        return self.inputs

    def deterministic_sample(self) -> torch.Tensor:
        return self.sample()

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        return torch.zeros(actions.shape[0], device=actions.device)

    def entropy(self) -> torch.Tensor:
        return torch.zeros(self.inputs.shape[0], device=self.inputs.device)

    def kl(self, other: "ActionDistribution") -> torch.Tensor:
        return torch.zeros(self.inputs.shape[0], device=self.inputs.device)

