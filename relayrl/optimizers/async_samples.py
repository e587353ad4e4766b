"""AsyncSamplesOptimizer: IMPALA's actor-learner split (Espeholt et al. 2018, https://arxiv.org/abs/1802.01561,
section 3) on one machine: remote workers sample without pause while a learner thread learns on their batches.

    optimizer = AsyncSamplesOptimizer(workers, train_batch_size=500, sample_batch_size=50)
    while True:
        optimizer.step()      # takes every finished sample, feeds the learner, re-dispatches, broadcasts weights

The driver thread keeps ``max_sample_requests_in_flight_per_worker`` ``sample()`` calls queued on every remote
worker. Each finished batch (plus, with ``replay_proportion``, replayed old ones) goes into a buffer; every
``train_batch_size`` steps the buffer becomes one train batch on the learner's input queue. Data-loader threads
(``num_parallel_data_loaders``) turn train batches into tensors on the learner's device, and the learner thread
takes one optimizer step per batch. A worker whose batch arrived gets the newest weights before its next request;
one ``ray.put`` of the weights is shared by up to ``broadcast_interval`` workers. The samples are therefore
off-policy by a few learner steps: the "weight lag" reported in ``stats()``, which V-trace corrects for.

Multi-agent: a train batch is a MultiAgentBatch of ``train_batch_size`` steps (env steps, or agent steps with
``count_steps_by: "agent_steps"``); the data loaders load each trained policy's part onto its device and the
learner takes one optimizer step per trained policy present in it. After the first broadcast, only the trained
policies' weights travel (a policy that is not trained never changes).

With no remote workers the local worker samples in the driver thread and the learner thread learns in the
background: the same pipeline in one process.

A remote worker that dies (its process or node is gone) is found where its sample futures are awaited: all of its
requests in flight are dropped and ``WorkerSet.handle_worker_failure`` decides. With ``recreate_failed_workers``
the replacement gets the newest weights and ``max_sample_requests_in_flight_per_worker`` requests like the others;
with ``ignore_worker_failures`` the others carry on; without either key, and once no remote worker is left, it is
a WorkerFailureError. ``num_steps_sampled`` counts only the batches that arrived.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from typing import Any

import numpy as np

from relayrl.evaluation.worker_set import WorkerFailureError, WorkerSet
from relayrl.optimizers.policy_optimizer import PolicyOptimizer, agent_steps
from relayrl.optimizers.sync_samples import get_learner_stats
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch
from relayrl.utils.timers import TimerStat

logger = logging.getLogger(__name__)

_STOP = object()


def _load(policy: Any, batch: Any) -> Any:
    """A torch policy's batch as tensors on its device; a framework-free Policy (seed 001's ``CustomPolicy``, no
    ``load_batch``) gets the batch itself."""
    return policy.load_batch(batch) if hasattr(policy, "load_batch") else batch


def _learn(policy: Any, data: Any) -> dict:
    """``learn_on_tensors`` on what ``_load`` made; ``learn_on_batch`` for a policy without ``load_batch``."""
    return policy.learn_on_tensors(data) if hasattr(policy, "load_batch") else policy.learn_on_batch(data)


class LearnerThread(threading.Thread):
    """Learns on every train batch of ``inqueue`` (``(batch, weight_versions)`` items), one optimizer step per
    trained policy each (a single-agent batch: the default policy's).

    ``num_data_loaders`` threads move batches to the policy's device (``policy.load_batch``) ahead of the
    learner, so that host-to-device copies overlap with learning. ``lock`` is held during each optimizer step;
    the driver holds it to read consistent weights. ``weights_version`` counts the optimizer steps taken.
    """

    def __init__(self, local_worker: Any, lock: threading.RLock, num_data_loaders: int = 1, queue_size: int = 16):
        super().__init__(name="relayrl-learner", daemon=True)
        self.local_worker = local_worker
        self.lock = lock
        self.inqueue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.loaded: queue.Queue = queue.Queue(maxsize=max(1, num_data_loaders))
        self.outqueue: queue.Queue = queue.Queue()
        self.weights_version = 0
        self.weights_updated = False
        self.stopped = False
        self.error: BaseException | None = None
        self.learner_stats: dict = {}
        self.grad_timer = TimerStat()
        self.load_timer = TimerStat()
        self.wait_timer = TimerStat()
        self.weight_lags: collections.deque = collections.deque(maxlen=100)
        self.num_steps_trained = 0
        self._loaders = [
            threading.Thread(target=self._load_loop, name=f"relayrl-loader-{i}", daemon=True)
            for i in range(max(1, num_data_loaders))
        ]

    def start(self) -> None:
        for t in self._loaders:
            t.start()
        super().start()

    def _load_loop(self) -> None:
        try:
            while not self.stopped:
                item = self.inqueue.get()
                if item is _STOP:
                    return
                batch, versions = item
                with self.load_timer:
                    data = {pid: _load(self.local_worker.policy_map[pid], b) for pid, b in _trained(self, batch)}
                self.loaded.put((data, batch.count, versions))
        except BaseException as e:  # noqa: BLE001 - reported to the driver by step()
            self.error = e
            self.loaded.put(_STOP)

    def run(self) -> None:
        try:
            while not self.stopped:
                with self.wait_timer:
                    item = self.loaded.get()
                if item is _STOP:
                    return
                data, count, versions = item
                with self.grad_timer:
                    with self.lock:
                        policies = self.local_worker.policy_map
                        fetch = {pid: get_learner_stats(_learn(policies[pid], t)) for pid, t in data.items()}
                        lag = self.weights_version - float(np.mean(versions))
                        self.weights_version += 1
                self.grad_timer.push_units_processed(count)
                self.weight_lags.append(lag)
                # Per policy, the latest stats: a multi-agent train batch may lack some policy's agents.
                self.learner_stats = {**self.learner_stats, **fetch}
                self.weights_updated = True
                self.num_steps_trained += count
                self.outqueue.put(count)
        except BaseException as e:  # noqa: BLE001 - reported to the driver by step()
            self.error = e

    def stop(self) -> None:
        self.stopped = True
        for _ in self._loaders:
            try:
                self.inqueue.put_nowait(_STOP)
            except queue.Full:
                pass
        try:
            self.loaded.put_nowait(_STOP)
        except queue.Full:
            pass


def _trained(learner: LearnerThread, batch: SampleBatch | MultiAgentBatch) -> list[tuple[str, SampleBatch]]:
    """The (policy id, rows) pairs of a train batch that the learner trains on."""
    if isinstance(batch, SampleBatch):
        return [(DEFAULT_POLICY_ID, batch)]
    trained = learner.local_worker.policies_to_train
    return [(pid, b) for pid, b in batch.policy_batches.items() if pid in trained and b.count > 0]


class AsyncSamplesOptimizer(PolicyOptimizer):
    """IMPALA's driver: keeps the remote workers sampling, batches their samples for a LearnerThread that learns in
    the background, and sends each worker the newest weights before its next request (see the module docstring).

    Args:
        workers: a WorkerSet, or the local worker (see PolicyOptimizer).
        remote_workers: the remote workers when ``workers`` is a local worker.
        train_batch_size: env steps of one train batch, one learner step each (at least 1, else ValueError).
        sample_batch_size: steps per sub-env of a worker's sample batch; times ``num_envs_per_worker``, the size of
            one worker batch, which only decides when replay starts (see ``replay_proportion``).
        num_envs_per_worker: sub-envs per worker (see ``sample_batch_size``).
        num_gpus: kept as ``self.num_gpus`` only: the learner's device follows the policy config's ``num_gpus``.
        num_parallel_data_loaders: threads that load train batches onto the learner's device ahead of it (at
            least 1).
        max_sample_requests_in_flight_per_worker: ``sample()`` calls kept queued on every remote worker (at
            least 1).
        broadcast_interval: workers that share one ``ray.put`` of the weights before a new one is made (at least
            1).
        replay_proportion: old batches replayed per new one, on average, into the train batches (0: no replay;
            replay starts once the slots hold more than a train batch's worth of worker batches).
        replay_buffer_num_slots: worker batches kept for replay, the oldest evicted first.
        learner_queue_size: train batches that may wait for the learner; when it is full, the driver blocks
            (back-pressure on sampling).
        seed: seed of the replay choices (None: not seeded).
    """

    def __init__(
        self,
        workers: Any,
        remote_workers: list | None = None,
        *,
        train_batch_size: int = 500,
        sample_batch_size: int = 50,
        num_envs_per_worker: int = 1,
        num_gpus: float = 0,
        num_parallel_data_loaders: int = 1,
        max_sample_requests_in_flight_per_worker: int = 2,
        broadcast_interval: int = 1,
        replay_proportion: float = 0.0,
        replay_buffer_num_slots: int = 100,
        learner_queue_size: int = 16,
        seed: int | None = None,
    ):
        super().__init__(workers, remote_workers)
        for name, value in (
            ("train_batch_size", train_batch_size),
            ("max_sample_requests_in_flight_per_worker", max_sample_requests_in_flight_per_worker),
            ("broadcast_interval", broadcast_interval),
            ("num_parallel_data_loaders", num_parallel_data_loaders),
        ):
            if value < 1:
                raise ValueError(f"AsyncSamplesOptimizer: {name} must be >= 1, got {value}")
        if replay_proportion < 0:
            raise ValueError(f"AsyncSamplesOptimizer: replay_proportion must be >= 0, got {replay_proportion}")
        self.train_batch_size = train_batch_size
        self.sample_batch_size = sample_batch_size * num_envs_per_worker  # steps in one worker batch
        self.num_gpus = num_gpus  # the learner policy's device follows the policy config's num_gpus
        self.max_in_flight = max_sample_requests_in_flight_per_worker
        self.broadcast_interval = broadcast_interval
        self.replay_proportion = replay_proportion
        self.replay_batches: collections.deque = collections.deque(maxlen=max(1, replay_buffer_num_slots))
        self._rng = np.random.default_rng(seed)
        self.lock = threading.RLock()
        if not self.workers.remote_workers():
            # The driver samples with the model the learner thread trains: they take turns (each policy call of
            # the sampler, each optimizer step), or a model that caches its forward's features would be corrupted.
            self.workers.local_worker().set_model_lock(self.lock)
        self.learner = LearnerThread(
            self.workers.local_worker(), self.lock, num_parallel_data_loaders, learner_queue_size
        )
        self.learner.start()
        self.sample_timer = TimerStat()
        self.wait_timer = TimerStat()
        self.put_timer = TimerStat()
        self.broadcast_timer = TimerStat()
        self.batch_buffer: list[SampleBatch] = []
        self.buffer_versions: list[int] = []
        self.num_weight_syncs = 0
        self.num_replayed = 0
        self._weights_ref: Any = None
        self._weights_version = -1
        self._num_sent = 0
        self._pending: dict = {}  # sample future -> (worker, weights version it samples with)
        self._worker_versions: dict = {}  # worker -> weights version last sent to it
        # With remote workers, losing every one of them is an error, not a silent switch to sampling in the driver.
        self._remote_mode = bool(self.workers.remote_workers())
        if self._remote_mode:
            self._broadcast_weights()  # the first one carries every policy (see PolicyOptimizer.policies_to_sync)
            for w in self.workers.remote_workers():
                self._start_worker(w)

    def _start_worker(self, worker: Any) -> None:
        """Newest weights, then ``max_sample_requests_in_flight_per_worker`` sample requests."""
        worker.set_weights.remote(self._weights_ref)
        self._worker_versions[worker] = self._weights_version
        for _ in range(self.max_in_flight):
            self._pending[worker.sample.remote()] = (worker, self._weights_version)

    # --- the driver loop ------------------------------------------------------------------------------------
    def step(self) -> dict:
        self._check_learner()
        sampled = 0
        for worker, batch, version in self._collect():
            batch.decompress_if_needed()
            sampled += batch.count
            self.num_agent_steps_sampled += agent_steps(batch)
            for b, v in self._augment_with_replay(batch, version):
                self._add_to_train_buffer(b, v)
            if worker is not None and worker in self._worker_versions:  # not if it died since
                with self.broadcast_timer:
                    self._send_weights(worker)
                self._pending[worker.sample.remote()] = (worker, self._worker_versions[worker])
        self.num_steps_sampled += sampled
        while not self.learner.outqueue.empty():
            self.num_steps_trained += self.learner.outqueue.get()
        self._check_learner()
        return self.learner.learner_stats

    def _collect(self) -> list[tuple[Any, SampleBatch, int]]:
        """The finished sample batches (blocks until one is ready), with their workers and weight versions. The
        list is empty when the only ready ones came from a worker that died."""
        if self._remote_mode and not self._pending:
            raise WorkerFailureError(
                f"every remote worker has died ({self.workers.num_failed} failed): IMPALA has none left to sample"
                " with. Set 'recreate_failed_workers': True to replace failed workers"
            )
        if not self._pending:
            with self.sample_timer:
                version = self.learner.weights_version
                batch = self.workers.local_worker().sample()
            self.sample_timer.push_units_processed(batch.count)
            return [(None, batch, version)]
        import ray

        with self.wait_timer:
            ready, _ = ray.wait(list(self._pending), num_returns=1)
            rest = [f for f in self._pending if f not in ready]
            if rest:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready = ready + more
        out, failed = [], []
        with self.sample_timer:
            for future in ready:
                worker, version = self._pending.pop(future)
                try:
                    out.append((worker, ray.get(future), version))
                except WorkerSet.actor_errors() as e:  # an error in the worker's own code propagates
                    failed.append((worker, e))
        self.sample_timer.push_units_processed(sum(b.count for _, b, _ in out))
        for worker, error in failed:
            self._on_worker_failure(worker, error)
        return out

    def _on_worker_failure(self, worker: Any, error: BaseException) -> None:
        """Forgets everything in flight on a dead worker, then puts its replacement (if any) to work."""
        for future in [f for f, (w, _) in self._pending.items() if w == worker]:
            del self._pending[future]
        self._worker_versions.pop(worker, None)
        new = self.workers.handle_worker_failure(worker, error)  # WorkerFailureError without the keys
        if new is not None and new not in self._worker_versions:
            with self.broadcast_timer:
                if self._weights_ref is None or self.learner.weights_updated:
                    self._broadcast_weights()
            self._start_worker(new)

    def _augment_with_replay(self, batch: SampleBatch, version: int):
        """The new batch, then each replayed batch: on average ``replay_proportion`` old batches per new one."""
        yield batch, version
        if self.replay_proportion <= 0:
            return
        self.replay_batches.append((batch, version))
        needed = math.ceil(self.train_batch_size / max(1, self.sample_batch_size))
        if len(self.replay_batches) <= needed:
            return
        f = self.replay_proportion
        while self._rng.random() < f:
            f -= 1
            old, old_version = self.replay_batches[int(self._rng.integers(len(self.replay_batches)))]
            self.num_replayed += old.count
            yield old, old_version

    def _add_to_train_buffer(self, batch: SampleBatch, version: int) -> None:
        self.batch_buffer.append(batch)
        self.buffer_versions.append(version)
        if sum(b.count for b in self.batch_buffer) >= self.train_batch_size:
            train_batch = SampleBatch.concat_samples(self.batch_buffer)
            with self.put_timer:
                # Blocks while the learner's queue is full: back-pressure on sampling, no unbounded memory
                # (checking now and then that the learner is still alive to drain it).
                item = (train_batch, list(self.buffer_versions))
                while True:
                    try:
                        self.learner.inqueue.put(item, timeout=1.0)
                        break
                    except queue.Full:
                        self._check_learner()
            self.batch_buffer, self.buffer_versions = [], []

    def _send_weights(self, worker: Any) -> None:
        """Brings ``worker`` to the newest weights before its next request. One ``ray.put`` serves up to
        ``broadcast_interval`` workers; a worker that already holds the newest weights is sent nothing (the
        learner steps once per train batch, i.e. once per several sample batches)."""
        held = self._worker_versions.get(worker)
        if held == self.learner.weights_version:
            return
        ref_used_up = self._num_sent >= self.broadcast_interval or held == self._weights_version
        if self._weights_ref is None or (self.learner.weights_updated and ref_used_up):
            self._broadcast_weights()
        if held != self._weights_version:
            worker.set_weights.remote(self._weights_ref)
            self._worker_versions[worker] = self._weights_version
            self.num_weight_syncs += 1
            self._num_sent += 1

    def _broadcast_weights(self) -> None:
        import ray

        with self.lock:
            weights = self.learner_weights()
            self._weights_version = self.learner.weights_version
        self.learner.weights_updated = False
        self._weights_ref = ray.put(weights)
        self._num_sent = 0

    def _check_learner(self) -> None:
        if self.learner.error is not None:
            raise RuntimeError("the IMPALA learner thread failed") from self.learner.error
        if not self.learner.is_alive() and not self.learner.stopped:
            raise RuntimeError("the IMPALA learner thread died")

    # --- reporting ----------------------------------------------------------------------------------------
    def stats(self) -> dict:
        learner = self.learner
        lags = list(learner.weight_lags)
        return {
            **super().stats(),
            "sample_time_ms": round(1000 * self.sample_timer.mean, 3),
            "sample_wait_time_ms": round(1000 * self.wait_timer.mean, 3),
            "enqueue_time_ms": round(1000 * self.put_timer.mean, 3),
            "broadcast_time_ms": round(1000 * self.broadcast_timer.mean, 3),
            "learner_grad_time_ms": round(1000 * learner.grad_timer.mean, 3),
            "learner_load_time_ms": round(1000 * learner.load_timer.mean, 3),
            "learner_dequeue_time_ms": round(1000 * learner.wait_timer.mean, 3),
            "learner_throughput": round(learner.grad_timer.mean_throughput, 1),
            "learner_queue_size": learner.inqueue.qsize(),
            "learner_loaded_queue_size": learner.loaded.qsize(),
            "train_buffer_steps": sum(b.count for b in self.batch_buffer),
            "weight_lag_mean": round(float(np.mean(lags)), 3) if lags else 0.0,
            "weight_lag_max": float(np.max(lags)) if lags else 0.0,
            "num_weight_syncs": self.num_weight_syncs,
            "num_steps_replayed": self.num_replayed,
            "num_learner_steps": learner.weights_version,
            "learner": learner.learner_stats,
        }

    def stop(self) -> None:
        """Stops the learner and its data loaders and waits for them (briefly): a thread still inside torch when
        the interpreter exits aborts it ("terminate called without an active exception")."""
        learner = self.learner
        learner.stop()
        if learner.is_alive() and learner is not threading.current_thread():
            learner.join(timeout=5)
        deadline = time.monotonic() + 5
        for loader in learner._loaders:
            while loader.is_alive() and time.monotonic() < deadline:
                try:  # a loader blocked on the full loaded queue gets its put through, then sees ``stopped``
                    learner.loaded.get_nowait()
                except queue.Empty:
                    pass
                loader.join(timeout=0.1)
