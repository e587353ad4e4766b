"""Advantage estimation on trajectories: discounted returns, or GAE(gamma, lambda).

Generalized Advantage Estimation: Schulman et al. 2016, https://arxiv.org/abs/1506.02438, eq. 16:
    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),   A_t = sum_l (gamma * lambda)^l delta_{t+l}.
``last_r`` is the value after a trajectory's last step: 0 when the episode terminated there, V(s_T) when it
was cut (by a time limit, the horizon or the end of a sample fragment).

A batch may hold one trajectory or several consecutive ones (a new ``unroll_id`` starts each, as in what the
sampler hands to ``Policy.postprocess_fragment``); then ``last_r`` has one value per trajectory and the sums
stop at each trajectory's end. A postprocess function that is correct on such a batch says so with
``@multi_trajectory``, and the sampler postprocesses a whole fragment with one call of it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from relayrl.policy.sample_batch import SampleBatch


class Postprocessing:
    ADVANTAGES = "advantages"
    VALUE_TARGETS = "value_targets"


def multi_trajectory(fn: Callable) -> Callable:
    """Marks a ``postprocess_fn(policy, batch, other_agent_batches, episode)`` as correct on a batch of several
    consecutive trajectories (it must not need ``episode``)."""
    fn.multi_trajectory = True
    return fn


def discount_cumsum(x: np.ndarray, gamma: float, ends: np.ndarray | None = None) -> np.ndarray:
    """y[t] = sum_{k>=t} gamma^(k-t) x[k], each sum stopping after the next row where ``ends`` is true."""
    xs = np.asarray(x, dtype=np.float64).tolist()
    running = 0.0
    if ends is None:
        for t in range(len(xs) - 1, -1, -1):
            running = xs[t] + gamma * running
            xs[t] = running
    else:
        for t, end in zip(range(len(xs) - 1, -1, -1), ends[::-1].tolist()):
            running = xs[t] + (0.0 if end else gamma * running)
            xs[t] = running
    return np.array(xs, dtype=np.float64)


def compute_advantages(
    rollout: SampleBatch,
    last_r: float | np.ndarray,
    gamma: float = 0.9,
    lambda_: float = 1.0,
    use_gae: bool = True,
    use_critic: bool = True,
) -> SampleBatch:
    """Adds ``advantages`` and ``value_targets`` columns (in place) to a batch of one or more trajectories;
    ``last_r`` is one value, or one per trajectory. ``use_critic=False`` (RLlib 0.8's flag, with ``use_gae=False``)
    ignores any ``vf_preds`` column: the advantages are the discounted returns."""
    rewards = np.asarray(rollout[SampleBatch.REWARDS], dtype=np.float64)
    ends = rollout.trajectory_ends()
    after_end = np.zeros(len(rewards))
    after_end[ends] = last_r  # the value after each trajectory's last step
    if use_gae:
        if SampleBatch.VF_PREDS not in rollout:
            raise KeyError("use_gae needs a 'vf_preds' column: the policy must record value estimates")
        vpred = np.asarray(rollout[SampleBatch.VF_PREDS], dtype=np.float64)
        next_v = np.where(ends, after_end, np.append(vpred[1:], 0.0))
        advantages = discount_cumsum(rewards + gamma * next_v - vpred, gamma * lambda_, ends)
        value_targets = advantages + vpred
    else:
        # Monte-Carlo returns, bootstrapped at a cut; with a value function it is the baseline.
        value_targets = discount_cumsum(rewards + gamma * after_end, gamma, ends)
        advantages = value_targets
        if use_critic and SampleBatch.VF_PREDS in rollout:
            advantages = value_targets - np.asarray(rollout[SampleBatch.VF_PREDS], dtype=np.float64)
    rollout[Postprocessing.ADVANTAGES] = advantages.astype(np.float32)
    rollout[Postprocessing.VALUE_TARGETS] = value_targets.astype(np.float32)
    return rollout


def bootstrap_values(policy, batch: SampleBatch) -> np.ndarray:
    """One value per trajectory of the batch: 0 where its last step terminated the episode, else the policy's
    value of the observation after that step. (TorchPolicy.postprocess_fragment computes these in its value pass
    over the fragment and hands them to a postprocess function as ``last_r``; this is for the other callers.)
    A policy with its own ``bootstrap_values(batch)`` (TorchPolicy: recurrent models value the next observation
    with the state after the last step) computes them."""
    own = getattr(policy, "bootstrap_values", None)
    if own is not None:
        return np.asarray(own(batch), dtype=np.float64)
    last = np.flatnonzero(batch.trajectory_ends())
    values = np.asarray(policy.value(batch[SampleBatch.NEXT_OBS][last]), dtype=np.float64)
    values[np.asarray(batch[SampleBatch.TERMINATEDS])[last]] = 0.0
    return values


def bootstrap_value(policy, batch: SampleBatch) -> float:
    """``bootstrap_values`` of a single trajectory."""
    return float(bootstrap_values(policy, batch)[-1])


def previous_step_columns(actions: np.ndarray, rewards: np.ndarray, t: np.ndarray, last: tuple | None) -> tuple:
    """RLlib's ``prev_actions`` / ``prev_rewards`` columns of a fragment of ``[T, num_envs, ...]`` rows, from its
    (clipped) ``rewards`` and ``t`` (the step in the episode): each row's previous step in its episode, zeros at an
    episode's first step. ``last``: the final row's action and reward of the previous fragment (None at the start).
    Returns the two columns and this fragment's ``last``; per fragment, no work per step."""
    prev_actions, prev_rewards = np.empty_like(actions), np.empty(rewards.shape, np.float32)
    prev_actions[1:], prev_rewards[1:] = actions[:-1], rewards[:-1]
    if last is None:
        prev_actions[0], prev_rewards[0] = 0, 0.0
    else:
        prev_actions[0], prev_rewards[0] = last
    first = t == 0
    prev_actions[first], prev_rewards[first] = 0, 0.0
    return prev_actions, prev_rewards, (actions[-1], rewards[-1])
