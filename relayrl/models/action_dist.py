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
        self._check_some_legal()
        self.last_sample = torch.multinomial(self.log_probs.exp(), 1).squeeze(-1)
        return self.last_sample

    def deterministic_sample(self) -> torch.Tensor:
        self._check_some_legal()
        self.last_sample = self.inputs.argmax(dim=-1)
        return self.last_sample

    def _check_some_legal(self) -> None:
        # mask_logits (relayrl.models.action_mask) gives illegal actions the lowest float: a row made only of those
        # came from an all-zero mask, and softmax would make it a silent uniform draw among illegal actions.
        if (self.inputs == torch.finfo(self.inputs.dtype).min).all(-1).any():
            raise ValueError("the action mask is all zeros: no legal action in a row of the batch (every logit masked)")

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


class MultiActionDistribution(ActionDistribution):
    """Independent distributions over the leaves of a Tuple or Dict action space (Categorical for Discrete,
    MultiCategorical for MultiDiscrete, DiagGaussian for Box), built with ``MultiActionDistribution.for_space``.

    Inputs are the leaves' dist inputs side by side; actions are flat float32 rows, the leaves' columns side by
    side in ``relayrl.models.spaces`` order (a Discrete leaf is one column holding its index). ``logp``,
    ``entropy`` and ``kl`` are sums over the leaves (the leaves are independent)."""

    # Set by for_space on the subclass it returns.
    action_space: gym.Space | None = None
    leaf_classes: tuple = ()
    input_lens: tuple[int, ...] = ()  # dist-input columns per leaf
    action_lens: tuple[int, ...] = ()  # action columns per leaf
    leaf_nvec: tuple = ()  # per leaf: the sub-action sizes of a MultiDiscrete leaf, else None

    def __init__(self, inputs: torch.Tensor, model=None):
        super().__init__(inputs, model)
        self.leaves = [cls(x, model) for cls, x in zip(self.leaf_classes, torch.split(inputs, self.input_lens, -1))]

    @classmethod
    def for_space(cls, action_space: gym.Space) -> type["MultiActionDistribution"]:
        """The distribution class of a nested action space (a subclass holding the space's layout)."""
        from relayrl.models.spaces import ACTION_LEAF_SPACES, UnsupportedSpaceException, flatten_space

        leaf_classes, input_lens, action_lens, nvecs = [], [], [], []
        for leaf in flatten_space(action_space):
            if isinstance(leaf, gym.spaces.Discrete):
                leaf_classes.append(Categorical)
                input_lens.append(int(leaf.n))
                action_lens.append(1)
                nvecs.append(None)
            elif isinstance(leaf, gym.spaces.MultiDiscrete):
                nvec = tuple(int(n) for n in leaf.nvec.ravel())
                leaf_classes.append(_partial_class(MultiCategorical, input_lens=nvec))
                input_lens.append(sum(nvec))
                action_lens.append(len(nvec))
                nvecs.append(nvec)
            elif isinstance(leaf, gym.spaces.Box):
                size = int(np.prod(leaf.shape))
                leaf_classes.append(DiagGaussian)
                input_lens.append(2 * size)
                action_lens.append(size)
                nvecs.append(None)
            else:
                raise UnsupportedSpaceException(
                    action_space, ACTION_LEAF_SPACES, detail=f"its leaf {leaf} is not Discrete, MultiDiscrete or Box"
                )
        attrs = {
            "action_space": action_space,
            "leaf_classes": tuple(leaf_classes),
            "input_lens": tuple(input_lens),
            "action_lens": tuple(action_lens),
            "leaf_nvec": tuple(nvecs),
            "__module__": __name__,
        }
        return type(cls.__name__, (cls,), attrs)

    @classmethod
    def required_model_output_shape(cls, action_space: gym.Space, model_config: dict) -> int:
        layout = cls if cls.action_space is not None else cls.for_space(action_space)
        return int(sum(layout.input_lens))

    def _join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.to(torch.float32).reshape(p.shape[0], -1) for p in parts], dim=-1)

    def sample(self) -> torch.Tensor:
        self.last_sample = self._join([leaf.sample() for leaf in self.leaves])
        return self.last_sample

    def deterministic_sample(self) -> torch.Tensor:
        self.last_sample = self._join([leaf.deterministic_sample() for leaf in self.leaves])
        return self.last_sample

    def _split_actions(self, actions: torch.Tensor) -> list[torch.Tensor]:
        parts = torch.split(actions, self.action_lens, dim=-1)
        # A Categorical takes [B] indices; the other leaves take their columns.
        return [p.squeeze(-1) if cls is Categorical else p for cls, p in zip(self.leaf_classes, parts)]

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        return sum(leaf.logp(a) for leaf, a in zip(self.leaves, self._split_actions(actions)))

    def entropy(self) -> torch.Tensor:
        return sum(leaf.entropy() for leaf in self.leaves)

    def kl(self, other: "MultiActionDistribution") -> torch.Tensor:
        return sum(leaf.kl(o) for leaf, o in zip(self.leaves, other.leaves))

    # --- numpy fast path (TorchPolicy's CPU inference): the same leaves with Categorical's and DiagGaussian's
    # numpy ops; a MultiDiscrete leaf is its sub-actions' Categoricals.
    @classmethod
    def _numpy_parts(cls, inputs: np.ndarray) -> list:
        return np.split(inputs, np.cumsum(cls.input_lens)[:-1], axis=-1)

    @classmethod
    def numpy_sample(cls, inputs: np.ndarray, rng: np.random.Generator, explore: bool) -> np.ndarray:
        out = []
        for x, leaf_cls, nvec in zip(cls._numpy_parts(inputs), cls.leaf_classes, cls.leaf_nvec):
            if nvec is not None:
                subs = np.split(x, np.cumsum(nvec)[:-1], axis=-1)
                out += [Categorical.numpy_sample(s, rng, explore)[:, None] for s in subs]
            elif leaf_cls is Categorical:
                out.append(Categorical.numpy_sample(x, rng, explore)[:, None])
            else:
                out.append(DiagGaussian.numpy_sample(x, rng, explore))
        return np.concatenate([o.astype(np.float32, copy=False) for o in out], axis=-1)

    @classmethod
    def numpy_logp(cls, inputs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions)
        acts = np.split(actions, np.cumsum(cls.action_lens)[:-1], axis=-1)
        total = np.zeros(len(inputs), dtype=np.float32)
        for x, a, cls_, nvec in zip(cls._numpy_parts(inputs), acts, cls.leaf_classes, cls.leaf_nvec):
            if nvec is not None:
                subs = np.split(x, np.cumsum(nvec)[:-1], axis=-1)
                for j, s in enumerate(subs):
                    total += Categorical.numpy_logp(s, a[:, j]).astype(np.float32)
            elif cls_ is Categorical:
                total += Categorical.numpy_logp(x, a[:, 0]).astype(np.float32)
            else:
                total += DiagGaussian.numpy_logp(x, a)
        return total


def _partial_class(base: type, **kwargs) -> type:
    """``base`` with constructor keywords bound, as a class (so the leaf keeps ``required_model_output_shape``)."""

    def __init__(self, inputs, model=None):
        base.__init__(self, inputs, model, **kwargs)

    return type(base.__name__, (base,), {"__init__": __init__, "__module__": __name__})
