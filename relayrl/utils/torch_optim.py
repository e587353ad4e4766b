"""A lean Adam (Kingma & Ba 2015, Algorithm 1) for small policy networks.

``torch.optim.Optimizer`` imports ``torch._dynamo`` on first use, which costs about 1.5 s of start-up on our
machines: more than the rest of building a trainer. This Adam has the same update, ``param_groups`` (so lr
schedules work), ``zero_grad``, ``step``, ``state_dict`` and ``load_state_dict``, and uses torch's multi-tensor
``_foreach`` kernels so a step over all parameters is a handful of kernel calls.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


class _ForeachOptimizer:
    """What the lean optimizers share: one parameter group, per-parameter state buffers updated with torch's
    ``_foreach`` kernels, and a state dict of hyperparameters plus buffers (for checkpoints)."""

    _buffers: tuple[str, ...] = ()
    _hyper: tuple[str, ...] = ()

    def __init__(self, params: Iterable[torch.nn.Parameter], **hyper):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got no parameters to optimize")
        self.param_groups = [{"params": params, **hyper}]
        # Steps taken per parameter: one without a gradient is skipped and keeps its count, as in torch.optim
        # (Adam's bias correction depends on it).
        self._steps = [0] * len(params)
        self._state = {name: [self._init_buffer(name, p) for p in params] for name in self._buffers}

    def _init_buffer(self, name: str, p: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(p, memory_format=torch.preserve_format)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return self.param_groups[0]["params"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        by_step: dict[int, list[int]] = {}
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._steps[i] += 1
                by_step.setdefault(self._steps[i], []).append(i)
        for step, idx in by_step.items():  # one group unless some parameters skipped steps
            params = [self.params[i] for i in idx]
            buffers = {name: [bufs[i] for i in idx] for name, bufs in self._state.items()}
            self._update(params, [p.grad for p in params], buffers, self.param_groups[0], step)

    def _update(self, params: list, grads: list, buffers: dict[str, list], group: dict, step: int) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        group = self.param_groups[0]
        out = {k: list(group[k]) if isinstance(group[k], tuple) else group[k] for k in self._hyper}
        out["step"] = list(self._steps)  # per parameter (an int in checkpoints of format 1: still read)
        out.update({name: [t.clone() for t in bufs] for name, bufs in self._state.items()})
        return out

    def load_state_dict(self, state: dict) -> None:
        for name, bufs in self._state.items():
            if len(state[name]) != len(bufs):
                raise ValueError(f"optimizer state has {len(state[name])} tensors, the model {len(bufs)}")
            for dst, src in zip(bufs, state[name]):
                src = torch.as_tensor(src)
                if dst.shape != src.shape:
                    raise ValueError(f"optimizer state tensor of shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
        for name, bufs in self._state.items():
            for dst, src in zip(bufs, state[name]):
                dst.copy_(torch.as_tensor(src))
        steps = state.get("step", 0)
        self._steps = [int(s) for s in steps] if isinstance(steps, (list, tuple)) else [int(steps)] * len(self._steps)
        group = self.param_groups[0]
        for k in self._hyper:
            group[k] = tuple(float(v) for v in state[k]) if isinstance(group[k], tuple) else float(state[k])


class Adam(_ForeachOptimizer):
    _buffers = ("exp_avg", "exp_avg_sq")
    _hyper = ("lr", "betas", "eps")

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps)

    def _update(self, params: list, grads: list, buffers: dict[str, list], group: dict, step: int) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        exp_avg, exp_avg_sq = buffers["exp_avg"], buffers["exp_avg_sq"]
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
        bias1 = 1 - beta1**step
        bias2 = 1 - beta2**step
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, math.sqrt(bias2))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, -lr / bias1)


class RMSprop(_ForeachOptimizer):
    """RMSProp (Tieleman & Hinton 2012) with the TensorFlow 1.x semantics the seed configs were tuned for
    (IMPALA's ``decay``/``momentum``/``epsilon``; Espeholt et al. 2018 used ``tf.train.RMSPropOptimizer``):

        ms <- decay * ms + (1 - decay) * g^2          (ms starts at 1, as in TF)
        mom <- momentum * mom + lr * g / sqrt(ms + epsilon)
        p <- p - mom

    Note epsilon inside the square root (torch.optim.RMSprop adds it outside, and starts ms at 0).
    """

    _buffers = ("ms", "mom")
    _hyper = ("lr", "decay", "momentum", "eps")

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        decay: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-10,
    ):
        super().__init__(params, lr=lr, decay=decay, momentum=momentum, eps=epsilon)

    def _init_buffer(self, name: str, p: torch.Tensor) -> torch.Tensor:
        if name == "ms":
            return torch.ones_like(p, memory_format=torch.preserve_format)
        return super()._init_buffer(name, p)

    def _update(self, params: list, grads: list, buffers: dict[str, list], group: dict, step: int) -> None:
        ms, mom = buffers["ms"], buffers["mom"]
        torch._foreach_mul_(ms, group["decay"])
        torch._foreach_addcmul_(ms, grads, grads, 1 - group["decay"])
        denom = torch._foreach_add(ms, group["eps"])
        torch._foreach_sqrt_(denom)
        torch._foreach_mul_(mom, group["momentum"])
        torch._foreach_addcdiv_(mom, grads, denom, group["lr"])
        torch._foreach_sub_(params, mom)
