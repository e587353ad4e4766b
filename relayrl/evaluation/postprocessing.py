"""Advantage estimation on one trajectory: discounted returns, or GAE(gamma, lambda).

Generalized Advantage Estimation: Schulman et al. 2016, https://arxiv.org/abs/1506.02438, eq. 16:
    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),   A_t = sum_l (gamma * lambda)^l delta_{t+l}.
``last_r`` is the value after the trajectory's last step: 0 when the episode terminated there, V(s_T) when it
was cut (by a time limit, the horizon or the end of a sample fragment).
"""

from __future__ import annotations

import numpy as np

from relayrl.policy.sample_batch import SampleBatch


class Postprocessing:
    ADVANTAGES = "advantages"
    VALUE_TARGETS = "value_targets"


def discount_cumsum(x: np.ndarray, gamma: float) -> np.ndarray:
    """y[t] = sum_{k>=t} gamma^(k-t) x[k]."""
    out = np.empty(len(x), dtype=np.float64)
    running = 0.0
    for t, v in zip(range(len(x) - 1, -1, -1), x[::-1].tolist()):
        running = v + gamma * running
        out[t] = running
    return out


def compute_advantages(
    rollout: SampleBatch, last_r: float, gamma: float = 0.9, lambda_: float = 1.0, use_gae: bool = True
) -> SampleBatch:
    """Adds ``advantages`` and ``value_targets`` columns to a single-trajectory batch (in place)."""
    rewards = np.asarray(rollout[SampleBatch.REWARDS], dtype=np.float64)
    if use_gae:
        if SampleBatch.VF_PREDS not in rollout:
            raise KeyError("use_gae needs a 'vf_preds' column: the policy must record value estimates")
        vpred_t = np.append(np.asarray(rollout[SampleBatch.VF_PREDS], dtype=np.float64), last_r)
        delta_t = rewards + gamma * vpred_t[1:] - vpred_t[:-1]
        advantages = discount_cumsum(delta_t, gamma * lambda_)
        value_targets = advantages + vpred_t[:-1]
    else:
        # Monte-Carlo returns, bootstrapped at a cut; with a value function it is the baseline.
        value_targets = discount_cumsum(np.append(rewards, last_r), gamma)[:-1]
        advantages = value_targets
        if SampleBatch.VF_PREDS in rollout:
            advantages = value_targets - np.asarray(rollout[SampleBatch.VF_PREDS], dtype=np.float64)
    rollout[Postprocessing.ADVANTAGES] = advantages.astype(np.float32)
    rollout[Postprocessing.VALUE_TARGETS] = value_targets.astype(np.float32)
    return rollout


def bootstrap_value(policy, batch: SampleBatch) -> float:
    """0 if the trajectory's last step terminated the episode, else the policy's value of the next observation."""
    if hasattr(policy, "bootstrap_value"):
        return policy.bootstrap_value(batch)
    if batch[SampleBatch.TERMINATEDS][-1]:
        return 0.0
    return float(policy.value(batch[SampleBatch.NEXT_OBS][-1:])[0])
