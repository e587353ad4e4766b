"""Ape-X DQN (Horgan et al. 2018, "Distributed Prioritized Experience Replay", https://arxiv.org/abs/1803.00933).

DQN's policy and loss (double, dueling, 3-step by default) trained by the AsyncReplayOptimizer: many actors with
per-worker epsilons that prioritize their own experience, sharded replay actors and one learner thread.
"""

from __future__ import annotations

from relayrl.agents.async_iteration import async_train
from relayrl.agents.dqn.dqn import DEFAULT_CONFIG as DQN_CONFIG
from relayrl.agents.dqn.dqn import detect_action_mask, policy_optimizer, validate_config
from relayrl.agents.dqn.dqn_torch_policy import DQNTorchPolicy
from relayrl.agents.trainer import merge_dicts
from relayrl.agents.trainer_template import build_trainer

APEX_DEFAULT_CONFIG = merge_dicts(
    DQN_CONFIG,  # see also the options in dqn.py, which are also supported
    {
        # Ape-X trains with the AsyncReplayOptimizer.
        "optimizer_class": "AsyncReplayOptimizer",
        "optimizer": merge_dicts(
            DQN_CONFIG["optimizer"], {
                # A worker gets new weights after sampling this many steps since its last update.
                "max_weight_sync_delay": 400,
                # Number of replay actors (shards of the replay memory).
                "num_replay_buffer_shards": 4,
                # Report the first replay shard's statistics in the result.
                "debug": False,
            }),
        # N-step Q learning.
        "n_step": 3,
        # GPUs of the learner.
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
        # Update the target network every this many trained steps.
        "target_network_update_freq": 500000,
        # Number of env steps to optimize for before returning.
        "timesteps_per_iteration": 25000,
        # Whether to use a distribution of epsilons across workers for exploration.
        "per_worker_exploration": True,
        # Whether to compute priorities on workers.
        "worker_side_prioritization": True,
        # Prevent iterations from going lower than this time span.
        "min_iter_time_s": 30,
    },
)


def validate_apex_config(config: dict) -> None:
    validate_config(config, name="APEX")
    if config["num_workers"] < 1:
        raise ValueError("APEX config: 'num_workers' must be >= 1 (Ape-X samples on remote actors)")


_ApexBase = build_trainer(
    name="APEX",
    default_policy=DQNTorchPolicy,
    default_config=APEX_DEFAULT_CONFIG,
    policy_optimizer=policy_optimizer,
    validate_config=validate_apex_config,
    before_init=detect_action_mask,
)


class ApexTrainer(_ApexBase):
    """The Ape-X DQN trainer. Its iteration is the asynchronous trainers' one (``async_iteration.py``): filters are
    synchronised once per iteration, and ``timesteps_total`` follows the optimizer's ``num_steps_sampled``."""

    _train = async_train


ApexTrainer.__module__ = __name__
