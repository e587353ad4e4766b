"""Learning claims for PG and PPO: seeded runs that must reach a reward threshold within a step budget.

The figure is the result's ``episode_reward_mean`` (the mean return of the last 100 episodes).
"""

import pytest

from relayrl.agents.pg import PGTrainer
from relayrl.agents.ppo import PPOTrainer
from relayrl.tuned_examples.regression import tuned_config

# The settings of relayrl/tuned_examples/ppo/cartpole-ppo.yaml (seed and num_workers set per test).
PPO_CARTPOLE = {k: v for k, v in tuned_config("ppo/cartpole-ppo.yaml").items() if k not in ("seed", "num_workers")}


def train_until(trainer, reward: float, max_steps: int) -> dict:
    best = None
    while True:
        result = trainer.train()
        if best is None or result["episode_reward_mean"] > best["episode_reward_mean"]:
            best = result
        if result["episode_reward_mean"] >= reward or result["timesteps_total"] >= max_steps:
            break
    print(
        f"{trainer}: reward {result['episode_reward_mean']:.1f} at {result['timesteps_total']} steps,"
        f" {result['time_total_s']:.1f} s (best {best['episode_reward_mean']:.1f})"
    )
    return result


def test_ppo_cartpole_local():
    trainer = PPOTrainer(env="CartPole-v1", config={**PPO_CARTPOLE, "num_workers": 0, "seed": 0})
    result = train_until(trainer, 450, 100_000)
    assert result["episode_reward_mean"] >= 450
    assert result["timesteps_total"] <= 100_000 + PPO_CARTPOLE["train_batch_size"]


def test_pg_cartpole():
    trainer = PGTrainer(env="CartPole-v1", config={"seed": 0})
    result = train_until(trainer, 150, 100_000)
    assert result["episode_reward_mean"] >= 150
    assert result["timesteps_total"] <= 100_000 + 200


def test_ppo_cartpole_two_ray_workers(ray_session):
    config = {**PPO_CARTPOLE, "num_workers": 2, "num_envs_per_worker": 4, "seed": 0}
    trainer = PPOTrainer(env="CartPole-v1", config=config)
    try:
        assert len(trainer.workers.remote_workers()) == 2
        result = train_until(trainer, 300, 100_000)
        assert result["episode_reward_mean"] >= 300
        assert result["timesteps_total"] <= 100_000 + 2 * 4 * 64
    finally:
        trainer.stop()


@pytest.mark.learning
def test_ppo_pendulum():
    # relayrl/tuned_examples/ppo/pendulum-ppo.yaml (measured: -249.8 at 148k steps).
    config = {
        "num_envs_per_worker": 10,
        "train_batch_size": 2048,
        "sgd_minibatch_size": 64,
        "num_sgd_iter": 10,
        "lr": 0.0003,
        "gamma": 0.95,
        "lambda": 0.1,
        "vf_clip_param": 10.0,
        "batch_mode": "complete_episodes",
        "model": {"fcnet_hiddens": [64, 64]},
        "seed": 0,
    }
    trainer = PPOTrainer(env="Pendulum-v1", config=config)
    result = train_until(trainer, -250, 400_000)
    assert result["episode_reward_mean"] >= -250
