"""IMPALA and Ape-X survive a remote worker (or a replay shard) killed with SIGKILL in the middle of train().

Each test kills one actor's process from a timer started just before ``train()`` and checks that the kill landed
while ``train()`` ran. With ``recreate_failed_workers`` the replacement gets sample tasks and its batches arrive,
with ``ignore_worker_failures`` the run goes on with the other worker, without either key it is a
WorkerFailureError that names the worker and both keys, and so is losing the last worker. An error raised by a
worker's own code (its env) is not a worker failure: it propagates. ``timesteps_total`` always equals the
optimizer's ``num_steps_sampled``.
"""

import collections
import os
import signal
import threading
import time

import gymnasium as gym
import pytest
import ray
from ray.exceptions import RayTaskError

from relayrl.agents.ddpg import ApexDDPGTrainer
from relayrl.agents.dqn import ApexTrainer
from relayrl.agents.impala import ImpalaTrainer
from relayrl.evaluation.worker_set import WorkerFailureError

# The kill lands early in an iteration of at least ITER_S: Ray may take a second or two (on a loaded machine) to
# report the death, and the optimizer should be the one that finds it.
KILL_AFTER_S = 0.5
ITER_S = 3
KEYS = ("recreate_failed_workers", "ignore_worker_failures")


_ARMED = False  # per process: set in a worker's process by arm()


def arm(worker) -> None:
    global _ARMED
    _ARMED = True


class FragileCartPole(gym.Wrapper):
    """CartPole whose step() raises in a process where arm() ran: an error in a worker's own code."""

    def __init__(self, ctx=None):
        super().__init__(gym.make("CartPole-v1"))

    def step(self, action):
        if _ARMED:
            raise ValueError("the env exploded")
        return self.env.step(action)


def impala(env="CartPole-v1", **overrides):
    config = {
        "num_workers": 2,
        "num_gpus": 0,
        "min_iter_time_s": ITER_S,
        "timesteps_per_iteration": 0,
        "sample_batch_size": 20,
        "train_batch_size": 100,
        "model": {"fcnet_hiddens": [16]},
        "seed": 0,
        "worker_start_timeout_s": 60,
        **overrides,
    }
    return ImpalaTrainer(env=env, config=config)


def apex(cls=ApexTrainer, **overrides):
    config = {
        "num_workers": 2,
        "num_gpus": 0,
        "min_iter_time_s": ITER_S,
        "timesteps_per_iteration": 0,
        "buffer_size": 2000,
        "learning_starts": 100,
        "train_batch_size": 32,
        "sample_batch_size": 20,
        "model": {"fcnet_hiddens": [16]},
        "seed": 0,
        "worker_start_timeout_s": 60,
        "optimizer": {"num_replay_buffer_shards": 2, "max_weight_sync_delay": 100},
        **overrides,
    }
    if cls is ApexTrainer:
        config.update(hiddens=[16], compress_observations=False)
        return cls(env="CartPole-v1", config=config)
    config.update(actor_hiddens=[16], critic_hiddens=[16], pure_exploration_steps=0)
    return cls(env="Pendulum-v1", config=config)


def pid_of(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60)


def train_killing(trainer, pid: int) -> dict:
    """``trainer.train()`` while a timer SIGKILLs ``pid``; checks that the kill landed during train()."""
    killed_at = []
    timer = threading.Timer(KILL_AFTER_S, lambda: (killed_at.append(time.time()), os.kill(pid, signal.SIGKILL)))
    start = time.time()
    timer.start()
    try:
        return trainer.train()
    finally:
        end = time.time()
        timer.cancel()
        assert killed_at and start < killed_at[0] < end, "the kill did not land during train()"


def count_batches_per_worker(trainer) -> collections.Counter:
    """Steps that arrive at the driver, by worker_index (recorded where each optimizer takes in a batch)."""
    counts: collections.Counter = collections.Counter()
    optimizer, workers = trainer.optimizer, trainer.workers
    if hasattr(optimizer, "_collect"):  # IMPALA
        collect = optimizer._collect

        def recording_collect():
            out = collect()
            for worker, batch, _ in out:
                counts[workers.worker_index(worker)] += batch.count
            return out

        optimizer._collect = recording_collect
    else:  # Ape-X adds each arrived count to the worker's steps since its last weight sync

        class Recording(dict):
            def __setitem__(self, worker, value):
                grown = value - self.get(worker, 0)
                if grown > 0:
                    counts[workers.worker_index(worker)] += grown
                super().__setitem__(worker, value)

        optimizer._steps_since_sync = Recording(optimizer._steps_since_sync)
    return counts


def assert_counters_agree(trainer, result):
    assert result["timesteps_total"] == trainer.optimizer.num_steps_sampled == result["info"]["num_steps_sampled"]


def apex_ddpg(**overrides):
    return apex(ApexDDPGTrainer, **overrides)


