"""WorkerSet on Ray: weight broadcast, filter synchronisation, failure recovery."""

import os
import time

import numpy as np
import pytest
import ray

from relayrl.agents.ppo import PPOTrainer


def small_ppo(**overrides):
    config = {
        "num_workers": 2,
        "num_envs_per_worker": 2,
        "sample_batch_size": 50,
        "train_batch_size": 200,
        "sgd_minibatch_size": 50,
        "num_sgd_iter": 1,
        "model": {"fcnet_hiddens": [16]},
        "seed": 1,
    }
    config.update(overrides)
    return PPOTrainer(env="CartPole-v1", config=config)


def wait_until_dead(actor, timeout_s: float = 30.0) -> None:
    """ray.kill is asynchronous: a call made right after it may still be served."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            ray.get(actor.ping.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - RayActorError once the kill has taken effect
            return
        time.sleep(0.1)
    raise AssertionError("the killed actor still answers")


def test_weights_filters_and_recovery(ray_session):
    trainer = small_ppo(ignore_worker_failures=True)
    try:
        result = trainer.train()
        assert result["timesteps_this_iter"] >= 200
        # Every worker holds the learner's weights after the next broadcast.
        trainer.workers.sync_weights()
        weights = trainer.workers.foreach_worker(lambda w: w.get_policy().get_weights())
        for w in weights[1:]:
            assert all(np.array_equal(weights[0][k], w[k]) for k in w)
        # The local (master) filter has seen every remote observation exactly once.
        local = trainer.workers.local_worker().filters["default_policy"]
        remotes = trainer.workers.remote_workers()
        counts = ray.get([w.apply.remote(lambda w: w.sampler.obs_filter.rs.n) for w in remotes])
        # Each step's next observation, plus the first observation of every episode (4 sub-envs at the start,
        # then one per finished episode).
        assert local.rs.n == trainer.optimizer.num_steps_sampled + 2 * 2 + result["episodes_total"]
        assert all(c == local.rs.n for c in counts)

        # A dead worker is replaced with a fresh one that carries the current weights.
        victim = trainer.workers.remote_workers()[0]
        ray.kill(victim)
        wait_until_dead(victim)
        assert trainer.workers.recreate_failed_workers() == [1]  # worker_index of the victim
        assert trainer.workers.remote_workers()[0] is not victim
        result = trainer.train()
        assert result["training_iteration"] == 2
    finally:
        trainer.stop()


def test_results_have_the_documented_keys(ray_session):
    trainer = small_ppo(num_workers=1)
    try:
        result = trainer.train()
    finally:
        trainer.stop()
    for key in (
        "episode_reward_mean",
        "episode_reward_min",
        "episode_reward_max",
        "episode_len_mean",
        "episodes_this_iter",
        "episodes_total",
        "timesteps_total",
        "timesteps_this_iter",
        "time_this_iter_s",
        "time_total_s",
        "training_iteration",
        "policy_reward_mean",
        "custom_metrics",
        "sampler_perf",
        "info",
    ):
        assert key in result, key
    info = result["info"]
    assert info["num_steps_sampled"] >= 200 and info["num_steps_trained"] >= 200
    assert "default_policy" in info["learner"] and "policy_loss" in info["learner"]["default_policy"]
    assert result["sampler_perf"]["mean_env_wait_ms"] > 0


def test_more_workers_than_cores_start_ray_with_enough_slots(monkeypatch):
    """Starting Ray itself, the worker set asks for a CPU slot per worker even beyond the cores: more workers
    than cores runs slower instead of waiting forever for a slot."""
    from relayrl.evaluation import worker_set

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    want = (os.cpu_count() or 1) + 7  # more slots than this machine has cores, whatever the machine
    worker_set.ensure_ray(want)
    assert calls and calls[0]["num_cpus"] == want


def test_a_running_ray_with_too_few_cpus_is_an_error_not_a_hang(ray_session):
    from relayrl.experiments import UserError, start_ray

    have = int(ray.cluster_resources()["CPU"])
    start = time.time()
    with pytest.raises(ValueError, match=f"need {have + 1:g} CPUs .* has {have:g}"):
        small_ppo(num_workers=have + 1)
    with pytest.raises(UserError, match=f"needs {have + 5} CPUs"):
        start_ray(need=have + 5)
    assert time.time() - start < 60
