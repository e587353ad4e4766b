"""The Ape-X settings (Horgan et al. 2018, "Distributed Prioritized Experience Replay",
https://arxiv.org/abs/1803.00933) that Ape-X DQN and Ape-X DDPG lay over their base algorithm's config.

    APEX_DEFAULT_CONFIG = apex_config(DQN_CONFIG)
    APEX_DDPG_DEFAULT_CONFIG = apex_config(DDPG_CONFIG)
"""

from __future__ import annotations

from relayrl.config import merge_dicts

APEX_SETTINGS = {
    # Ape-X trains with the AsyncReplayOptimizer.
    "optimizer_class": "AsyncReplayOptimizer",
    "optimizer": {
        # A worker gets new weights after sampling this many steps since its last update.
        "max_weight_sync_delay": 400,
        # Number of replay actors (shards of the replay memory).
        "num_replay_buffer_shards": 4,
        # Report the first replay shard's statistics in the result.
        "debug": False,
    },
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
    # Target network updates every this many trained steps (DDPG: hard updates; 0 there: soft updates with tau).
    "target_network_update_freq": 500000,
    # Number of env steps to optimize for before returning.
    "timesteps_per_iteration": 25000,
    # Whether to use a distribution of exploration levels across workers (DQN: epsilons, DDPG: noise multipliers).
    "per_worker_exploration": True,
    # Whether to compute priorities on workers.
    "worker_side_prioritization": True,
    # Prevent iterations from going lower than this time span.
    "min_iter_time_s": 30,
}


def apex_config(base: dict, overrides: dict | None = None) -> dict:
    """``base`` (DQN's or DDPG's DEFAULT_CONFIG, whose options all stay supported) with the Ape-X settings, then
    ``overrides``; nested dicts (``optimizer``) are merged key by key."""
    return merge_dicts(merge_dicts(base, APEX_SETTINGS), overrides or {})