def check_recreated_worker_gets_work(trainer):
    """Kills worker 1 during train(); its replacement must get sample tasks and deliver batches."""
    victim = trainer.workers.remote_workers()[0]
    result = train_killing(trainer, pid_of(victim))
    assert result["num_recreated_workers"] == 1 and result["num_healthy_workers"] == 2
    assert_counters_agree(trainer, result)
    new = trainer.workers.remote_workers()[0]
    assert new != victim and trainer.workers.worker_index(new) == 1
    counts = count_batches_per_worker(trainer)
    deadline = time.time() + 60
    while not counts[1] and time.time() < deadline:
        result = trainer.train()
        assert_counters_agree(trainer, result)
    assert counts[1] > 0 and counts[2] > 0, counts  # the replacement's batches arrive, and the other's
    assert result["num_recreated_workers"] == 1


def test_impala_recreates_a_killed_worker_and_gives_it_work(ray_session):
    trainer = impala(FragileCartPole, recreate_failed_workers=True)
    try:
        check_recreated_worker_gets_work(trainer)
        # An exception in the replacement's env is the worker's own error: it propagates, nothing is recreated.
        ray.get(trainer.workers.remote_workers()[0].apply.remote(arm), timeout=60)
        with pytest.raises(RayTaskError, match="the env exploded") as info:
            trainer.train()
        assert not isinstance(info.value, WorkerFailureError)
        assert trainer.workers.num_recreated == 1 and trainer.workers.num_healthy_workers == 2
    finally:
        trainer.stop()


def test_apex_recreates_a_killed_worker_and_replaces_a_killed_replay_shard_by_an_empty_one(ray_session):
    trainer = apex(recreate_failed_workers=True)
    try:
        check_recreated_worker_gets_work(trainer)
        optimizer = trainer.optimizer
        victim = optimizer.replay_actors[1]
        assert ray.get(victim.stats.remote(), timeout=60)["default_policy"]["num_entries"] > 0
        result = train_killing(trainer, pid_of(victim))
        assert result["info"]["num_replay_shards_recreated"] == 1 and result["num_recreated_workers"] == 1
        new = optimizer.replay_actors[1]
        assert new != victim and optimizer.replay_actors[0] != victim
        # It started empty: it holds only (some of) the steps sampled during this iteration.
        assert ray.get(new.stats.remote(), timeout=60)["default_policy"]["num_added"] <= result["timesteps_this_iter"]
        assert_counters_agree(trainer, result)
        trained = optimizer.num_steps_trained
        result = trainer.train()
        assert optimizer.num_steps_trained > trained and result["timesteps_this_iter"] > 0
        assert_counters_agree(trainer, result)
    finally:
        trainer.stop()


@pytest.mark.parametrize("make", [impala, apex_ddpg], ids=["IMPALA", "APEX_DDPG"])
def test_ignore_worker_failures_carries_on_with_the_other_worker(ray_session, make):
    trainer = make(ignore_worker_failures=True)
    try:
        result = train_killing(trainer, pid_of(trainer.workers.remote_workers()[0]))
        assert result["num_healthy_workers"] == 1 and result["num_recreated_workers"] == 0
        assert_counters_agree(trainer, result)
        counts = count_batches_per_worker(trainer)
        result = trainer.train()
        assert result["timesteps_this_iter"] > 0 and set(counts) == {2}, counts
        assert_counters_agree(trainer, result)
        # Losing the last worker too is an error, not an endless wait.
        with pytest.raises(WorkerFailureError, match="every remote worker has died"):
            train_killing(trainer, pid_of(trainer.workers.remote_workers()[0]))
    finally:
        trainer.stop()


def assert_names_the_keys(error: BaseException, what: str) -> None:
    message = str(error)
    assert what in message and all(key in message for key in KEYS), message


def test_impala_without_either_key_a_dead_worker_is_a_clear_error(ray_session):
    trainer = impala()
    try:
        with pytest.raises(WorkerFailureError) as info:
            train_killing(trainer, pid_of(trainer.workers.remote_workers()[1]))
        assert_names_the_keys(info.value, "remote worker 2")
    finally:
        trainer.stop()


def test_apex_without_either_key_a_dead_worker_or_replay_shard_is_a_clear_error(ray_session):
    trainer = apex()
    try:
        with pytest.raises(WorkerFailureError) as info:
            train_killing(trainer, pid_of(trainer.workers.remote_workers()[1]))
        assert_names_the_keys(info.value, "remote worker 2")
        # The dead worker's requests were dropped: the optimizer itself still steps, until a shard dies.
        optimizer = trainer.optimizer
        os.kill(pid_of(optimizer.replay_actors[0]), signal.SIGKILL)
        deadline = time.time() + 60
        with pytest.raises(WorkerFailureError) as info:
            while time.time() < deadline:
                optimizer.step()
        assert_names_the_keys(info.value, "replay shard 0")
    finally:
        trainer.stop()
