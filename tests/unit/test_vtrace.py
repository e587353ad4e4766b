"""V-trace (Espeholt et al. 2018, sec. 4.1, eq. 1) against an independent numpy reference.

The reference uses the *sum* form of eq. 1 with explicit nested loops,
not the backward recursion used by the implementation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relayrl.agents.impala.vtrace import VTraceReturns, vtrace_from_logits

T, B = 7, 3


def _clip(x: float, threshold: float | None) -> float:
    return x if threshold is None else min(threshold, x)


def reference_vtrace(inputs: dict[str, np.ndarray], rho_bar, pg_rho_bar):
    """v_s = V(x_s) + sum_{t>=s} (prod_{i=s}^{t-1} gamma_i c_i) rho_t delta_t  (eq. 1)."""
    blp, tlp = inputs["behaviour_logp"], inputs["target_logp"]
    disc, rew = inputs["discounts"], inputs["rewards"]
    val, boot = inputs["values"], inputs["bootstrap_value"]
    n_t, n_b = val.shape

    def value_at(t: int, b: int) -> float:
        return val[t, b] if t < n_t else boot[b]

    vs = np.zeros((n_t, n_b))
    pg = np.zeros((n_t, n_b))
    for b in range(n_b):
        for s in range(n_t):
            total = val[s, b]
            for t in range(s, n_t):
                coef = 1.0
                for i in range(s, t):
                    c_i = min(1.0, np.exp(tlp[i, b] - blp[i, b]))
                    coef *= disc[i, b] * c_i
                rho_t = _clip(np.exp(tlp[t, b] - blp[t, b]), rho_bar)
                delta = rho_t * (rew[t, b] + disc[t, b] * value_at(t + 1, b) - val[t, b])
                total += coef * delta
            vs[s, b] = total
        for s in range(n_t):
            vs_next = vs[s + 1, b] if s + 1 < n_t else boot[b]
            rho_s = _clip(np.exp(tlp[s, b] - blp[s, b]), pg_rho_bar)
            pg[s, b] = rho_s * (rew[s, b] + disc[s, b] * vs_next - val[s, b])
    return vs, pg


def make_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    behaviour_logp = np.log(rng.uniform(0.05, 1.0, size=(T, B)))
    log_rhos = rng.uniform(-1.5, 1.5, size=(T, B))
    discounts = rng.uniform(0.8, 0.99, size=(T, B))
    discounts[3, 0] = 0.0  # episode end inside the sequence
    discounts[5, 2] = 0.0
    return {
        "behaviour_logp": behaviour_logp,
        "target_logp": behaviour_logp + log_rhos,
        "discounts": discounts,
        "rewards": rng.normal(size=(T, B)),
        "values": rng.normal(size=(T, B)),
        "bootstrap_value": rng.normal(size=(B,)),
    }


def run_torch(inputs: dict[str, np.ndarray], **kwargs) -> VTraceReturns:
    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    return vtrace_from_logits(**tensors, **kwargs)


def test_inputs_cover_both_sides_of_clip_threshold() -> None:
    inputs = make_inputs()
    rhos = np.exp(inputs["target_logp"] - inputs["behaviour_logp"])
    assert (rhos > 1.0).sum() >= 3 and (rhos < 1.0).sum() >= 3
    assert (inputs["discounts"] == 0.0).sum() == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "rho_bar, pg_rho_bar",
    [(1.0, 1.0), (None, None), (1.0, None), (None, 1.0), (0.7, 1.3)],
)
def test_matches_sum_form_reference(seed: int, rho_bar, pg_rho_bar) -> None:
    inputs = make_inputs(seed)
    out = run_torch(inputs, clip_rho_threshold=rho_bar, clip_pg_rho_threshold=pg_rho_bar)
    ref_vs, ref_pg = reference_vtrace(inputs, rho_bar, pg_rho_bar)
    assert out.vs.shape == (T, B) and out.pg_advantages.shape == (T, B)
    assert out.vs.dtype == torch.float64
    np.testing.assert_allclose(out.vs.numpy(), ref_vs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.pg_advantages.numpy(), ref_pg, atol=1e-5, rtol=0)


def test_clipping_changes_result() -> None:
    """Guards the parametrised test: clipped and unclipped targets must differ."""
    inputs = make_inputs()
    clipped = run_torch(inputs, clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0)
    unclipped = run_torch(inputs, clip_rho_threshold=None, clip_pg_rho_threshold=None)
    assert not torch.allclose(clipped.vs, unclipped.vs, atol=1e-3)
    assert not torch.allclose(clipped.pg_advantages, unclipped.pg_advantages, atol=1e-3)


def test_on_policy_reduces_to_n_step_return() -> None:
    """With pi = mu, rho = c = 1 and v_s is the discounted n-step return (sec. 4.1)."""
    inputs = make_inputs()
    inputs["target_logp"] = inputs["behaviour_logp"].copy()
    out = run_torch(inputs)
    disc, rew, boot = inputs["discounts"], inputs["rewards"], inputs["bootstrap_value"]
    expected = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            ret, scale = 0.0, 1.0
            for t in range(s, T):
                ret += scale * rew[t, b]
                scale *= disc[t, b]
            expected[s, b] = ret + scale * boot[b]
    np.testing.assert_allclose(out.vs.numpy(), expected, atol=1e-10, rtol=0)


def test_episode_end_stops_bootstrapping() -> None:
    """With gamma_3 = 0 in column 0, v_s for s <= 3 ignores everything after step 3."""
    inputs = make_inputs()
    base = run_torch(inputs)
    changed = {k: v.copy() for k, v in inputs.items()}
    changed["rewards"][4:, 0] += 100.0
    changed["values"][4:, 0] -= 50.0
    changed["target_logp"][4:, 0] += 0.3
    changed["bootstrap_value"][0] += 10.0
    out = run_torch(changed)
    np.testing.assert_allclose(out.vs[:4, 0].numpy(), base.vs[:4, 0].numpy(), atol=1e-12)
    np.testing.assert_allclose(out.pg_advantages[:4, 0].numpy(), base.pg_advantages[:4, 0].numpy(), atol=1e-12)
    assert not np.allclose(out.vs[4:, 0].numpy(), base.vs[4:, 0].numpy())


def test_outputs_are_detached() -> None:
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in make_inputs().items()}
    out = vtrace_from_logits(**tensors)
    assert not out.vs.requires_grad and not out.pg_advantages.requires_grad
    assert out.vs.grad_fn is None and out.pg_advantages.grad_fn is None


def test_shape_mismatch_raises() -> None:
    tensors = {k: torch.tensor(v) for k, v in make_inputs().items()}
    tensors["bootstrap_value"] = torch.zeros(B + 1, dtype=torch.float64)
    with pytest.raises(ValueError):
        vtrace_from_logits(**tensors)
    tensors = {k: torch.tensor(v) for k, v in make_inputs().items()}
    tensors["rewards"] = tensors["rewards"][:-1]
    with pytest.raises(ValueError):
        vtrace_from_logits(**tensors)
