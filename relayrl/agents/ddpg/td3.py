"""TD3 (Fujimoto et al. 2018, "Addressing Function Approximation Error in Actor-Critic Methods",
https://arxiv.org/abs/1802.09477): DDPG with clipped double Q, delayed policy updates, target policy smoothing,
Gaussian exploration noise and the paper's hyperparameters (section 6.1)."""

from __future__ import annotations

from relayrl.agents.ddpg.ddpg import DEFAULT_CONFIG as DDPG_CONFIG
from relayrl.agents.ddpg.ddpg import policy_optimizer, validate_config
from relayrl.agents.ddpg.ddpg_torch_policy import DDPGTorchPolicy
from relayrl.agents.trainer import merge_dicts
from relayrl.agents.trainer_template import build_trainer

TD3_DEFAULT_CONFIG = merge_dicts(
    DDPG_CONFIG,
    {
        # Clipped double Q-learning.
        "twin_q": True,
        # Delayed policy (and target) updates.
        "policy_delay": 2,
        # Target policy smoothing.
        "smooth_target_policy": True,
        "target_noise": 0.2,
        "target_noise_clip": 0.5,
        # Constant Gaussian exploration noise N(0, 0.1) (in units of half the action range).
        "exploration_noise_type": "gaussian",
        "exploration_gaussian_sigma": 0.1,
        "noise_scale": 1.0,
        "exploration_should_anneal": False,
        # Uniform random actions for the first 10k steps, and no learning before.
        "pure_exploration_steps": 10000,
        "learning_starts": 10000,
        # The paper's networks and optimisation.
        "actor_hiddens": [400, 300],
        "critic_hiddens": [400, 300],
        "actor_lr": 1e-3,
        "critic_lr": 1e-3,
        "tau": 5e-3,
        "l2_reg": 0.0,
        "train_batch_size": 100,
        "buffer_size": 1000000,
        "prioritized_replay": False,
        "use_huber": False,
    },
)


TD3Trainer = build_trainer(
    name="TD3",
    default_policy=DDPGTorchPolicy,
    default_config=TD3_DEFAULT_CONFIG,
    policy_optimizer=policy_optimizer,
    validate_config=lambda config: validate_config(config, name="TD3"),
)
