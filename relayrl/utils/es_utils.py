"""Numpy helpers for Evolution Strategies (pure numpy, no Ray).

Reference: Salimans et al. 2017, "Evolution Strategies as a Scalable
Alternative to Reinforcement Learning".

* Fitness shaping (section 2.1 / appendix): returns are replaced by their
  centered ranks in ``[-0.5, 0.5]`` before estimating the gradient
  ``g = 1/(n sigma) sum_i F_i eps_i`` (Algorithm 1/2).
* Shared noise table (section 2.1, "Algorithm 2"): every worker holds the same
  block of Gaussian noise and communicates only scalar indices into it.
* Flat-vector optimizers (SGD with momentum, Adam) applied to the ES gradient
  estimate, following the design of the paper's reference implementation.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import numpy as np

__all__ = [
    "SGD",
    "Adam",
    "SharedNoiseTable",
    "batched_weighted_sum",
    "compute_centered_ranks",
    "compute_ranks",
    "create_noise",
]


# --------------------------------------------------------------------------- fitness shaping
def compute_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks in ``[0, len(x) - 1]`` of a flat array; ties are broken by position.

    The smallest value gets rank 0. A stable sort makes equal values ranked in
    the order they appear.
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"compute_ranks expects a 1-D array, got shape {x.shape}")
    ranks = np.empty(x.size, dtype=np.int64)
    ranks[np.argsort(x, kind="stable")] = np.arange(x.size)
    return ranks


def compute_centered_ranks(x: np.ndarray) -> np.ndarray:
    """Fitness shaping of Salimans et al. 2017 (section 2.1): centered ranks.

    Ranks are taken over *all* elements of ``x`` (e.g. the ``[n, 2]`` array of
    antithetic returns), mapped linearly to ``[-0.5, 0.5]`` and returned with
    the shape of ``x`` as float64. A single element maps to 0.
    """
    x = np.asarray(x)
    flat_ranks = compute_ranks(x.ravel()).astype(np.float64)
    if x.size <= 1:
        return np.zeros(x.shape, dtype=np.float64)
    centered = flat_ranks / (x.size - 1) - 0.5
    return centered.reshape(x.shape)


def batched_weighted_sum(
    weights: Iterable[float], vecs: Iterable[np.ndarray], batch_size: int = 500
) -> tuple[np.ndarray, int]:
    """Compute ``sum_i weights[i] * vecs[i]`` in batches (ES gradient, Algorithm 2).

    ``vecs`` may be a lazy iterable (e.g. a generator of noise-table views), so
    at most ``batch_size`` vectors are stacked at a time. The dot products are
    done in float32, like the noise.

    Returns:
        ``(total, num_items)`` where ``total`` has the shape of one vector.

    Raises:
        ValueError: if the iterables are empty or have different lengths.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pairs = zip(weights, vecs, strict=True)
    total: np.ndarray | None = None
    num_items = 0
    while True:
        batch = list(islice(pairs, batch_size))
        if not batch:
            break
        batch_weights = np.asarray([w for w, _ in batch], dtype=np.float32)
        batch_vecs = np.asarray([v for _, v in batch], dtype=np.float32)
        partial = np.dot(batch_weights, batch_vecs)
        total = partial if total is None else total + partial
        num_items += len(batch)
    if total is None:
        raise ValueError("batched_weighted_sum got no items")
    return total, num_items


