"""Ape-X DDPG (Horgan et al. 2018, https://arxiv.org/abs/1803.00933, section 4.2): DDPG's policy trained by the
AsyncReplayOptimizer (distributed prioritized replay), each actor with its own noise multiplier."""

from __future__ import annotations

from relayrl.agents.async_iteration import async_train
from relayrl.agents.ddpg.ddpg import DEFAULT_CONFIG as DDPG_CONFIG
from relayrl.agents.ddpg.ddpg import policy_optimizer, validate_config
from relayrl.agents.ddpg.ddpg_torch_policy import DDPGTorchPolicy
from relayrl.agents.trainer import merge_dicts
from relayrl.agents.trainer_template import build_trainer

APEX_DDPG_DEFAULT_CONFIG = merge_dicts(
    DDPG_CONFIG,  # see also the options in ddpg.py, which are also supported
    {
        # Ape-X trains with the AsyncReplayOptimizer.
        "optimizer_class": "AsyncReplayOptimizer",
        "optimizer": merge_dicts(
            DDPG_CONFIG["optimizer"], {
                # A worker gets new weights after sampling this many steps since its last update.
                "max_weight_sync_delay": 400,
                # Number of replay actors (shards of the replay memory).
                "num_replay_buffer_shards": 4,
                # Report the first replay shard's statistics in the result.
                "debug": False,
            }),
        # N-step Q learning.
        "n_step": 3,
        # GPUs of the learner (the CPU is used when no CUDA device is present).
        "num_gpus": 1,
        # Actors sampling experience.
        "num_workers": 32,
        # Total size of the replay memory (split over the shards).
        "buffer_size": 2000000,
        # Steps in the replay memory (over all shards) before learning starts.
        "learning_starts": 50000,
        # Size of a replayed training batch.
        "train_batch_size": 512,
        # Steps per sub-env in each worker's sample batch.
        "sample_batch_size": 50,
        # Hard target updates every this many trained steps (0: soft updates with tau).
        "target_network_update_freq": 500000,
        # Number of env steps to optimize for before returning.
        "timesteps_per_iteration": 25000,
        # Whether to use a distribution of noise multipliers across workers for exploration.
        "per_worker_exploration": True,
        # Whether to compute priorities on workers.
        "worker_side_prioritization": True,
        # Prevent iterations from going lower than this time span.
        "min_iter_time_s": 30,
    },
)


def validate_apex_ddpg_config(config: dict) -> None:
    validate_config(config, name="APEX_DDPG")
    if config["num_workers"] < 1:
        raise ValueError("APEX_DDPG config: 'num_workers' must be >= 1 (Ape-X samples on remote actors)")


_ApexDDPGBase = build_trainer(
    name="APEX_DDPG",
    default_policy=DDPGTorchPolicy,
    default_config=APEX_DDPG_DEFAULT_CONFIG,
    policy_optimizer=policy_optimizer,
    validate_config=validate_apex_ddpg_config,
)


class ApexDDPGTrainer(_ApexDDPGBase):
    """The Ape-X DDPG trainer. Its iteration is the asynchronous trainers' one (``async_iteration.py``): filters are
    synchronised once per iteration, and ``timesteps_total`` follows the optimizer's ``num_steps_sampled``."""

    _train = async_train


ApexDDPGTrainer.__module__ = __name__
