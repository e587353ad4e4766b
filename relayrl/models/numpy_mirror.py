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


# --- recurrent cells (relayrl.models.recurrent's numpy_step) -------------------------------------------------------
# The sigmoid gates are computed as sigmoid(z) = 0.5 * tanh(z / 2) + 0.5, with their weights and biases halved once
# when the mirror is built (exact: a power of two), so that one tanh covers every gate of a step.
def lstm_weights(lstm: nn.LSTM) -> tuple[np.ndarray, np.ndarray]:
    """``(W [in + cell, 4 cell], b)`` of a one-layer ``nn.LSTM`` for ``lstm_step``: the input and recurrent weights
    stacked, the gates reordered from torch's (i, f, g, o) to (i, f, o, g), the sigmoid gates' columns halved."""
    cell = lstm.hidden_size
    w = np.concatenate([lstm.weight_ih_l0.detach().numpy().T, lstm.weight_hh_l0.detach().numpy().T], axis=0)
    b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()
    order = np.r_[0 : 2 * cell, 3 * cell : 4 * cell, 2 * cell : 3 * cell]
    w, b = w[:, order].copy(), b[order].copy()
    w[:, : 3 * cell] *= 0.5
    b[: 3 * cell] *= 0.5
    return w, b


def lstm_step(x: np.ndarray, h: np.ndarray, c: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple:
    """One step of torch's LSTM cell on a batch: ``(h', c')`` (torch: i, f, o = sigmoid, g = tanh,
    ``c' = f c + i g``, ``h' = o tanh(c')``) with ``lstm_weights``' ``w`` and ``b``."""
    cell = h.shape[1]
    z = np.concatenate([x, h], axis=1) @ w
    z += b
    np.tanh(z, out=z)
    gates = z[:, : 3 * cell]  # tanh(z / 2) -> sigmoid(z)
    gates *= 0.5
    gates += 0.5
    c_new = z[:, cell : 2 * cell] * c
    c_new += z[:, :cell] * z[:, 3 * cell :]
    h_new = np.tanh(c_new)
    h_new *= z[:, 2 * cell : 3 * cell]
    return h_new, c_new


def gru_weights(gru: nn.GRU) -> tuple[np.ndarray, ...]:
    """``(W_i [in, 3 cell], b_i, W_h [cell, 3 cell], b_h)`` of a one-layer ``nn.GRU`` for ``gru_step`` (torch's
    gate order r, z, n; the r and z columns halved)."""
    cell = gru.hidden_size
    out = []
    for w, b in ((gru.weight_ih_l0, gru.bias_ih_l0), (gru.weight_hh_l0, gru.bias_hh_l0)):
        w, b = w.detach().numpy().T.copy(), b.detach().numpy().copy()
        w[:, : 2 * cell] *= 0.5
        b[: 2 * cell] *= 0.5
        out += [w, b]
    return tuple(out)


def gru_step(x: np.ndarray, h: np.ndarray, wi: np.ndarray, bi: np.ndarray, wh: np.ndarray, bh: np.ndarray):
    """One step of torch's GRU cell on a batch: ``h' = (1 - z) n + z h`` with ``r, z = sigmoid(...)`` and
    ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))`` (``gru_weights``' arrays)."""
    cell = h.shape[1]
    gi = x @ wi
    gi += bi
    gh = h @ wh
    gh += bh
    rz = gi[:, : 2 * cell]
    rz += gh[:, : 2 * cell]
    np.tanh(rz, out=rz)
    rz *= 0.5
    rz += 0.5
    n = gh[:, 2 * cell :] * rz[:, :cell]
    n += gi[:, 2 * cell :]
    np.tanh(n, out=n)
    h_new = h - n
    h_new *= rz[:, cell:]
    h_new += n
    return h_new
