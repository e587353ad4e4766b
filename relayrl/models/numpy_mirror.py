"""numpy copies of torch layers, for CPU inference without torch's per-call overhead.

The sampler calls a policy's forward pass once per step on a handful of rows; at that size numpy's matrix
products cost the same as torch's and everything around them costs less. A mirror is rebuilt whenever one of
its parameters changed in place: optimizer steps, ``load_state_dict`` and ``copy_`` all bump torch's
per-tensor version counters, so a mirror never serves stale weights.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Iterable

import numpy as np
from torch import nn

_VERSION = operator.attrgetter("_version")

# In-place numpy twins of the activations, called as ``act(x, out=x)``; None is the identity.
ACTIVATIONS: dict[str | None, Any] = {
    "tanh": np.tanh,
    "relu": lambda x, out: np.maximum(x, 0.0, out=out),
    "linear": None,
    None: None,
}


class NumpyMirror:
    """``build()``'s result, rebuilt only when one of ``params`` changed since the last ``get()``."""

    __slots__ = ("_params", "_build", "_versions", "_value")

    def __init__(self, params: Iterable[nn.Parameter], build: Callable[[], Any]):
        self._params = list(params)
        self._build = build
        self._versions: list[int] | None = None
        self._value: Any = None

    def get(self) -> Any:
        versions = list(map(_VERSION, self._params))
        if versions != self._versions:
            self._value = self._build()
            self._versions = versions
        return self._value


def linear_layers(modules: Iterable[nn.Module], types: tuple[type, ...] = (nn.Linear,)) -> list[tuple]:
    """``(W [in, out], b)`` numpy copies of the layers of ``types`` among ``modules``, in order."""
    return [
        (m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in modules if isinstance(m, types)
    ]


def mlp(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], act, last_linear: bool = False) -> np.ndarray:
    """Dense layers with ``act`` (an entry of ACTIVATIONS) after each, but the last when ``last_linear``."""
    last = len(layers) - 1
    for i, (w, b) in enumerate(layers):
        x = x @ w
        x += b
        if act is not None and not (last_linear and i == last):
            act(x, out=x)
    return x
