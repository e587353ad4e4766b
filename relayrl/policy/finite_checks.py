"""A policy update that would learn from NaN/inf is refused before the optimizer step (config key ``check_nan``).

    for loss in losses:
        loss.backward()
    check_update(policy, losses, train_batch, stats)   # raises NonFiniteLossError; the weights stay as they were
    optimizer.step()

The check is one stacked ``isfinite`` over the losses and the gradients' total norm (one device sync per update);
only when it fails are the loss terms, parameters and batch columns examined to write the message.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

# Columns whose range the message reports (the usual sources of a non-finite loss).
_RANGE_COLUMNS = ("rewards", "advantages", "value_targets", "vf_preds")


class NonFiniteLossError(FloatingPointError):
    """A policy update's loss or gradient is NaN or infinite. Raised before the optimizer step: the weights and
    the optimizer's state are unchanged. The message names the policy, the non-finite loss terms and gradients,
    and the batch's non-finite columns and value ranges."""


def check_update(
    policy: Any, losses: list[torch.Tensor], train_batch: dict, stats: dict | Callable[[], dict] | None = None
) -> None:
    """Raises NonFiniteLossError when a loss or a gradient of ``policy``'s parameters is not finite. Call it
    after ``backward()`` and before the optimizers' ``step()``. ``stats`` are the update's loss terms (a dict,
    or a function returning one, called only to write the message): the non-finite ones are named in it."""
    params = [
        p for opt in policy._optimizers for group in opt.param_groups for p in group["params"] if p.grad is not None
    ]
    # One norm per gradient in one fused call (what clip_grad_norm_ uses), stacked with the losses: a single
    # isfinite and a single sync. A norm overflows to inf only for gradients near 1e19; the search below skips those.
    norms = list(torch._foreach_norm([p.grad for p in params])) if params else []
    if bool(torch.isfinite(torch.stack([loss.detach().sum().float() for loss in losses] + norms)).all()):
        return
    names = {id(p): name for name, p in policy.model.named_parameters()}
    bad_params = [names.get(id(p), f"parameter {j}") for j, p in enumerate(params) if not torch.isfinite(p.grad).all()]
    bad_losses = [j for j, loss in enumerate(losses) if not torch.isfinite(loss.detach()).all()]
    if not bad_params and not bad_losses:
        return  # the norm overflowed: huge but finite gradients are the optimizer's (and grad clipping's) business
    for opt in policy._optimizers:
        opt.zero_grad(set_to_none=True)
    raise NonFiniteLossError(_message(policy, losses, bad_losses, bad_params, len(params), train_batch, stats))


def _message(
    policy: Any,
    losses: list,
    bad_losses: list[int],
    bad_params: list[str],
    num_params: int,
    train_batch: dict,
    stats: dict | Callable[[], dict] | None,
) -> str:
    who = f"policy {type(policy).__name__} (worker {policy.config.get('worker_index', 0)})"
    parts = []
    terms = _loss_terms(stats)
    if bad_losses or terms:
        loss_names = [
            ("loss" if len(losses) == 1 else f"loss[{j}]") + f"={float(losses[j].detach().sum())}" for j in bad_losses
        ]
        parts.append("non-finite loss terms: " + ", ".join(loss_names + terms))
    if bad_params:
        shown = ", ".join(bad_params[:3]) + (", ..." if len(bad_params) > 3 else "")
        parts.append(f"non-finite gradients of {len(bad_params)} of {num_params} parameters ({shown})")
    parts.append(_batch_summary(train_batch))
    return (
        f"{who}: {'; '.join(parts)}. The optimizer step was not applied: the weights are unchanged. A finite "
        "batch points to the learning rate or to unclipped gradients; 'check_nan': False skips this check"
    )


def _loss_terms(stats: dict | Callable[[], dict] | None) -> list[str]:
    """``name=value`` of the non-finite scalars among the update's stats (its loss terms)."""
    if callable(stats):
        try:
            stats = stats()
        except Exception:  # noqa: BLE001 - the message must not fail over a stats function that dislikes NaN
            return []
    if not stats:
        return []
    out = []
    for name, value in stats.items():
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not torch.isfinite(torch.tensor(float(value))):
            out.append(f"{name}={float(value)}")
    return out


def _batch_summary(train_batch: dict) -> str:
    columns = {k: v for k, v in train_batch.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    rows = next((len(v) for v in train_batch.values() if isinstance(v, torch.Tensor) and v.ndim), 0)
    bad = []
    for key, col in columns.items():
        nan, inf = int(torch.isnan(col).sum()), int(torch.isinf(col).sum())
        counts = [f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n]
        if counts:
            bad.append(f"{key} ({' and '.join(counts)})")
    ranges = []
    for key in _RANGE_COLUMNS:
        col = columns.get(key)
        if col is not None and col.numel():
            finite = col[torch.isfinite(col)]
            ranges.append(
                f"{key} min {float(finite.min()):.4g} max {float(finite.max()):.4g}"
                if finite.numel()
                else f"{key} has no finite value"
            )
    summary = f"batch of {rows} rows: " + (f"NaN/inf in {', '.join(bad)}" if bad else "no NaN/inf in its columns")
    return summary + ("; " + ", ".join(ranges) if ranges else "")
