"""Vanilla policy gradient (REINFORCE with discounted returns): Williams 1992; Sutton et al. 2000.

loss = -mean(log pi(a_t | s_t) * R_t), with R_t the discounted return from t to the end of the trajectory.
"""

from __future__ import annotations

from relayrl.agents.trainer import with_common_config
from relayrl.agents.trainer_template import build_trainer
from relayrl.evaluation.postprocessing import Postprocessing, compute_advantages, multi_trajectory
from relayrl.policy.rnn_sequencing import SEQ_MASK, masked_mean, model_inputs
from relayrl.policy.sample_batch import SampleBatch
from relayrl.policy.torch_policy_template import build_torch_policy

DEFAULT_CONFIG = with_common_config(
    {
        # No remote workers by default.
        "num_workers": 0,
        # Learning rate.
        "lr": 0.0004,
    }
)


@multi_trajectory
def postprocess_pg(policy, batch: SampleBatch, other_agent_batches=None, episode=None) -> SampleBatch:
    # No value function to bootstrap with: a cut trajectory's return stops at the cut.
    return compute_advantages(batch, 0.0, policy.config["gamma"], use_gae=False)


def pg_loss(policy, model, dist_class, train_batch):
    logits, _ = model(*model_inputs(train_batch))
    dist = dist_class(logits, model)
    logp = dist.logp(train_batch[SampleBatch.ACTIONS])
    # the mean over real steps: a recurrent model's padded steps (seq_mask False) count for nothing
    loss = -masked_mean(logp * train_batch[Postprocessing.ADVANTAGES], train_batch.get(SEQ_MASK))
    return loss, {"policy_loss": loss.detach()}


PGTorchPolicy = build_torch_policy(
    "PGTorchPolicy",
    loss_fn=pg_loss,
    get_default_config=lambda: DEFAULT_CONFIG,
    postprocess_fn=postprocess_pg,
    recurrent=True,
)

PGTrainer = build_trainer(name="PG", default_policy=PGTorchPolicy, default_config=DEFAULT_CONFIG)
