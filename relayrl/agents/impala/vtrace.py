"""V-trace off-policy correction (pure torch, no Ray).

Reference: Espeholt et al. 2018, "IMPALA: Scalable Distributed Deep-RL with
Importance Weighted Actor-Learner Architectures", section 4.1.

The n-step V-trace target for ``V(x_s)`` is (eq. 1)::

    v_s = V(x_s) + sum_{t=s}^{s+n-1} gamma^{t-s} (prod_{i=s}^{t-1} c_i) delta_t V

with the temporal difference ``delta_t V = rho_t (r_t + gamma V(x_{t+1}) - V(x_t))``,
truncated importance weights ``rho_t = min(rho_bar, pi(a_t|x_t) / mu(a_t|x_t))``
and "trace cutting" coefficients ``c_i = min(c_bar, pi(a_i|x_i) / mu(a_i|x_i))``
(here ``c_bar = 1``, i.e. ``lambda = 1``). Section 4.1 (remark 1) gives the
equivalent backward recursion used below::

    v_s - V(x_s) = delta_s V + gamma c_s (v_{s+1} - V(x_{s+1}))

The policy-gradient advantage (section 4.2) is
``rho_s (r_s + gamma v_{s+1} - V(x_s))`` with its own truncation level.

All tensors are time-major ``[T, B]``. The discount is per step: callers pass
``discounts = gamma * (1 - terminated)`` so that an episode end inside the
sequence stops bootstrapping (``gamma^{t-s}`` becomes ``prod_{i=s}^{t-1} gamma_i``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["VTraceReturns", "vtrace_from_logits"]


class VTraceReturns(NamedTuple):
    """Outputs of :func:`vtrace_from_logits` (both detached, shape ``[T, B]``).

    Attributes:
        vs: V-trace value targets ``v_s`` (eq. 1).
        pg_advantages: ``rho_s (r_s + gamma_s v_{s+1} - V(x_s))`` (section 4.2).
    """

    vs: Tensor
    pg_advantages: Tensor


def _clip(rhos: Tensor, threshold: float | None) -> Tensor:
    """``min(threshold, rhos)``; ``None`` means no truncation."""
    if threshold is None:
        return rhos
    if threshold <= 0:
        raise ValueError(f"clip threshold must be positive or None, got {threshold}")
    return torch.clamp(rhos, max=threshold)


def _check_shapes(
    behaviour_logp: Tensor,
    target_logp: Tensor,
    discounts: Tensor,
    rewards: Tensor,
    values: Tensor,
    bootstrap_value: Tensor,
) -> None:
    if values.dim() != 2:
        raise ValueError(f"values must be time-major [T, B], got shape {tuple(values.shape)}")
    named = {
        "behaviour_logp": behaviour_logp,
        "target_logp": target_logp,
        "discounts": discounts,
        "rewards": rewards,
    }
    for name, tensor in named.items():
        if tensor.shape != values.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(values.shape)}")
    if bootstrap_value.shape != values.shape[1:]:
        raise ValueError(
            f"bootstrap_value has shape {tuple(bootstrap_value.shape)}, expected {tuple(values.shape[1:])}"
        )


@torch.no_grad()
def vtrace_from_logits(
    behaviour_logp: Tensor,
    target_logp: Tensor,
    discounts: Tensor,
    rewards: Tensor,
    values: Tensor,
    bootstrap_value: Tensor,
    clip_rho_threshold: float | None = 1.0,
    clip_pg_rho_threshold: float | None = 1.0,
) -> VTraceReturns:
    """Compute V-trace targets and policy-gradient advantages (IMPALA, eq. 1).

    Args:
        behaviour_logp: ``log mu(a_t | x_t)`` of the actor that generated the data, ``[T, B]``.
        target_logp: ``log pi(a_t | x_t)`` under the learner's current policy, ``[T, B]``.
        discounts: per-step ``gamma_t = gamma * (1 - terminated_t)``, ``[T, B]``.
        rewards: ``r_t``, ``[T, B]``.
        values: ``V(x_t)``, ``[T, B]``.
        bootstrap_value: ``V(x_T)`` for the state after the last step, ``[B]``.
        clip_rho_threshold: ``rho_bar`` for the value targets; ``None`` disables truncation.
        clip_pg_rho_threshold: truncation of ``rho_s`` in the policy-gradient
            advantage (section 4.2); ``None`` disables truncation.

    Returns:
        :class:`VTraceReturns` with ``vs`` and ``pg_advantages``, both ``[T, B]`` and detached.
    """
    _check_shapes(behaviour_logp, target_logp, discounts, rewards, values, bootstrap_value)

    # Importance ratios pi/mu from log-probabilities (section 4.1).
    rhos = torch.exp(target_logp - behaviour_logp)
    clipped_rhos = _clip(rhos, clip_rho_threshold)  # rho_t in eq. 1
    cs = torch.clamp(rhos, max=1.0)  # c_i with c_bar = 1 ("lambda" = 1)

    # V(x_{t+1}) with V(x_T) = bootstrap_value.
    values_tp1 = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    # delta_t V = rho_t (r_t + gamma_t V(x_{t+1}) - V(x_t)).
    deltas = clipped_rhos * (rewards + discounts * values_tp1 - values)

    # Backward recursion (section 4.1, remark 1), vectorised over the batch:
    # v_s - V(x_s) = delta_s + gamma_s c_s (v_{s+1} - V(x_{s+1})), with v_T - V(x_T) = 0.
    vs_minus_v = torch.empty_like(values)
    acc = torch.zeros_like(bootstrap_value)
    for t in reversed(range(values.shape[0])):
        acc = deltas[t] + discounts[t] * cs[t] * acc
        vs_minus_v[t] = acc
    vs = vs_minus_v + values

    # Policy-gradient advantage (section 4.2): rho_s (r_s + gamma_s v_{s+1} - V(x_s)),
    # where v_T = bootstrap_value.
    vs_tp1 = torch.cat([vs[1:], bootstrap_value.unsqueeze(0)], dim=0)
    clipped_pg_rhos = _clip(rhos, clip_pg_rho_threshold)
    pg_advantages = clipped_pg_rhos * (rewards + discounts * vs_tp1 - values)

    return VTraceReturns(vs=vs.detach(), pg_advantages=pg_advantages.detach())
