"""Recurrent PPO, A2C and IMPALA learn StatelessCartPole (CartPole-v1 without the velocities; issue 13), seeded, with a
reward target and an env-step budget; so do two recurrent PPO policies, one per agent of a 2-agent StatelessCartPole
(``policy_reward_mean``). The figure is ``episode_reward_mean``: over the last 100 episodes for PPO and A2C,
the last 20 for IMPALA, whose return swings by 100+ within 50k steps on this task (a 100-episode window at 400
spans 40k+ steps: the policy of long ago; tests/learning/test_async_family.py does the same).

A feed-forward policy cannot pass these bars: A2C with the same settings and ``fcnet_hiddens: [64, 64]`` stays
at 45.8 at 300k steps (best 53.1 on the way; seed 0). IMPALA is asynchronous: seeded, not bit-for-bit reproducible.
"""

from __future__ import annotations

import time

import pytest
import torch

from relayrl.agents.registry import get_trainer_class
from relayrl.env import make_multi_agent, register_env
from relayrl.examples.stateless_cartpole import LSTM_MODEL, PPO_SETTINGS, StatelessCartPole

LSTM64 = {"use_lstm": True, "lstm_cell_size": 64, "fcnet_hiddens": [64]}
# The value head shares the LSTM: with returns of 100+, a larger vf_loss_coeff drowns the policy's gradient.
CONFIGS = {
    # The settings of tests/unit/test_recurrent.py's quick test (150 within 150k steps), with its model.
    "PPO": {**PPO_SETTINGS, "model": LSTM_MODEL},
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
    start = time.time()
    trainer = get_trainer_class(algo)(env=StatelessCartPole, config={**CONFIGS[algo], "seed": seed})
    try:
        while True:
            result = trainer.train()
            if result["episode_reward_mean"] >= target or result["timesteps_total"] >= budget:
                break
    finally:
        trainer.stop()
    print(
        f"{algo}: reward {result['episode_reward_mean']:.1f} at {result['timesteps_total']} steps,"
        f" {time.time() - start:.0f} s"
    )
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


@pytest.mark.learning
def test_ppo_lstm_reaches_450_within_500k_steps():
    # Measured (seed 0, this test): 450.2 at 230k steps, 29 s on 2 shared cores (43 s under load 4). Seeds 1, 2
    # (the same settings, the library a few commits earlier; seed 0 was 457.6 at 258k there): 455.0 at 294k, 456.2
    # at 360k steps.
    result = train_until("PPO", 450, 500_000)
    assert result["episode_reward_mean"] >= 450
    assert result["timesteps_total"] - result["timesteps_this_iter"] < 500_000


@pytest.mark.learning
def test_two_agent_stateless_cartpole_two_lstm_ppo_policies_reach_400_within_2m_steps():
    """Two independent copies of StatelessCartPole in one env (the episode lasts until both poles are down or both
    reach 500 steps), agent i acting with its own recurrent PPO policy "p{i}". The PPO settings above, except: the
    episode goes on for the leading agent while the other one waits, so the lagging policy gets few rows per
    iteration (about train_batch_size * its return / 500): twice the batch, and the adaptive KL penalty (kl_coeff
    0.2 towards kl_target 0.01) against the collapses of a policy learning on a few hundred rows at lr 3e-3.

    Measured (seed 0, this test): p0 478.9, p1 415.9 at 444k env steps (697k agent steps), 122 s of training on 2
    shared cores (load 4). Seeds 1, 2 (the same settings, the multi-agent sampler a few commits earlier; seed 0 was
    472.8 / 400.5 at 308k there): 400.6 / 470.3 at 332k, 407.2 / 438.9 at 388k env steps.
    With the single-agent settings (train_batch_size 2000, kl_coeff 0), seed 0: p0 at 97, p1 at 495 after 514k env
    steps, p0 having collapsed from 295; with lr 1e-3 or an lr decay to 3e-4 one policy is still below 300 at 900k
    and 1.48M env steps."""
    from test_multi_agent_learning import _train_until_every_policy

    register_env("ma_stateless_cartpole2", make_multi_agent(StatelessCartPole, 2))
    config = {
        **CONFIGS["PPO"],
        "seed": 0,
        "sample_batch_size": 500,
        "train_batch_size": 4000,
        "kl_coeff": 0.2,
        "multiagent": {
            "policies": {"p0": (None, None, None, {}), "p1": (None, None, None, {})},
            "policy_mapping_fn": lambda agent_id, episode, **kw: f"p{agent_id}",
        },
    }
    trainer = get_trainer_class("PPO")(env="ma_stateless_cartpole2", config=config)
    try:
        assert all(trainer.get_policy(pid).is_recurrent() for pid in ("p0", "p1"))
        result = _train_until_every_policy(trainer, 400, 2_000_000)
    finally:
        trainer.stop()
    assert set(result["policy_reward_mean"]) == {"p0", "p1"}
    assert min(result["policy_reward_mean"].values()) >= 400
    assert result["timesteps_total"] - result["timesteps_this_iter"] < 2_000_000
    assert set(result["info"]["learner"]) == {"p0", "p1"}
