"""Learning tests of the off-policy family: seeded runs that must reach a reward within a step budget.

Default run: DQN CartPole-v1 (100-episode mean >= 400 within 100k steps), TD3 Pendulum-v1 (last-10 mean >= -300
within 20k), APEX with 2 workers CartPole-v1 (>= 200 within 100k). Marked ``learning`` (longer): Rainbow-style
DQN >= 475, TD3 Pendulum-v1 >= -200 within 20k, APEX_DDPG Pendulum-v1 >= -300, TD3 MountainCarContinuous-v0 >= 90.

Measured on the shared 2-core machine (load 3-10 from other runs), seed 0:
    DQN CartPole-v1          406.1 at  78k steps, 100 s      Rainbow CartPole-v1     481.3 at 90k steps, 207 s
    TD3 Pendulum-v1 (last10) -170.9 at   8k steps,  19 s      APEX_DDPG Pendulum-v1  -210.6 at 76k steps,  31 s
    APEX CartPole-v1         209.8 at  70k steps,  54 s      TD3 MountainCarCont.     90.8 at 18k steps,  41 s
"""

from __future__ import annotations

import time

import pytest

from relayrl.agents.registry import get_trainer_class
from relayrl.tuned_examples.regression import tuned_config

# DQN on CartPole-v1: small nets, 3-step double dueling DQN with prioritized replay; uncompressed observations
# (4 floats do not compress).
DQN_CARTPOLE = {
    "seed": 0,
    "compress_observations": False,
    "model": {"fcnet_hiddens": [64], "fcnet_activation": "relu"},
    "hiddens": [64],
    "lr": 1e-3,
    "n_step": 3,
    "train_batch_size": 64,
    "target_network_update_freq": 500,
    "exploration_fraction": 0.1,
    "schedule_max_timesteps": 100000,
    "timesteps_per_iteration": 2000,
    "min_iter_time_s": 0,
}

TD3_PENDULUM = {
    "seed": 0,
    "actor_hiddens": [64, 64],
    "critic_hiddens": [64, 64],
    "learning_starts": 1000,
    "pure_exploration_steps": 1000,
    "timesteps_per_iteration": 1000,
    "min_iter_time_s": 0,
    "metrics_smoothing_episodes": 10,
}

APEX_CARTPOLE = tuned_config("dqn/cartpole-apex.yaml")  # sampling waits for the learner: see the file


def train_until(name: str, env: str, config: dict, threshold: float, max_steps: int) -> dict:
    """Trains until ``episode_reward_mean`` >= threshold or ``max_steps`` env steps; returns the last result
    with ``best`` (the best mean seen) and ``wall_s``."""
    trainer = get_trainer_class(name)(env=env, config=config)
    start, best = time.time(), float("-inf")
    try:
        while True:
            result = trainer.train()
            mean = result["episode_reward_mean"]
            best = max(best, mean) if mean == mean else best
            print(f"{name} {env}: {result['timesteps_total']} steps, mean {mean:.1f}, {time.time() - start:.0f} s")
            if mean >= threshold or result["timesteps_total"] >= max_steps:
                break
    finally:
        trainer.stop()
    result["best"], result["wall_s"] = best, time.time() - start
    return result


def assert_reached(result: dict, threshold: float, max_steps: int) -> None:
    assert result["episode_reward_mean"] >= threshold, (
        f"episode_reward_mean {result['episode_reward_mean']:.1f} < {threshold} after {result['timesteps_total']}"
        f" steps (best {result['best']:.1f})"
    )
    assert result["timesteps_total"] <= max_steps


def test_dqn_cartpole():
    result = train_until("DQN", "CartPole-v1", DQN_CARTPOLE, 400, 100_000)
    assert_reached(result, 400, 100_000)


def test_td3_pendulum():
    result = train_until("TD3", "Pendulum-v1", TD3_PENDULUM, -300, 20_000)
    assert_reached(result, -300, 20_000)


def test_apex_cartpole():
    result = train_until("APEX", "CartPole-v1", APEX_CARTPOLE, 200, 100_000)
    assert_reached(result, 200, 100_000)


@pytest.mark.learning
def test_rainbow_cartpole():
    config = {
        **DQN_CARTPOLE,
        "dueling": True,
        "double_q": True,
        "n_step": 3,
        "prioritized_replay": True,
        "num_atoms": 51,
        "v_min": 0.0,
        "v_max": 100.0,
        "noisy": True,
        "exploration_final_eps": 0.0,
        "exploration_fraction": 0.02,
    }
    result = train_until("DQN", "CartPole-v1", config, 475, 200_000)
    assert_reached(result, 475, 200_000)


@pytest.mark.learning
def test_td3_pendulum_200():
    result = train_until("TD3", "Pendulum-v1", TD3_PENDULUM, -200, 20_000)
    assert_reached(result, -200, 20_000)


@pytest.mark.learning
def test_apex_ddpg_pendulum():
    config = {
        "seed": 0,
        "num_workers": 2,
        "num_gpus": 0,
        "actor_hiddens": [64, 64],
        "critic_hiddens": [64, 64],
        "buffer_size": 100000,
        "learning_starts": 1000,
        "train_batch_size": 256,
        "sample_batch_size": 20,
        "target_network_update_freq": 0,
        "tau": 5e-3,
        "actor_lr": 1e-3,
        "critic_lr": 1e-3,
        "exploration_noise_type": "gaussian",
        "noise_scale": 1.0,
        "exploration_should_anneal": False,
        "timesteps_per_iteration": 2000,
        "min_iter_time_s": 0,
        "metrics_smoothing_episodes": 10,
        "optimizer": {"num_replay_buffer_shards": 1, "max_weight_sync_delay": 100, "max_sample_train_ratio": 0.1},
    }
    # Ape-X is asynchronous, so a seed does not fix the run: measured -210.6 at 76k, -237.9 at 120k, and twice
    # still below -300 at 100k. The issue names no budget for this one; 250k leaves room for the slow runs.
    result = train_until("APEX_DDPG", "Pendulum-v1", config, -300, 250_000)
    assert_reached(result, -300, 250_000)


@pytest.mark.learning
def test_td3_mountain_car_continuous():
    # Uniformly random actions rarely reach the flag; temporally correlated OU noise (std ~0.76 of the action,
    # correlation time ~7 steps) builds up momentum and finds it in the first few episodes.
    config = {
        "seed": 0,
        "actor_hiddens": [64, 64],
        "critic_hiddens": [64, 64],
        "learning_starts": 1000,
        "pure_exploration_steps": 0,
        "exploration_noise_type": "ou",
        "noise_scale": 1.0,
        "exploration_should_anneal": False,
        "timesteps_per_iteration": 2000,
        "min_iter_time_s": 0,
        "metrics_smoothing_episodes": 10,
    }
    result = train_until("TD3", "MountainCarContinuous-v0", config, 90, 100_000)
    assert_reached(result, 90, 100_000)
