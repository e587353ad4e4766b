"""Deep Deterministic Policy Gradients (Lillicrap et al. 2016, https://arxiv.org/abs/1509.02971), with the TD3
options of Fujimoto et al. 2018 (https://arxiv.org/abs/1802.09477) as config switches.

Training is the SyncReplayOptimizer's sample -> replay -> learn loop (the same as DQN's); the actor, critics,
noise and losses are in ``ddpg_torch_policy.py``. ``td3.py`` is this trainer with TD3's defaults.
"""

from __future__ import annotations

from relayrl.agents.ddpg.ddpg_torch_policy import DDPGTorchPolicy
from relayrl.agents.trainer import with_common_config
from relayrl.agents.trainer_template import build_trainer
from relayrl.optimizers.replay_options import replay_optimizer_spec

DEFAULT_CONFIG = with_common_config(
    {
        # === Model ===
        # Hidden layer sizes of the policy network.
        "actor_hiddens": [64, 64],
        # Hidden layers activation of the policy network.
        "actor_hidden_activation": "relu",
        # Hidden layer sizes of the critic network.
        "critic_hiddens": [64, 64],
        # Hidden layers activation of the critic network.
        "critic_hidden_activation": "relu",
        # N-step Q learning.
        "n_step": 1,
        # (TD3) Use two critics and take the smaller target value (clipped double Q).
        "twin_q": False,
        # (TD3) Update the actor and the target networks once every this many critic updates.
        "policy_delay": 1,
        # (TD3) Add clipped Gaussian noise to the target action (target policy smoothing).
        "smooth_target_policy": False,
        # (TD3) Std of the target policy noise, in units of half the action range.
        "target_noise": 0.2,
        # (TD3) Clip the target policy noise to [-target_noise_clip, target_noise_clip] (same units).
        "target_noise_clip": 0.5,
        # === Exploration ===
        # Max num timesteps for annealing schedules. Exploration is annealed from
        # 1.0 to exploration_final_eps over exploration_fraction * schedule_max_timesteps.
        "schedule_max_timesteps": 100000,
        # Number of env steps to optimize for before returning.
        "timesteps_per_iteration": 1000,
        # Fraction of entire training period over which the exploration rate is annealed.
        "exploration_fraction": 0.1,
        # Final value of the exploration multiplier of the noise.
        "exploration_final_eps": 0.02,
        # OU-noise scale (noise = noise_scale * multiplier * ou_state * (high - low)).
        "noise_scale": 0.1,
        # OU theta.
        "exploration_theta": 0.15,
        # OU sigma.
        "exploration_sigma": 0.2,
        # Exploration noise process: "ou" (Ornstein-Uhlenbeck, DDPG) or "gaussian" (TD3).
        "exploration_noise_type": "ou",
        # Std of the Gaussian exploration noise, in units of half the action range (times noise_scale * multiplier).
        "exploration_gaussian_sigma": 0.1,
        # Anneal the noise by the exploration schedule (False: constant noise, as TD3).
        "exploration_should_anneal": True,
        # Take uniformly random actions for this many initial timesteps.
        "pure_exploration_steps": 0,
        # Update the target network every `target_network_update_freq` steps (0: a soft update after every
        # actor update).
        "target_network_update_freq": 0,
        # Update the target by \tau * policy + (1-\tau) * target_policy.
        "tau": 0.002,
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
        # Epsilon to add to the TD errors when updating priorities.
        "prioritized_replay_eps": 1e-6,
        # Whether to LZ4 compress observations.
        "compress_observations": False,
        # === Optimization ===
        # Learning rate for adam optimizer of the actor.
        "actor_lr": 1e-4,
        # Learning rate for adam optimizer of the critic.
        "critic_lr": 1e-3,
        # If True, use huber loss instead of squared loss for critic network.
        # Conventionally, no need to clip gradients if using a huber loss.
        "use_huber": False,
        # Threshold of a huber loss.
        "huber_threshold": 1.0,
        # Weights for L2 regularization.
        "l2_reg": 1e-6,
        # If not None, clip gradients during optimization at this value.
        "grad_norm_clipping": None,
        # How many steps of the model to sample before learning starts.
        "learning_starts": 1500,
        # Update the replay buffer with this many samples at once. Note that this
        # setting applies per-worker if num_workers > 1.
        "sample_batch_size": 1,
        # Size of a batched sampled from replay buffer for training. Note that
        # if async_updates is set, then each worker returns gradients for a
        # batch of this size.
        "train_batch_size": 256,
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


def validate_config(config: dict, name: str = "DDPG") -> None:
    get = config.__getitem__
    for key in ("n_step", "policy_delay", "buffer_size", "train_batch_size", "sample_batch_size"):
        if get(key) < 1:
            raise ValueError(f"{name} config: {key!r} must be >= 1, got {get(key)!r}")
    if not 0.0 < get("tau") <= 1.0:
        raise ValueError(f"{name} config: 'tau' must be in (0, 1], got {get('tau')!r}")
    for key in (
        "target_noise",
        "target_noise_clip",
        "noise_scale",
        "l2_reg",
        "learning_starts",
        "pure_exploration_steps",
        "target_network_update_freq",
        "huber_threshold",
    ):
        if get(key) < 0:
            raise ValueError(f"{name} config: {key!r} must be >= 0, got {get(key)!r}")
    if get("exploration_noise_type") not in ("ou", "gaussian"):
        raise ValueError(
            f"{name} config: 'exploration_noise_type' must be 'ou' or 'gaussian', got {get('exploration_noise_type')!r}"
        )
    for act in ("actor_hidden_activation", "critic_hidden_activation"):
        if get(act) not in ("relu", "tanh", "elu", "linear"):
            raise ValueError(f"{name} config: {act!r} must be relu, tanh, elu or linear, got {get(act)!r}")
    if get("per_worker_exploration") and get("num_workers") < 1:
        raise ValueError(f"{name} config: 'per_worker_exploration' needs 'num_workers' >= 1 (remote actors)")
    if get("optimizer_class") not in ("SyncReplayOptimizer", "AsyncReplayOptimizer"):
        raise ValueError(f"{name} config: 'optimizer_class' must be 'SyncReplayOptimizer' or 'AsyncReplayOptimizer'")


# The replay optimizer ``optimizer_class`` names, with the config's replay options (shared with DQN).
policy_optimizer = replay_optimizer_spec


DDPGTrainer = build_trainer(
    name="DDPG",
    default_policy=DDPGTorchPolicy,
    default_config=DEFAULT_CONFIG,
    policy_optimizer=policy_optimizer,
    validate_config=validate_config,
)
