"""A2C: the synchronous variant of A3C (Mnih et al. 2016; "A2C" in OpenAI Baselines, 2017): every worker
samples with the same weights, the driver learns on the concatenated batch (SyncSamplesOptimizer), and the
new weights go to all workers. Same loss and postprocessing as A3C (``a3c_torch_policy.py``)."""

from __future__ import annotations

from relayrl.agents.a3c.a3c import DEFAULT_CONFIG as A3C_CONFIG
from relayrl.agents.a3c.a3c import validate_config
from relayrl.agents.a3c.a3c_torch_policy import A3CTorchPolicy
from relayrl.agents.trainer import merge_dicts
from relayrl.agents.trainer_template import build_trainer
from relayrl.optimizers.sync_samples import SyncSamplesOptimizer

A2C_DEFAULT_CONFIG = merge_dicts(
    A3C_CONFIG,
    {
        # Steps per sub-env in one sample() fragment.
        "sample_batch_size": 20,
        # Min time per iteration.
        "min_iter_time_s": 10,
        # Sample in the worker's own thread: all workers sample with the same weights.
        "sample_async": False,
    },
)
# Options of SyncSamplesOptimizer (none by default): A3C's grads_per_step does not apply (merge_dicts would keep
# the nested key).
A2C_DEFAULT_CONFIG["optimizer"] = {}


def policy_optimizer(config: dict) -> tuple[type, dict]:
    return SyncSamplesOptimizer, {"train_batch_size": config["train_batch_size"], "seed": config["seed"]}


A2CTrainer = build_trainer(
    name="A2C",
    default_config=A2C_DEFAULT_CONFIG,
    default_policy=A3CTorchPolicy,
    policy_optimizer=policy_optimizer,
    validate_config=validate_config,
)
