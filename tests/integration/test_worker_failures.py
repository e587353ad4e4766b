"""Remote worker failures (issue 10): a worker killed with SIGKILL while train() waits on it.

For each trainer loop (SyncSamples, LocalMultiGPU, SyncReplay, AsyncGradients, ES, ARS):
``recreate_failed_workers`` replaces the worker and carries on, ``ignore_worker_failures`` carries on with one
worker, neither key raises WorkerFailureError naming the worker and both keys. Counters count only the steps
that reached the learner.
"""

import os
import signal
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import ray

from relayrl import register_env
from relayrl.agents.registry import get_trainer_class
from relayrl.evaluation.worker_set import WorkerFailureError
from relayrl.optimizers import multi_gpu, sync_samples

STALL_ENV = "StallingCartPole-failure-tests"
MODEL = {"fcnet_hiddens": [16]}
ROLLOUT = {"num_workers": 2, "model": MODEL, "observation_filter": "MeanStdFilter", "worker_start_timeout_s": 30}
PERTURBATION = {"num_workers": 2, "model": MODEL, "noise_size": 100_000, "eval_prob": 0.0, "seed": 0}
CONFIGS = {
    "PG": {**ROLLOUT, "sample_batch_size": 50, "train_batch_size": 200},
    "PPO": {**ROLLOUT, "sample_batch_size": 50, "train_batch_size": 200, "sgd_minibatch_size": 50, "num_sgd_iter": 1},
    "PPO-simple": {
        **ROLLOUT,
        "sample_batch_size": 50,
        "train_batch_size": 200,
        "sgd_minibatch_size": 200,
        "num_sgd_iter": 1,
        "simple_optimizer": True,
    },
    "DQN": {
        **ROLLOUT,
        "hiddens": [16],
        "sample_batch_size": 25,
        "learning_starts": 50,
        "buffer_size": 1000,
        "timesteps_per_iteration": 100,
        "min_iter_time_s": 0,
    },
    "A3C": {**ROLLOUT, "sample_batch_size": 20, "optimizer": {"grads_per_step": 4}, "min_iter_time_s": 0},
    "ES": {**PERTURBATION, "episodes_per_batch": 8, "train_batch_size": 100},
    "ARS": {**PERTURBATION, "num_rollouts": 4, "rollouts_used": 4},
}


class StallingCartPole(gym.Wrapper):
    """CartPole that stalls inside ``step()`` on the remote worker the test arms (file ``armed-<worker index>``)
    until it is killed: the first sub-env to rename that file writes its pid and sleeps. The kill therefore lands
    while that worker is in the middle of a sample (or rollout) and train() waits on it."""

    def __init__(self, ctx):
        super().__init__(gym.make("CartPole-v1"))
        self.stall_dir = ctx.get("stall_dir")
        self.index = ctx.worker_index

    def step(self, action):
        if self.stall_dir and os.path.exists(os.path.join(self.stall_dir, f"armed-{self.index}")):
            try:
                os.rename(os.path.join(self.stall_dir, f"armed-{self.index}"), os.path.join(self.stall_dir, "claimed"))
            except OSError:
                pass  # another sub-env of this worker claimed it
            else:
                with open(os.path.join(self.stall_dir, "pid.tmp"), "w") as f:
                    f.write(str(os.getpid()))
                os.rename(os.path.join(self.stall_dir, "pid.tmp"), os.path.join(self.stall_dir, "pid"))
                time.sleep(60)  # bounded: the test fails rather than hangs if the kill never comes
        return self.env.step(action)


def make_stalling_cartpole(ctx):
    return StallingCartPole(ctx)


register_env(STALL_ENV, make_stalling_cartpole)


class Killer:
    """Arms the stall of one remote worker, then SIGKILLs the process that stalled from a thread."""

    def __init__(self, stall_dir, worker_index):
        self.dir, self.worker_index = str(stall_dir), worker_index
        self.pid = self.killed_at = None
        self._thread = threading.Thread(target=self._kill_when_stalled, daemon=True)

    def arm(self):
        if os.path.exists(os.path.join(self.dir, "pid")):
            os.remove(os.path.join(self.dir, "pid"))
        open(os.path.join(self.dir, f"armed-{self.worker_index}"), "w").close()
        self._thread.start()

    def _kill_when_stalled(self, timeout_s=60.0):
        deadline = time.time() + timeout_s
        path = os.path.join(self.dir, "pid")
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)
        if os.path.exists(path):
            self.pid = int(open(path).read())
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at = time.time()

    def join(self):
        self._thread.join(timeout=70)


