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


class Adam:
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        params = list(params)
        if not params:
            raise ValueError("Adam got no parameters to optimize")
        self.param_groups = [{"params": params, "lr": lr, "betas": tuple(betas), "eps": eps}]
        self._step = 0
        self._exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self._exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]

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
        group = self.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        self._step += 1
        params = [self.params[i] for i in idx]
        grads = [p.grad for p in params]
        exp_avg = [self._exp_avg[i] for i in idx]
        exp_avg_sq = [self._exp_avg_sq[i] for i in idx]
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
        bias1 = 1 - beta1 ** self._step
        bias2 = 1 - beta2 ** self._step
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, math.sqrt(bias2))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, -lr / bias1)

    def state_dict(self) -> dict:
        group = self.param_groups[0]
        return {
            "step": self._step,
            "lr": group["lr"],
            "betas": list(group["betas"]),
            "eps": group["eps"],
            "exp_avg": [t.clone() for t in self._exp_avg],
            "exp_avg_sq": [t.clone() for t in self._exp_avg_sq],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["exp_avg"]) != len(self._exp_avg):
            raise ValueError(f"optimizer state has {len(state['exp_avg'])} tensors, the model {len(self._exp_avg)}")
        for dst, src in zip(self._exp_avg + self._exp_avg_sq, list(state["exp_avg"]) + list(state["exp_avg_sq"])):
            src = torch.as_tensor(src)
            if dst.shape != src.shape:
                raise ValueError(f"optimizer state tensor of shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
            dst.copy_(src)
        self._step = int(state["step"])
        group = self.param_groups[0]
        group["lr"], group["betas"], group["eps"] = float(state["lr"]), tuple(state["betas"]), float(state["eps"])


class RMSprop:
    """RMSProp (Tieleman & Hinton 2012) with the TensorFlow 1.x semantics the seed configs were tuned for
    (IMPALA's ``decay``/``momentum``/``epsilon``; Espeholt et al. 2018 used ``tf.train.RMSPropOptimizer``):

        ms <- decay * ms + (1 - decay) * g^2          (ms starts at 1, as in TF)
        mom <- momentum * mom + lr * g / sqrt(ms + epsilon)
        p <- p - mom

    Note epsilon inside the square root (torch.optim.RMSprop adds it outside, and starts ms at 0).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        decay: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-10,
    ):
        params = list(params)
        if not params:
            raise ValueError("RMSprop got no parameters to optimize")
        self.param_groups = [{"params": params, "lr": lr, "decay": decay, "momentum": momentum, "eps": epsilon}]
        self._ms = [torch.ones_like(p, memory_format=torch.preserve_format) for p in params]
        self._mom = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]

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
        group = self.param_groups[0]
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        params = [self.params[i] for i in idx]
        grads = [p.grad for p in params]
        ms = [self._ms[i] for i in idx]
        mom = [self._mom[i] for i in idx]
        torch._foreach_mul_(ms, group["decay"])
        torch._foreach_addcmul_(ms, grads, grads, 1 - group["decay"])
        denom = torch._foreach_add(ms, group["eps"])
        torch._foreach_sqrt_(denom)
        torch._foreach_mul_(mom, group["momentum"])
        torch._foreach_addcdiv_(mom, grads, denom, group["lr"])
        torch._foreach_sub_(params, mom)

    def state_dict(self) -> dict:
        group = self.param_groups[0]
        return {
            "lr": group["lr"], "decay": group["decay"], "momentum": group["momentum"], "eps": group["eps"],
            "ms": [t.clone() for t in self._ms],
            "mom": [t.clone() for t in self._mom],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["ms"]) != len(self._ms):
            raise ValueError(f"optimizer state has {len(state['ms'])} tensors, the model {len(self._ms)}")
        for dst, src in zip(self._ms + self._mom, list(state["ms"]) + list(state["mom"])):
            src = torch.as_tensor(src)
            if dst.shape != src.shape:
                raise ValueError(f"optimizer state tensor of shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
            dst.copy_(src)
        group = self.param_groups[0]
        for k in ("lr", "decay", "momentum", "eps"):
            group[k] = float(state[k])