# --------------------------------------------------------------------------- shared noise
def create_noise(size: int, seed: int) -> np.ndarray:
    """Deterministic float32 standard-normal block of length ``size`` for ``seed``."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return np.random.default_rng(seed).standard_normal(size, dtype=np.float32)


class SharedNoiseTable:
    """Read-only block of Gaussian noise indexed by offsets (Salimans et al. 2017, sec. 2.1).

    Workers sample an offset ``i`` and use ``noise[i:i + dim]`` as the
    perturbation ``eps``; only ``i`` needs to be communicated. The table never
    copies: it keeps a read-only *view* of the given buffer (which may already
    be a read-only array from a shared object store), and :meth:`get` returns
    views into it.
    """

    def __init__(self, noise: np.ndarray) -> None:
        if not isinstance(noise, np.ndarray) or noise.ndim != 1:
            raise ValueError("noise must be a 1-D numpy array")
        if not np.issubdtype(noise.dtype, np.floating):
            raise ValueError(f"noise must be floating point, got dtype {noise.dtype}")
        view = noise.view()  # a view, not a copy: shares the (possibly shared) buffer
        if view.flags.writeable:
            view.flags.writeable = False
        self.noise = view

    @property
    def size(self) -> int:
        """Number of scalars in the table."""
        return int(self.noise.size)

    def get(self, i: int, dim: int) -> np.ndarray:
        """Read-only view ``noise[i:i + dim]``; raises IndexError if out of range."""
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if i < 0 or i + dim > self.size:
            raise IndexError(f"slice [{i}, {i + dim}) outside noise table of size {self.size}")
        return self.noise[i : i + dim]

    def sample_index(self, rng: np.random.Generator, dim: int) -> int:
        """Offset drawn uniformly from ``[0, size - dim]`` (both ends included)."""
        if dim <= 0 or dim > self.size:
            raise ValueError(f"dim must be in [1, {self.size}], got {dim}")
        return int(rng.integers(0, self.size - dim + 1))


# --------------------------------------------------------------------------- optimizers
class _FlatOptimizer:
    """Base class: ``update(theta, globalg)`` takes one step that *descends* along ``globalg``.

    Callers that want to ascend the ES objective pass ``-g``. Returns the new
    parameter vector (``theta`` is not modified) and the update ratio
    ``||step|| / ||theta||``, a diagnostic of the relative step size. The
    optimizer state is kept in float32 (like the noise table); the new
    parameters keep ``theta``'s floating dtype.
    """

    def __init__(self, num_params: int, stepsize: float) -> None:
        if num_params <= 0:
            raise ValueError(f"num_params must be positive, got {num_params}")
        if stepsize <= 0:
            raise ValueError(f"stepsize must be positive, got {stepsize}")
        self.num_params = num_params
        self.stepsize = stepsize
        self.t = 0

    def update(self, theta: np.ndarray, globalg: np.ndarray) -> tuple[np.ndarray, float]:
        """Apply one step; returns ``(new_theta, ||step|| / ||theta||)``."""
        theta = np.asarray(theta)
        globalg = np.asarray(globalg)
        expected = (self.num_params,)
        if theta.shape != expected or globalg.shape != expected:
            raise ValueError(f"theta {theta.shape} and globalg {globalg.shape} must both have shape {expected}")
        self.t += 1
        step = self._compute_step(globalg)
        step_norm = float(np.linalg.norm(step))
        theta_norm = float(np.linalg.norm(theta))
        if theta_norm > 0:
            ratio = step_norm / theta_norm
        else:
            ratio = float("inf") if step_norm > 0 else 0.0
        out_dtype = theta.dtype if np.issubdtype(theta.dtype, np.floating) else np.float64
        return (theta + step).astype(out_dtype, copy=False), ratio

    def _compute_step(self, globalg: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class SGD(_FlatOptimizer):
    """SGD with momentum as an exponential moving average of the gradient.

    ``v <- momentum * v + (1 - momentum) * g``;  ``step = -stepsize * v``.
    """

    def __init__(self, num_params: int, stepsize: float, momentum: float = 0.9) -> None:
        super().__init__(num_params, stepsize)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.v = np.zeros(num_params, dtype=np.float32)

    def _compute_step(self, globalg: np.ndarray) -> np.ndarray:
        v = self.momentum * self.v + (1.0 - self.momentum) * globalg
        self.v = v.astype(self.v.dtype, copy=False)
        return -self.stepsize * self.v


class Adam(_FlatOptimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1, with the bias-corrected step size of sec. 2).

    ``m <- b1 m + (1 - b1) g``;  ``v <- b2 v + (1 - b2) g^2``;
    ``a_t = stepsize * sqrt(1 - b2^t) / (1 - b1^t)``;  ``step = -a_t m / (sqrt(v) + eps)``.
    """

    def __init__(
        self,
        num_params: int,
        stepsize: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
    ) -> None:
        super().__init__(num_params, stepsize)
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {beta}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.m = np.zeros(num_params, dtype=np.float32)
        self.v = np.zeros(num_params, dtype=np.float32)

    def _compute_step(self, globalg: np.ndarray) -> np.ndarray:
        a = self.stepsize * np.sqrt(1.0 - self.beta2**self.t) / (1.0 - self.beta1**self.t)
        m = self.beta1 * self.m + (1.0 - self.beta1) * globalg
        v = self.beta2 * self.v + (1.0 - self.beta2) * (globalg * globalg)
        self.m = m.astype(self.m.dtype, copy=False)
        self.v = v.astype(self.v.dtype, copy=False)
        return -a * self.m / (np.sqrt(self.v) + self.epsilon)