def make_trainer(algo, tmp_path, **keys):
    name = algo.split("-")[0]
    config = {**CONFIGS[algo], **keys, "env_config": {"stall_dir": str(tmp_path)}}
    return get_trainer_class(name)(env=STALL_ENV, config=config)


def record_learned_steps(algo, trainer, monkeypatch):
    """Counts the env steps that reach the learner (wrapping the point where each loop receives them)."""
    learned = [0]

    def count(n):
        learned[0] += int(n)

    if algo in ("PG", "PPO-simple", "PPO"):
        module = multi_gpu if algo == "PPO" else sync_samples
        collect = module.collect_samples

        def recorded_collect(workers, min_steps):
            batch = collect(workers, min_steps)
            count(batch.count)
            return batch

        monkeypatch.setattr(module, "collect_samples", recorded_collect)
    elif algo == "DQN":
        sample = trainer.optimizer._sample

        def recorded_sample():
            batch = sample()
            count(batch.count)
            return batch

        trainer.optimizer._sample = recorded_sample
    elif algo == "A3C":
        optimizer = trainer.optimizer
        apply = optimizer._apply  # where each gradient that arrived is applied and its steps counted

        def recorded_apply(*args):
            before = optimizer.num_steps_trained
            apply(*args)
            count(optimizer.num_steps_trained - before)

        optimizer._apply = recorded_apply
    else:  # ES, ARS: the steps of the rollouts that came back
        call = trainer.workers.call

        def recorded_call(method, args):
            results = call(method, args)
            if method == "do_rollouts":
                count(sum(int(r["noisy_lengths"].sum() + r["eval_lengths"].sum()) for r in results))
            return results

        trainer.workers.call = recorded_call
    return learned


def train_through_a_kill(trainer, stall_dir, worker_index):
    """Runs train() while remote worker ``worker_index`` is killed in the middle of its sample; checks that the
    process killed was that worker's and that the kill landed while train() ran."""
    workers = trainer.workers
    victim = next(w for w in workers.remote_workers() if workers.worker_index(w) == worker_index)
    victim_pid = ray.get(victim.apply.remote(lambda w: os.getpid()))
    killer = Killer(stall_dir, worker_index)
    start = time.time()
    killer.arm()
    try:
        return trainer.train()
    finally:
        end = time.time()
        killer.join()
        assert killer.pid == victim_pid, f"the stalled process was not remote worker {worker_index}"
        assert killer.killed_at is not None and start < killer.killed_at < end, "the kill did not land in train()"


def filter_counts(trainer, algo):
    """(local filter count, [each remote worker's filter count])."""
    if algo in ("ES", "ARS"):
        local = trainer.workers.local_worker().filter.rs.n
        return local, trainer.workers.foreach_worker(lambda w: w.filter.rs.n)[1:]
    local = trainer.workers.local_worker().filters["default_policy"].rs.n
    return local, trainer.workers.foreach_worker(lambda w: w.filters["default_policy"].rs.n)[1:]


def remote_weights(trainer):
    return trainer.workers.foreach_worker(lambda w: w.get_policy().get_weights())[1:]


