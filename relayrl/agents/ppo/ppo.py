"""Proximal Policy Optimization (Schulman et al. 2017, https://arxiv.org/abs/1707.06347).

Sampling with SyncSamples-style collection, then ``num_sgd_iter`` epochs of minibatch SGD on the batch
loaded once (LocalMultiGPUOptimizer), or the simple SyncSamplesOptimizer with ``simple_optimizer``.
"""

from __future__ import annotations

from relayrl.agents.ppo.ppo_torch_policy import PPOTorchPolicy
from relayrl.agents.trainer import with_common_config
from relayrl.agents.trainer_template import build_trainer
from relayrl.evaluation.postprocessing import Postprocessing
from relayrl.optimizers import LocalMultiGPUOptimizer, SyncSamplesOptimizer

DEFAULT_CONFIG = with_common_config(
    {
        # If true, use the Generalized Advantage Estimator (GAE) with a value function,
        # see https://arxiv.org/pdf/1506.02438.pdf.
        "use_gae": True,
        # GAE(lambda) parameter.
        "lambda": 1.0,
        # Initial coefficient for KL divergence.
        "kl_coeff": 0.2,
        # Size of batches collected from each worker (per sub-env).
        "sample_batch_size": 200,
        # Number of timesteps collected for each SGD round.
        "train_batch_size": 4000,
        # Total SGD batch size across all devices for SGD.
        "sgd_minibatch_size": 128,
        # Number of SGD iterations in each outer loop.
        "num_sgd_iter": 30,
        # Stepsize of SGD.
        "lr": 5e-5,
        # Learning rate schedule: [[timestep, lr], ...], interpolated linearly.
        "lr_schedule": None,
        # Share layers for value function.
        "vf_share_layers": False,
        # Coefficient of the value function loss.
        "vf_loss_coeff": 1.0,
        # Coefficient of the entropy regularizer.
        "entropy_coeff": 0.0,
        # PPO clip parameter.
        "clip_param": 0.3,
        # Clip param for the value function. Note that this is sensitive to the
        # scale of the rewards. If your expected V is large, increase this.
        "vf_clip_param": 10.0,
        # If set, clip the global norm of gradients by this amount.
        "grad_clip": None,
        # Target value for KL divergence.
        "kl_target": 0.01,
        # Whether to rollout "complete_episodes" or "truncate_episodes".
        "batch_mode": "truncate_episodes",
        # Which observation filter to apply to the observation.
        "observation_filter": "MeanStdFilter",
        # Use the sync samples optimizer instead of the multi-gpu one.
        "simple_optimizer": False,
    }
)


def validate_config(config: dict) -> None:
    get = config.__getitem__
    if get("sgd_minibatch_size") > get("train_batch_size"):
        raise ValueError(
            f"PPO config: 'sgd_minibatch_size' ({get('sgd_minibatch_size')}) must be <= 'train_batch_size'"
            f" ({get('train_batch_size')})"
        )
    for key in ("num_sgd_iter", "sgd_minibatch_size"):
        if get(key) < 1:
            raise ValueError(f"PPO config: {key!r} must be >= 1, got {get(key)!r}")
    for key in ("clip_param", "kl_target", "vf_clip_param"):
        if get(key) <= 0:
            raise ValueError(f"PPO config: {key!r} must be > 0, got {get(key)!r}")
    if not 0.0 <= get("lambda") <= 1.0:
        raise ValueError(f"PPO config: 'lambda' must be in [0, 1], got {get('lambda')!r}")
    if get("kl_coeff") < 0:
        raise ValueError(f"PPO config: 'kl_coeff' must be >= 0, got {get('kl_coeff')!r}")
    if get("batch_mode") == "truncate_episodes" and not get("use_gae"):
        raise ValueError(
            "PPO config: 'batch_mode': 'truncate_episodes' needs 'use_gae': True (a value function to bootstrap"
            " cut episodes); set 'batch_mode': 'complete_episodes' to use Monte-Carlo returns"
        )


def policy_optimizer(config: dict) -> tuple[type, dict]:
    standardize = (Postprocessing.ADVANTAGES,)
    if config["simple_optimizer"]:
        return SyncSamplesOptimizer, dict(
            num_sgd_iter=config["num_sgd_iter"],
            train_batch_size=config["train_batch_size"],
            sgd_minibatch_size=config["sgd_minibatch_size"],
            standardize_fields=standardize,
            seed=config["seed"],
        )
    return LocalMultiGPUOptimizer, dict(
        sgd_batch_size=config["sgd_minibatch_size"],
        num_sgd_iter=config["num_sgd_iter"],
        num_gpus=config["num_gpus"],
        train_batch_size=config["train_batch_size"],
        standardize_fields=standardize,
        seed=config["seed"],
    )


def update_kl(trainer, fetches: dict) -> None:
    """After each SGD round, adapt every trained policy's KL coefficient to the KL it measured."""
    for pid, stats in fetches.items():
        if "kl" in stats:
            trainer.workers.local_worker().policy_map[pid].update_kl(stats["kl"])


def warn_about_bad_reward_scales(trainer, result: dict) -> None:
    """Once per trainer: returns far beyond vf_clip_param make the clipped value loss learn very slowly."""
    import logging

    mean = result.get("episode_reward_mean")
    if getattr(trainer, "_warned_reward_scale", False) or mean is None or mean != mean:
        return
    if abs(mean) > 200 * trainer.config["vf_clip_param"]:
        trainer._warned_reward_scale = True
        logging.getLogger(__name__).warning(
            "episode rewards (mean %.1f) are large next to vf_clip_param=%s: the value function may learn"
            " slowly; consider raising vf_clip_param",
            mean,
            trainer.config["vf_clip_param"],
        )


PPOTrainer = build_trainer(
    name="PPO",
    default_config=DEFAULT_CONFIG,
    default_policy=PPOTorchPolicy,
    policy_optimizer=policy_optimizer,
    validate_config=validate_config,
    after_optimizer_step=update_kl,
    after_train_result=warn_about_bad_reward_scales,
)
