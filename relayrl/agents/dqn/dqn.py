"""Deep Q-Networks with the Rainbow parts (Mnih et al. 2015, https://www.nature.com/articles/nature14236;
Hessel et al. 2018, "Rainbow", https://arxiv.org/abs/1710.02298).

Dueling heads, double Q, C51 distributional returns, noisy nets, n-step returns and prioritized replay are each a
config switch (see DEFAULT_CONFIG). Training is the SyncReplayOptimizer's sample -> replay -> learn loop; the
policy (loss, acting, n-step postprocessing) is in ``dqn_torch_policy.py``.
"""

from __future__ import annotations

from relayrl.agents.dqn.dqn_torch_policy import DQNTorchPolicy
from relayrl.agents.trainer import with_common_config
from relayrl.agents.trainer_template import build_trainer
from relayrl.optimizers.replay_options import replay_optimizer_spec

DEFAULT_CONFIG = with_common_config(
    {
        # === Model ===
        # Number of atoms for representing the distribution of return. When
        # this is greater than 1, distributional Q-learning is used.
        "num_atoms": 1,
        # Lower bound of the discrete support of the return distribution.
        "v_min": -10.0,
        # Upper bound of the discrete support of the return distribution.
        "v_max": 10.0,
        # Whether to use noisy network (factorised Gaussian NoisyLinear head layers).
        "noisy": False,
        # Control the initial value of noisy nets (sigma = sigma0 / sqrt(fan_in)).
        "sigma0": 0.5,
        # Whether to use dueling dqn.
        "dueling": True,
        # Whether to use double dqn.
        "double_q": True,
        # Hidden layer sizes of the state and action value networks (the heads; the torso is model.fcnet_hiddens).
        "hiddens": [256],
        # N-step Q learning.
        "n_step": 1,
        # === Recurrent Q-learning (model.use_lstm: R2D2, Kapturowski et al. 2019; ignored by feed-forward) ===
        # Steps of each sequence stored in replay (a slot is a sequence; buffer_size and train_batch_size count
        # sequences). Sequences never cross episodes: a sample_batch_size below this gives shorter ones.
        "replay_sequence_length": 20,
        # Steps at each replayed sequence's start that only warm the RNN state from the stored state (no loss,
        # no gradient); consecutive stored sequences overlap by this many steps. Must be < replay_sequence_length.
        "burn_in": 0,
        # === Exploration ===
        # Max num timesteps for annealing schedules. Exploration is annealed from
        # 1.0 to exploration_final_eps over exploration_fraction * schedule_max_timesteps.
        "schedule_max_timesteps": 100000,
        # Number of env steps to optimize for before returning.
        "timesteps_per_iteration": 1000,
        # Fraction of entire training period over which the exploration rate is annealed.
        "exploration_fraction": 0.1,
        # Final value of random action probability.
        "exploration_final_eps": 0.02,
        # Update the target network every `target_network_update_freq` sampled steps.
        "target_network_update_freq": 500,
        # === Replay buffer ===
        # Size of the replay buffer. Note that if async_updates is set, then
        # each worker will have a replay buffer of this size.
        "buffer_size": 50000,
        # If True prioritized replay buffer will be used.
        "prioritized_replay": True,
        # Alpha parameter for prioritized replay buffer.
        "prioritized_replay_alpha": 0.6,
        # Beta parameter for sampling from prioritized replay buffer.
        "prioritized_replay_beta": 0.4,
        # Fraction of entire training period over which the beta parameter is annealed.
        "beta_annealing_fraction": 0.2,
        # Final value of beta.
        "final_prioritized_replay_beta": 0.4,
        # Epsilon to add to the TD errors when updating priorities.
        "prioritized_replay_eps": 1e-6,
        # Whether to LZ4 compress observations (in sample batches and in the replay buffer).
        "compress_observations": True,
        # === Optimization ===
        # Learning rate for adam optimizer.
        "lr": 5e-4,
        # Adam epsilon hyper parameter.
        "adam_epsilon": 1e-8,
        # If not None, clip gradients during optimization at this value.
        "grad_norm_clipping": 40,
        # How many steps of the model to sample before learning starts.
        "learning_starts": 1000,
        # Update the replay buffer with this many samples at once. Note that
        # this setting applies per-worker if num_workers > 1.
        "sample_batch_size": 4,
        # Size of a batched sampled from replay buffer for training. Note that
        # if async_updates is set, then each worker returns gradients for a
        # batch of this size.
        "train_batch_size": 32,
        # === Parallelism ===
        # Number of workers for collecting samples with. This only makes sense
        # to increase if your environment is particularly slow to sample, or if
        # you're using the Async or Ape-X optimizers.
        "num_workers": 0,
        # Optimizer class to use.
        "optimizer_class": "SyncReplayOptimizer",
        # Whether to use a distribution of epsilons across workers for exploration.
        "per_worker_exploration": False,
        # Whether to compute priorities on workers.
        "worker_side_prioritization": False,
        # Prevent iterations from going lower than this time span.
        "min_iter_time_s": 1,
    }
)


def validate_config(config: dict, name: str = "DQN") -> None:
    get = config.__getitem__
    for key in ("n_step", "num_atoms", "buffer_size", "train_batch_size", "sample_batch_size"):
        if get(key) < 1:
            raise ValueError(f"{name} config: {key!r} must be >= 1, got {get(key)!r}")
    for key in ("learning_starts", "target_network_update_freq", "schedule_max_timesteps"):
        if get(key) < 0:
            raise ValueError(f"{name} config: {key!r} must be >= 0, got {get(key)!r}")
    if get("num_atoms") > 1 and not get("v_min") < get("v_max"):
        raise ValueError(f"{name} config: 'v_min' ({get('v_min')}) must be < 'v_max' ({get('v_max')})")
    for key in ("exploration_fraction", "exploration_final_eps", "beta_annealing_fraction"):
        if not 0.0 <= get(key) <= 1.0:
            raise ValueError(f"{name} config: {key!r} must be in [0, 1], got {get(key)!r}")
    if get("prioritized_replay_alpha") < 0 or get("prioritized_replay_eps") < 0:
        raise ValueError(f"{name} config: 'prioritized_replay_alpha' and 'prioritized_replay_eps' must be >= 0")
    if get("per_worker_exploration") and get("num_workers") < 1:
        raise ValueError(f"{name} config: 'per_worker_exploration' needs 'num_workers' >= 1 (remote actors)")
    if not 0 <= get("burn_in") < get("replay_sequence_length"):
        raise ValueError(
            f"{name} config: 'burn_in' ({get('burn_in')}) must be in [0, 'replay_sequence_length'"
            f" ({get('replay_sequence_length')}))"
        )
    if get("optimizer_class") not in ("SyncReplayOptimizer", "AsyncReplayOptimizer"):
        raise ValueError(f"{name} config: 'optimizer_class' must be 'SyncReplayOptimizer' or 'AsyncReplayOptimizer'")


# The replay optimizer ``optimizer_class`` names, with the config's replay options (shared with DDPG).
policy_optimizer = replay_optimizer_spec


DQNTrainer = build_trainer(
    name="DQN",
    default_policy=DQNTorchPolicy,
    default_config=DEFAULT_CONFIG,
    policy_optimizer=policy_optimizer,
    validate_config=validate_config,
)
