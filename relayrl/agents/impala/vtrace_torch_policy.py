"""IMPALA's learner loss: actor-critic with V-trace targets (Espeholt et al. 2018, "IMPALA: Scalable
Distributed Deep-RL with Importance Weighted Actor-Learner Architectures", https://arxiv.org/abs/1802.01561,
section 4: eq. 1 for the value targets v_s, section 4.2 for the policy gradient and the entropy bonus).

    loss = -sum_s log pi(a_s|x_s) rho_s (r_s + gamma v_{s+1} - V(x_s))  +  vf_loss_coeff * 0.5 * sum_s (V(x_s) - v_s)^2
           + entropy_coeff * sum_s H(pi(.|x_s))

Terms are sums, and ``entropy_coeff`` is ADDED as in RLlib 0.7's (2019) ``VTraceLoss`` (IMPALA's default -0.01 is a
bonus).

Batch layout: the sampler's truncate_episodes batches are ordered sub-env by sub-env, each with
``sample_batch_size`` consecutive steps, and a train batch concatenates such batches, so it reshapes to
``[B, T]`` and is transposed to time-major ``[T, B]`` for ``vtrace_from_logits``. Discounts are
``gamma * (1 - terminated)``; each row bootstraps from V(NEXT_OBS of its last step). An episode cut by a time
limit inside a row is handled exactly: its step gets discount 0 and reward ``r + gamma V(next_obs)``, so
neither the targets nor the traces cross into the next episode. Behaviour log-probs: the ACTION_LOGP column.

With ``vtrace: False`` the policy is the A3C loss on GAE(gamma, lambda) advantages computed by the worker.
"""

from __future__ import annotations

import torch

from relayrl.agents.a3c.a3c_torch_policy import actor_critic_loss, postprocess_advantages
from relayrl.agents.impala.vtrace import vtrace_from_logits
from relayrl.policy.sample_batch import SampleBatch
from relayrl.policy.torch_policy_template import build_torch_policy
from relayrl.utils.torch_optim import Adam, RMSprop


def to_time_major(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``[B*T, ...]`` ordered row by row -> ``[T, B, ...]``."""
    return x.reshape(rows, -1, *x.shape[1:]).transpose(0, 1)


def vtrace_loss(policy, model, dist_class, train_batch: dict) -> tuple[torch.Tensor, dict]:
    """(loss, stats) of a train batch of ``[B, T]`` rows."""
    config = policy.config
    obs = train_batch[SampleBatch.OBS]
    n, T = obs.shape[0], config["sample_batch_size"]
    if n % T:
        raise ValueError(
            f"IMPALA: a train batch of {n} steps is not made of rows of sample_batch_size={T} steps; V-trace needs"
            " the sampler's truncate_episodes layout"
        )
    B = n // T
    terminated = train_batch[SampleBatch.TERMINATEDS].bool()
    truncated = train_batch[SampleBatch.TRUNCATEDS].bool() & ~terminated
    # Successor states to value: the last step of every row (bootstrap), and time-limit cuts inside rows.
    last = torch.arange(T - 1, n, T, device=obs.device)
    inner = truncated.clone()
    inner[last] = False
    inner_idx = inner.nonzero().squeeze(-1)
    next_obs = train_batch[SampleBatch.NEXT_OBS]
    all_obs = torch.cat([obs, next_obs[last], next_obs[inner_idx]])
    logits_all, _ = model({"obs": all_obs, "is_training": True}, [], None)
    values_all = model.value_function()
    logits, values = logits_all[:n], values_all[:n]
    bootstrap, inner_values = values_all[n : n + B].detach(), values_all[n + B :].detach()

    gamma = config["gamma"]
    rewards = train_batch[SampleBatch.REWARDS].float().clone()
    discounts = gamma * (~terminated).float()
    rewards[inner_idx] += gamma * inner_values
    discounts[inner_idx] = 0.0

    dist = dist_class(logits, model)
    target_logp = dist.logp(train_batch[SampleBatch.ACTIONS])
    behaviour_logp = train_batch[SampleBatch.ACTION_LOGP].float()
    values_tm = to_time_major(values, B)
    vs, pg_advantages = vtrace_from_logits(
        behaviour_logp=to_time_major(behaviour_logp, B),
        target_logp=to_time_major(target_logp.detach(), B),
        discounts=to_time_major(discounts, B),
        rewards=to_time_major(rewards, B),
        values=values_tm.detach(),
        bootstrap_value=bootstrap,
        clip_rho_threshold=config["vtrace_clip_rho_threshold"],
        clip_pg_rho_threshold=config["vtrace_clip_pg_rho_threshold"],
    )
    pi_loss = -(to_time_major(target_logp, B) * pg_advantages).sum()
    vf_loss = 0.5 * (values_tm - vs).pow(2).sum()
    entropy = dist.entropy().sum()
    total = pi_loss + config["vf_loss_coeff"] * vf_loss + config["entropy_coeff"] * entropy
    with torch.no_grad():
        var_vs = vs.var(unbiased=False)
        explained = 1 - (vs - values_tm).var(unbiased=False) / var_vs if var_vs > 0 else torch.zeros(())
        stats = {
            "policy_loss": pi_loss.detach(),
            "vf_loss": vf_loss.detach(),
            "entropy": entropy.detach() / n,
            "total_loss": total.detach(),
            "vf_explained_var": explained,
            "mean_importance_ratio": torch.exp(target_logp - behaviour_logp).mean(),
        }
    return total, stats


def make_optimizer(policy, config: dict):
    """``opt_type``: "adam" (lr) or "rmsprop" (lr, decay, momentum, epsilon; TF semantics, see RMSprop)."""
    if config["opt_type"] == "adam":
        return Adam(policy.model.parameters(), lr=policy.cur_lr)
    if config["opt_type"] == "rmsprop":
        return RMSprop(
            policy.model.parameters(),
            lr=policy.cur_lr,
            decay=config["decay"],
            momentum=config["momentum"],
            epsilon=config["epsilon"],
        )
    raise ValueError(f"IMPALA config: 'opt_type' must be 'adam' or 'rmsprop', got {config['opt_type']!r}")


def _default_config() -> dict:
    from relayrl.agents.impala.impala import DEFAULT_CONFIG

    return DEFAULT_CONFIG


VTraceTorchPolicy = build_torch_policy(
    "VTraceTorchPolicy",
    loss_fn=vtrace_loss,
    get_default_config=_default_config,
    optimizer_fn=make_optimizer,
)

# vtrace: False -- the A3C loss on GAE advantages, with IMPALA's optimizers.
ImpalaA3CTorchPolicy = build_torch_policy(
    "ImpalaA3CTorchPolicy",
    loss_fn=actor_critic_loss,
    get_default_config=_default_config,
    postprocess_fn=postprocess_advantages,
    needs_value=True,
    optimizer_fn=make_optimizer,
)
