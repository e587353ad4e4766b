"""PPO's policy: the clipped surrogate objective with an adaptive KL penalty and a clipped value loss.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms", https://arxiv.org/abs/1707.06347:
eq. 7 (clipped surrogate), eq. 8 and section 4 (adaptive KL penalty), eq. 9 (value loss and entropy bonus).
The value clipping around the old prediction (``vf_clip_param``) follows the OpenAI baselines implementation.
"""

from __future__ import annotations

import torch

from relayrl.evaluation.postprocessing import Postprocessing, bootstrap_values, compute_advantages, multi_trajectory
from relayrl.policy.rnn_sequencing import SEQ_MASK, masked_mean, model_inputs, valid
from relayrl.policy.sample_batch import SampleBatch
from relayrl.policy.torch_policy_template import build_torch_policy


def ppo_surrogate_loss(policy, model, dist_class, train_batch: dict) -> tuple[torch.Tensor, dict]:
    """(loss, stats) of a minibatch."""
    config = policy.config
    logits, _ = model(*model_inputs(train_batch))
    mask = train_batch.get(SEQ_MASK)  # recurrent: True on real steps; the means below skip the padding
    curr = dist_class(logits, model)
    prev = dist_class(train_batch[SampleBatch.ACTION_DIST_INPUTS], model)
    advantages = train_batch[Postprocessing.ADVANTAGES]

    log_ratio = curr.logp(train_batch[SampleBatch.ACTIONS]) - train_batch[SampleBatch.ACTION_LOGP]
    logp_ratio = torch.exp(log_ratio)
    surrogate = torch.min(
        advantages * logp_ratio,
        advantages * torch.clamp(logp_ratio, 1 - config["clip_param"], 1 + config["clip_param"]),
    )
    action_kl = prev.kl(curr)
    entropy = curr.entropy()

    total = -surrogate + policy.kl_coeff * action_kl - config["entropy_coeff"] * entropy
    if config["use_gae"]:
        value_fn = model.value_function()
        vf_preds = train_batch[SampleBatch.VF_PREDS]
        targets = train_batch[Postprocessing.VALUE_TARGETS]
        vf_loss1 = (value_fn - targets).pow(2)
        vf_clipped = vf_preds + torch.clamp(value_fn - vf_preds, -config["vf_clip_param"], config["vf_clip_param"])
        vf_loss2 = (vf_clipped - targets).pow(2)
        vf_loss = torch.max(vf_loss1, vf_loss2)
        total = total + config["vf_loss_coeff"] * vf_loss
    loss = masked_mean(total, mask)
    with torch.no_grad():  # statistics only: no autograd graph for them
        stats = {
            "total_loss": loss.detach(),
            "policy_loss": -masked_mean(surrogate, mask),
            "kl": masked_mean(action_kl, mask),
            "entropy": masked_mean(entropy, mask),
            "cur_kl_coeff": policy.kl_coeff,
            # share of samples whose ratio left the clip range, and the sampled KL(old || new)
            # estimate E[(r - 1) - log r] (unbiased, always >= 0; Schulman's "k3" estimator)
            "clip_fraction": masked_mean(((logp_ratio - 1).abs() > config["clip_param"]).float(), mask),
            "approx_kl": masked_mean((logp_ratio - 1) - log_ratio, mask),
        }
        if config["use_gae"]:
            stats.update(
                vf_loss=masked_mean(vf_loss, mask),
                vf_explained_var=explained_variance(valid(targets, mask), valid(value_fn, mask)),
            )
    return loss, stats


def explained_variance(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """1 - Var[y - pred] / Var[y]; 1 is a perfect value function, 0 no better than a constant."""
    var_y = y.var(unbiased=False)
    return torch.clamp(1 - (y - pred).var(unbiased=False) / var_y, min=-1.0) if var_y > 0 else torch.zeros(())


@multi_trajectory
def postprocess_ppo_gae(policy, batch: SampleBatch, other_agent_batches=None, episode=None, last_r=None) -> SampleBatch:
    """GAE with bootstrapping: V(next obs) unless the trajectory ends in a termination (``last_r``: those values
    when the caller computed them already, one per trajectory)."""
    if not policy.config["use_gae"]:
        last_r = 0.0
    elif last_r is None:
        last_r = bootstrap_values(policy, batch)
    return compute_advantages(batch, last_r, policy.config["gamma"], policy.config["lambda"], policy.config["use_gae"])


class KLCoeffMixin:
    """The adaptive KL penalty coefficient (PPO paper, section 4)."""

    def update_kl(self, sampled_kl: float) -> float:
        if sampled_kl > 2.0 * self.config["kl_target"]:
            self.kl_coeff *= 1.5
        elif sampled_kl < 0.5 * self.config["kl_target"]:
            self.kl_coeff *= 0.5
        return self.kl_coeff

    def get_state(self) -> dict:
        return {**super().get_state(), "kl_coeff": self.kl_coeff}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self.kl_coeff = float(state.get("kl_coeff", self.kl_coeff))


def _before_init(policy, obs_space, action_space, config: dict) -> None:
    # PPO's top-level vf_share_layers (as in RLlib 0.7's PPO config, 2019) decides the model's layout.
    config["model"] = {**config.get("model", {}), "vf_share_layers": config["vf_share_layers"]}
    policy.kl_coeff = float(config["kl_coeff"])


def _default_config() -> dict:
    from relayrl.agents.ppo.ppo import DEFAULT_CONFIG

    return DEFAULT_CONFIG


PPOTorchPolicy = build_torch_policy(
    "PPOTorchPolicy",
    loss_fn=ppo_surrogate_loss,
    get_default_config=_default_config,
    postprocess_fn=postprocess_ppo_gae,
    needs_value=True,
    recurrent=True,
    before_init=_before_init,
    mixins=[KLCoeffMixin],
)