def same_weights(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("algo", list(CONFIGS))
def test_a_worker_killed_during_train(algo, ray_session, tmp_path, monkeypatch):
    """One trainer per loop goes through the three behaviours in turn (building a trainer with two workers
    dominates the cost); the keys are read when a failure is handled, so the test flips them between kills."""
    trainer = make_trainer(algo, tmp_path, recreate_failed_workers=True)
    workers = trainer.workers
    try:
        learned = record_learned_steps(algo, trainer, monkeypatch)

        # recreate_failed_workers: worker 1 is replaced, the iteration and the next ones complete.
        victim = workers.remote_workers()[0]
        result = train_through_a_kill(trainer, tmp_path, 1)
        assert result["num_recreated_workers"] == 1 and result["num_healthy_workers"] == 2
        replacement = workers.remote_workers()[0]
        assert replacement is not victim and workers.worker_index(replacement) == 1
        if algo not in ("ES", "ARS", "A3C"):
            # The replacement sampled with the weights broadcast for that step, like the other worker (a fresh
            # policy's random weights would differ).
            first, second = remote_weights(trainer)
            assert same_weights(first, second)
        result = trainer.train()
        assert result["training_iteration"] == 2 and result["num_healthy_workers"] == 2
        # Every worker, the replacement included, holds the local filter after the end-of-iteration sync.
        local, remote = filter_counts(trainer, algo)
        if algo == "A3C":  # sample_async: the sampler thread has stepped on since the sync
            assert local > 0 and min(remote) >= local
        else:
            assert local > 0 and remote == [local, local]
        if algo not in ("ES", "ARS"):
            workers.sync_weights()
            learner = workers.local_worker().get_policy().get_weights()
            assert all(same_weights(learner, w) for w in remote_weights(trainer))
        # Only the steps that reached the learner are counted.
        assert result["timesteps_total"] == learned[0] > 0
        if algo in ("PG", "PPO", "PPO-simple", "A3C"):
            assert result["info"]["num_steps_trained"] == learned[0]

        # ignore_worker_failures: the replacement is killed in turn and dropped; the run goes on with worker 2.
        trainer.config.update(recreate_failed_workers=False, ignore_worker_failures=True)
        result = train_through_a_kill(trainer, tmp_path, 1)
        assert result["num_healthy_workers"] == 1 and result["num_recreated_workers"] == 1
        result = trainer.train()
        assert result["training_iteration"] == 4 and result["num_healthy_workers"] == 1
        assert [workers.worker_index(w) for w in workers.remote_workers()] == [2]
        assert result["timesteps_total"] == learned[0]
        if algo == "A3C":  # the other worker made up for the dropped gradient: grads_per_step every step
            assert trainer.optimizer.num_gradients_applied == 4 * result["training_iteration"]

        # Neither key: a clear error naming the worker and both keys.
        trainer.config.update(ignore_worker_failures=False)
        with pytest.raises(WorkerFailureError) as info:
            train_through_a_kill(trainer, tmp_path, 2)
        message = str(info.value)
        assert "remote worker 2 " in message
        assert "'recreate_failed_workers': True" in message and "'ignore_worker_failures': True" in message

        # ignore_worker_failures: foreach_worker leaves the dead worker out (and drops it); with no worker left,
        # an iteration is an error, not a hang nor a silent switch to the local worker.
        trainer.config.update(ignore_worker_failures=True)
        assert workers.foreach_worker(lambda w: "answered") == ["answered"] and workers.num_healthy_workers == 0
        with pytest.raises(WorkerFailureError, match="no healthy remote worker is left"):
            trainer.train()
    finally:
        trainer.stop()


def test_es_workers_and_their_replacements_ask_for_the_custom_resources(monkeypatch):
    """ES/ARS actors are built (and rebuilt after a failure) from ``_remote_class``: it keeps
    ``custom_resources_per_worker`` and ``num_cpus_per_worker``, as WorkerSet does for RolloutWorkers."""
    from relayrl.agents.es.es import DEFAULT_CONFIG
    from relayrl.agents.es.es_worker import PerturbationWorkerSet
    from relayrl.utils.es_utils import create_noise

    config = {
        **DEFAULT_CONFIG,
        "model": MODEL,
        "noise_size": 1000,
        "num_cpus_per_worker": 0.5,
        "custom_resources_per_worker": {"accelerator_box": 1},
    }
    workers = PerturbationWorkerSet(make_stalling_cartpole, config, None, create_noise(1000, 0), num_workers=0)
    asked = []
    monkeypatch.setattr(ray, "remote", lambda **kwargs: asked.append(kwargs) or (lambda cls: cls))
    workers._remote_class()
    assert asked == [{"num_cpus": 0.5, "resources": {"accelerator_box": 1}}]
    workers.stop()


class BrokenWorker:
    def __init__(self):
        raise ValueError("broken env in the worker's constructor")

    def sample(self):
        return None


def test_a_worker_whose_constructor_raised_is_not_a_worker_failure(ray_session):
    """An error in the worker's own code propagates as itself, whatever the keys say (here: none)."""
    from relayrl.evaluation.worker_set import WorkerSet
    from relayrl.optimizers.rollout import collect_samples

    workers = WorkerSet.from_workers(None, [ray.remote(num_cpus=0)(BrokenWorker).remote()])
    with pytest.raises(ray.exceptions.ActorDiedError, match="broken env in the worker's constructor"):
        collect_samples(workers, 10)
