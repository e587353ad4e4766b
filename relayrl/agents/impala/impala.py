"""IMPALA (Espeholt et al. 2018, https://arxiv.org/abs/1802.01561): remote actors sample without waiting for the
learner; a learner thread learns on their (slightly off-policy) batches with the V-trace correction.

The pipeline is AsyncSamplesOptimizer; the loss is in ``vtrace_torch_policy.py`` (``vtrace: False`` falls back to
the A3C loss on GAE advantages).
"""

from __future__ import annotations

from relayrl.agents.impala.vtrace_torch_policy import ImpalaA3CTorchPolicy, VTraceTorchPolicy
from relayrl.agents.trainer import with_common_config
from relayrl.agents.trainer_template import build_trainer
from relayrl.models.catalog import MODEL_DEFAULTS
from relayrl.optimizers.async_samples import AsyncSamplesOptimizer

DEFAULT_CONFIG = with_common_config(
    {
        # V-trace params (see vtrace.py).
        # Use V-trace targets and importance-weighted policy gradients; False: A3C loss on GAE advantages.
        "vtrace": True,
        # rho_bar: truncation of the importance weights in the value targets (IMPALA eq. 1); None: no truncation.
        "vtrace_clip_rho_threshold": 1.0,
        # Truncation of the importance weights in the policy gradient (IMPALA section 4.2); None: no truncation.
        "vtrace_clip_pg_rho_threshold": 1.0,
        # System params.
        # Steps per sub-env in one worker sample() (the unroll length T of V-trace; with model.use_lstm also the
        # learner's sequence length: the model runs over each unroll from the state at its start).
        "sample_batch_size": 50,
        # Steps in one learner batch (a concatenation of worker batches).
        "train_batch_size": 500,
        # An iteration lasts at least this many seconds.
        "min_iter_time_s": 10,
        # Remote sampling workers (0: sample in the driver thread, learn in the learner thread).
        "num_workers": 2,
        # number of GPUs the learner should use (CPU when CUDA is not available).
        "num_gpus": 1,
        # set >1 to load data into GPUs in parallel. Increases GPU memory usage
        # proportionally with the number of loaders.
        "num_parallel_data_loaders": 1,
        # level of queuing for sampling.
        "max_sample_requests_in_flight_per_worker": 2,
        # max number of workers to broadcast one set of weights to
        "broadcast_interval": 1,
        # set >0 to enable experience replay. Saved samples will be replayed with
        # a p:1 proportion to new data samples.
        "replay_proportion": 0.0,
        # number of sample batches to store for replay. The number of transitions
        # saved total will be (replay_buffer_num_slots * sample_batch_size).
        "replay_buffer_num_slots": 100,
        # Learning params.
        # Max global norm of the gradient of each learner step.
        "grad_clip": 40.0,
        # either "adam" or "rmsprop"
        "opt_type": "adam",
        # Learning rate.
        "lr": 0.0005,
        # Learning rate schedule: [[timestep, lr], ...], interpolated linearly; None keeps lr.
        "lr_schedule": None,
        # rmsprop considered
        # RMSProp decay of the mean square (opt_type "rmsprop").
        "decay": 0.99,
        # RMSProp momentum (opt_type "rmsprop").
        "momentum": 0.0,
        # RMSProp epsilon, inside the square root as in TF (opt_type "rmsprop").
        "epsilon": 0.1,
        # balancing the three losses
        # Coefficient of the value loss.
        "vf_loss_coeff": 0.5,
        # Coefficient of the entropy; the loss ADDS entropy_coeff * entropy (negative = entropy bonus).
        "entropy_coeff": -0.01,
    }
)


def validate_config(config: dict) -> None:
    get = config.__getitem__
    if get("opt_type") not in ("adam", "rmsprop"):
        raise ValueError(f"IMPALA config: 'opt_type' must be 'adam' or 'rmsprop', got {get('opt_type')!r}")
    if get("batch_mode") != "truncate_episodes":
        raise ValueError("IMPALA config: 'batch_mode' must be 'truncate_episodes' (V-trace needs [B, T] rows)")
    for key in ("vtrace_clip_rho_threshold", "vtrace_clip_pg_rho_threshold", "grad_clip"):
        if get(key) is not None and get(key) <= 0:
            raise ValueError(f"IMPALA config: {key!r} must be > 0 or None, got {get(key)!r}")
    for key in ("max_sample_requests_in_flight_per_worker", "broadcast_interval", "num_parallel_data_loaders"):
        if get(key) < 1:
            raise ValueError(f"IMPALA config: {key!r} must be >= 1, got {get(key)!r}")
    if get("replay_proportion") < 0:
        raise ValueError(f"IMPALA config: 'replay_proportion' must be >= 0, got {get('replay_proportion')!r}")
    if get("replay_buffer_num_slots") < 0:
        slots = get("replay_buffer_num_slots")
        raise ValueError(f"IMPALA config: 'replay_buffer_num_slots' must be >= 0, got {slots!r}")
    model = get("model") or {}
    if model.get("use_lstm") and model.get("max_seq_len", MODEL_DEFAULTS["max_seq_len"]) not in (
        MODEL_DEFAULTS["max_seq_len"],
        get("sample_batch_size"),
    ):
        raise ValueError(
            f"IMPALA config: 'model.max_seq_len' ({model['max_seq_len']}) does not apply: the learner runs the LSTM"
            f" over whole unrolls of 'sample_batch_size' ({get('sample_batch_size')}) steps; set that instead"
        )
    if not 0.0 <= get("decay") < 1.0 or not 0.0 <= get("momentum") < 1.0 or get("epsilon") <= 0:
        raise ValueError("IMPALA config: need 0 <= 'decay' < 1, 0 <= 'momentum' < 1 and 'epsilon' > 0")


def get_policy_class(config: dict):
    return VTraceTorchPolicy if config["vtrace"] else ImpalaA3CTorchPolicy


def policy_optimizer(config: dict) -> tuple[type, dict]:
    return AsyncSamplesOptimizer, dict(
        train_batch_size=config["train_batch_size"],
        sample_batch_size=config["sample_batch_size"],
        num_envs_per_worker=config["num_envs_per_worker"],
        num_gpus=config["num_gpus"],
        num_parallel_data_loaders=config["num_parallel_data_loaders"],
        max_sample_requests_in_flight_per_worker=config["max_sample_requests_in_flight_per_worker"],
        broadcast_interval=config["broadcast_interval"],
        replay_proportion=config["replay_proportion"],
        replay_buffer_num_slots=config["replay_buffer_num_slots"],
        seed=config["seed"],
    )


_ImpalaBase = build_trainer(
    name="IMPALA",
    default_config=DEFAULT_CONFIG,
    default_policy=VTraceTorchPolicy,
    get_policy_class=get_policy_class,
    policy_optimizer=policy_optimizer,
    validate_config=validate_config,
    asynchronous=True,
)


class ImpalaTrainer(_ImpalaBase):
    """The IMPALA trainer. Its iteration is build_trainer's with ``asynchronous=True``: filters are synchronised
    once per iteration, and ``timesteps_total`` follows the optimizer's ``num_steps_sampled``."""

    def save_to_path(self, path: str) -> str:
        # The learner thread steps the optimizer concurrently: hold its lock for a consistent snapshot.
        with self.optimizer.lock:
            return super().save_to_path(path)

    def restore(self, checkpoint_path: str) -> None:
        with self.optimizer.lock:
            super().restore(checkpoint_path)


ImpalaTrainer.__module__ = __name__
