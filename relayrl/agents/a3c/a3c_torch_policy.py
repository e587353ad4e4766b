"""The advantage actor-critic loss shared by A2C and A3C (Mnih et al. 2016, https://arxiv.org/abs/1602.01783,
Algorithm S3), with GAE advantages (Schulman et al. 2016, https://arxiv.org/abs/1506.02438).

    loss = -sum_t log pi(a_t|s_t) A_t  +  vf_loss_coeff * 0.5 * sum_t (V(s_t) - R_t)^2  +  entropy_coeff * sum_t H_t

Sign convention of the seed configs (RLlib 2019, ``A3CLoss``/``VTraceLoss``: ``total_loss = pi_loss +
vf_loss * vf_loss_coeff + entropy * entropy_coeff``): the loss ADDS ``entropy_coeff * entropy``, so the default
``entropy_coeff = -0.01`` is an entropy *bonus* (minimising the loss raises the entropy); a positive value
penalises entropy. The terms are sums over the batch, as in the reference (the paper accumulates per-step
gradients); with Adam the scale of a sum is absorbed by the step-size normalisation.
"""

from __future__ import annotations

import torch

from relayrl.evaluation.postprocessing import Postprocessing, bootstrap_values, compute_advantages, multi_trajectory
from relayrl.policy.rnn_sequencing import SEQ_MASK, masked_sum, model_inputs
from relayrl.policy.sample_batch import SampleBatch
from relayrl.policy.torch_policy_template import build_torch_policy


def actor_critic_loss(policy, model, dist_class, train_batch: dict) -> tuple[torch.Tensor, dict]:
    """(loss, stats) of a batch."""
    config = policy.config
    logits, _ = model(*model_inputs(train_batch))
    mask = train_batch.get(SEQ_MASK)  # recurrent: True on real steps; the sums below skip the padding
    values = model.value_function()
    dist = dist_class(logits, model)
    logp = dist.logp(train_batch[SampleBatch.ACTIONS])
    advantages = train_batch[Postprocessing.ADVANTAGES]
    pi_err = -masked_sum(logp * advantages, mask)
    value_err = 0.5 * masked_sum((values - train_batch[Postprocessing.VALUE_TARGETS]).pow(2), mask)
    entropy = masked_sum(dist.entropy(), mask)
    total = pi_err + config["vf_loss_coeff"] * value_err + config["entropy_coeff"] * entropy
    n = max(1, logp.shape[0] if mask is None else int(mask.sum()))
    stats = {
        "policy_loss": pi_err.detach(),
        "vf_loss": value_err.detach(),
        "policy_entropy": entropy.detach() / n,
        "total_loss": total.detach(),
    }
    return total, stats


@multi_trajectory
def postprocess_advantages(
    policy, batch: SampleBatch, other_agent_batches=None, episode=None, last_r=None
) -> SampleBatch:
    """GAE(gamma, lambda); a cut trajectory is bootstrapped with V(next obs), a terminated one with 0 (``last_r``:
    those values when the caller computed them already, one per trajectory)."""
    if last_r is None:
        last_r = bootstrap_values(policy, batch)
    return compute_advantages(batch, last_r, policy.config["gamma"], policy.config.get("lambda", 1.0), True)


def _default_config() -> dict:
    from relayrl.agents.a3c.a3c import DEFAULT_CONFIG

    return DEFAULT_CONFIG


A3CTorchPolicy = build_torch_policy(
    "A3CTorchPolicy",
    loss_fn=actor_critic_loss,
    get_default_config=_default_config,
    postprocess_fn=postprocess_advantages,
    needs_value=True,
    recurrent=True,
)
