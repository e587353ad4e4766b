"""Recurrent A2C and IMPALA learn StatelessCartPole (CartPole-v1 without the velocities; issue 13), seeded, with a
reward target and an env-step budget. The figure is ``episode_reward_mean``: over the last 100 episodes for A2C,
the last 20 for IMPALA, whose return swings by 100+ within 50k steps on this task (a 100-episode window at 400
spans 40k+ steps: the policy of long ago; tests/learning/test_async_family.py does the same).

A feed-forward policy cannot pass these bars: A2C with the same settings and ``fcnet_hiddens: [64, 64]`` stays
at 45.8 at 300k steps (best 53.1 on the way; seed 0). IMPALA is asynchronous: seeded, not bit-for-bit reproducible.
"""

from __future__ import annotations

import pytest
import torch

from relayrl.agents.registry import get_trainer_class
from relayrl.examples.stateless_cartpole import StatelessCartPole

LSTM64 = {"use_lstm": True, "lstm_cell_size": 64, "fcnet_hiddens": [64]}
# The value head shares the LSTM: with returns of 100+, a larger vf_loss_coeff drowns the policy's gradient.
CONFIGS = {
    "A2C": {
        "num_workers": 0,
        "lr": 3e-3,
        "train_batch_size": 200,
        "sample_batch_size": 20,
        "num_envs_per_worker": 5,
        "min_iter_time_s": 0,
        "vf_loss_coeff": 0.01,
        "model": {**LSTM64, "max_seq_len": 20},
    },
    # gamma 0.95: values of at most 20 rather than 100 for the value head that shares the LSTM (measured,
    # seeds 0-2 with gamma 0.99, lr 1e-3, vf_loss_coeff 0.02: 400 at 622k-990k steps; lr 3e-3 and 0.01: one run
    # of two reached 400 within 1M).
    "IMPALA": {
        "num_workers": 2,
        "num_gpus": 0,
        "lr": 2e-3,
        "gamma": 0.95,
        "train_batch_size": 200,
        "sample_batch_size": 20,  # the unroll, and the learner's sequence length
        "num_envs_per_worker": 5,
        "min_iter_time_s": 1,
        "vf_loss_coeff": 0.1,
        "metrics_smoothing_episodes": 20,
        "model": LSTM64,
    },
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread_and_ray_cleanup():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks on shared cores
    import ray

    started_here = not ray.is_initialized()
    yield
    torch.set_num_threads(before)
    if started_here and ray.is_initialized():
        ray.shutdown()


def train_until(algo: str, target: float, budget: int, seed: int = 0) -> dict:
    trainer = get_trainer_class(algo)(env=StatelessCartPole, config={**CONFIGS[algo], "seed": seed})
    try:
        while True:
            result = trainer.train()
            if result["episode_reward_mean"] >= target or result["timesteps_total"] >= budget:
                break
    finally:
        trainer.stop()
    print(f"{algo}: reward {result['episode_reward_mean']:.1f} at {result['timesteps_total']} steps")
    return result


def test_a2c_lstm_reaches_150_within_300k_steps():
    # Measured (seed 0): 150.8 at 146k steps, 18 s on 2 shared cores; seeds 1, 2: 75k, 50k steps.
    result = train_until("A2C", 150, 300_000)
    assert result["episode_reward_mean"] >= 150
    assert result["timesteps_total"] - result["timesteps_this_iter"] < 300_000


@pytest.mark.learning
def test_impala_lstm_with_two_workers_reaches_400_within_1m_steps():
    # Measured (2 Ray workers on 2 shared cores, load 4-13): seed 0: 404.2 at 549k steps (70 s), 418.0 at 609k
    # (36 s), 440.2 at 448k (37 s, this test); seed 1: 419.9 at 441k; seed 2: 437.6 at 668k.
    result = train_until("IMPALA", 400, 1_000_000)
    assert result["episode_reward_mean"] >= 400
    assert result["timesteps_total"] - result["timesteps_this_iter"] < 1_000_000
