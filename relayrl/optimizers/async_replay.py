"""AsyncReplayOptimizer (alias ApexOptimizer): Ape-X's distributed prioritized replay.

Horgan et al. 2018, "Distributed Prioritized Experience Replay" (https://arxiv.org/abs/1803.00933), Algorithm 1
and 2. Three kinds of processes share the work:

- actors (remote RolloutWorkers) sample with their own epsilon (``per_worker_exploration``) and, with
  ``worker_side_prioritization``, compute the initial |TD| priority of every transition before sending it
  (the DQN/DDPG postprocessing adds a ``priorities`` column);
- ``num_replay_buffer_shards`` ReplayActors (Ray actors) each hold a prioritized buffer; a worker's batch goes
  straight from the worker to a random shard (the driver only passes the object reference);
- a LearnerThread in the driver process learns on replayed batches and hands back new priorities.

The driver's ``step()`` is bookkeeping only::

    ready samples  -> count them, forward the batch reference to a shard, relaunch the worker's sample();
                      every ``max_weight_sync_delay`` steps of a worker, send it the newest weights
    ready replays  -> into the learner's queue, relaunch the shard's replay()
    learner output -> shard.update_priorities(indexes, |td|)

The target network is updated in the learner thread every ``target_network_update_freq`` trained steps.
The replay options are SyncReplayOptimizer's (``ReplayOptions`` in ``replay_options.py``; here
``train_batch_size`` defaults to 512 and ``sample_batch_size`` to 50); the keywords below are Ape-X's own.

Failures. A remote worker that dies is found when its sample (count) future is awaited: its requests in flight
are dropped and ``WorkerSet.handle_worker_failure`` decides -- with ``recreate_failed_workers`` the replacement gets
the newest weights and its sample requests like the others, with ``ignore_worker_failures`` the others carry on,
without either key (or once no worker is left) it is a WorkerFailureError. A replay shard that dies loses its
contents: with either key it is replaced by a new, empty shard (same constructor arguments), its replay requests
in flight are dropped and the priority updates for batches it had replayed are skipped; the run goes on and
``num_replay_shards_recreated`` in ``stats()`` counts them. Without either key it is a WorkerFailureError naming
the shard. ``num_steps_sampled`` counts only the batches whose count arrived.

Multi-agent (workers that return MultiAgentBatches): each shard keeps a buffer per policy in ``policies_to_train``
(a policy that is not trained stores nothing), a replay request returns one batch per policy whose buffer is
ready, the learner updates each policy on its own batch (and its target network on its own clock) and the new
priorities go back to that policy's buffer. A policy's config overrides of the replay options
(``replay_options.POLICY_OPTIONS``) apply to its buffers, batches and target updates. Workers get every policy's
weights when they start and, afterwards, the trained policies' weights only (the others never change).
``num_agent_steps_sampled`` counts the rows over all policies of the batches that arrived.
"""

from __future__ import annotations

import logging
import queue
import random
import time
from typing import Any

import numpy as np

from relayrl.evaluation.worker_set import WorkerFailureError, WorkerSet, _first_line
from relayrl.optimizers.apex_parts import LearnerThread, ReplayActor
from relayrl.optimizers.policy_optimizer import PolicyOptimizer, agent_steps
from relayrl.optimizers.replay_options import ReplayOptions, build_options, policy_options
from relayrl.optimizers.sequence_replay import sequence_spec
from relayrl.policy.sample_batch import MultiAgentBatch, SampleBatch
from relayrl.utils.timers import TimerStat

__all__ = ["AsyncReplayOptimizer", "ApexOptimizer", "LearnerThread", "ReplayActor"]

logger = logging.getLogger(__name__)


class AsyncReplayOptimizer(PolicyOptimizer):
    """Ape-X's driver: remote workers sample into sharded replay actors, a LearnerThread learns on their replayed
    batches and sends back new priorities (see the module docstring). Needs remote workers (else ValueError).

    Args:
        workers: a WorkerSet, or the local worker (see PolicyOptimizer).
        remote_workers: the remote workers when ``workers`` is a local worker.
        num_replay_buffer_shards: ReplayActors; each holds ``buffer_size / num_replay_buffer_shards`` rows and
            replays once it holds ``learning_starts / num_replay_buffer_shards``.
        max_weight_sync_delay: env steps a worker samples between two sends of the newest weights to it.
        num_sample_requests_in_flight_per_worker: ``sample()`` calls kept in flight on every worker.
        num_replay_requests_in_flight_per_shard: ``replay()`` calls kept in flight on every shard.
        max_sample_train_ratio: None: workers sample freely (Ape-X); a ratio r: a worker's next ``sample()`` is
            only launched while ``num_steps_sampled <= learning_starts + r * num_steps_trained`` (trained rows over
            all policies: with N trained policies, r / N gives each the replay per sampled step that r gives one).
        debug: ``stats()`` adds shard 0's buffer statistics (``replay_shard_0``; one ``ray.get`` per call).
        **options: the replay options, the fields of ``ReplayOptions`` (``relayrl/optimizers/replay_options.py``,
            where each is documented), with Ape-X's defaults ``option_defaults`` (``train_batch_size`` 512,
            ``sample_batch_size`` 50); kept as ``self.options``. An unknown keyword is a TypeError naming it.
    """

    # The replay keyword options: the fields of ReplayOptions, with these defaults of Ape-X's own.
    options_type = ReplayOptions
    option_defaults = {"train_batch_size": 512, "sample_batch_size": 50}

    def __init__(
        self,
        workers: Any,
        remote_workers: list | None = None,
        *,
        num_replay_buffer_shards: int = 1,
        max_weight_sync_delay: int = 400,
        num_sample_requests_in_flight_per_worker: int = 2,
        num_replay_requests_in_flight_per_shard: int = 4,
        max_sample_train_ratio: float | None = None,
        debug: bool = False,
        **options: Any,
    ):
        super().__init__(workers, remote_workers)
        self.options = opts = build_options(options, self.option_defaults, owner=type(self).__name__)
        learning_starts, seed = opts.learning_starts, opts.seed
        if not self.workers.remote_workers():
            raise ValueError("AsyncReplayOptimizer needs remote workers (num_workers >= 1)")
        import ray

        self.max_weight_sync_delay = max_weight_sync_delay
        # Not in Ape-X (its actors never wait): with a ratio r, a worker's next sample() is only launched while
        # num_steps_sampled <= learning_starts + r * num_steps_trained, so on a machine whose cores are shared
        # by actors and learner the learning per sampled step does not depend on the machine's load.
        self.max_sample_train_ratio = max_sample_train_ratio
        self.learning_starts = learning_starts
        self._idle_workers: list = []
        self.debug = debug
        self.beta_schedule = opts.beta_schedule()
        local = self.workers.local_worker()
        options_by_policy = policy_options(opts, local)
        trained = getattr(local, "policies_to_train", None) or list(options_by_policy)
        # Each trained policy's options: these with its config's overrides (replay_options.POLICY_OPTIONS).
        self.policy_options = {pid: o for pid, o in options_by_policy.items() if pid in trained}
        self._beta_schedules = {pid: o.beta_schedule() for pid, o in self.policy_options.items()}
        base = _shard_kwargs(opts)
        overrides = {
            pid: {k: v for k, v in _shard_kwargs(o).items() if v != base[k]} for pid, o in self.policy_options.items()
        }
        # A recurrent policy's shards store sequences (sequence_replay.py; R2D2), a feed-forward one's transitions.
        for pid in overrides:
            spec = sequence_spec(getattr(local, "policy_map", {}).get(pid))
            if spec is not None:
                overrides[pid]["sequences"] = spec
        self._replay_actor_cls = ray.remote(num_cpus=0)(ReplayActor)
        self._shard_args = [
            (
                num_replay_buffer_shards,
                *base.values(),
                None if seed is None else seed + i,
                overrides,
            )
            for i in range(num_replay_buffer_shards)
        ]
        self.replay_actors = [self._replay_actor_cls.remote(*args) for args in self._shard_args]
        self._dead_shards: set = set()  # shards replaced after they died (their priority updates are skipped)
        self.num_replay_shards_recreated = 0
        self.learner = LearnerThread(
            {pid: local.get_policy(pid) for pid in self.policy_options},
            {pid: o.target_network_update_freq for pid, o in self.policy_options.items()},
        )
        self._rng = random.Random(seed)
        self._num_samples_in_flight = num_sample_requests_in_flight_per_worker
        self._num_replays_in_flight = num_replay_requests_in_flight_per_shard
        self._sample_tasks: dict = {}  # count ref -> (worker, batch ref)
        self._replay_tasks: dict = {}  # batch ref -> shard
        self._steps_since_sync: dict = {}
        self._weights_ref = None
        self._weights_version = -1
        self._started = False
        self.num_weight_syncs = 0
        self.num_samples_dropped = 0
        self._t0 = time.time()
        self.timers = {
            k: TimerStat()
            for k in ("put_weights", "sample_processing", "replay_processing", "update_priorities", "wait")
        }

    # --- the loop ------------------------------------------------------------------------------------------
    def _start(self) -> None:
        self._started = True
        self._t0 = time.time()
        self.learner.start()
        for w in self.workers.remote_workers():
            self._start_worker(w)
        for shard in self.replay_actors:
            self._start_shard(shard)

    def _start_worker(self, worker: Any, global_vars: dict | None = None) -> None:
        worker.set_weights.remote(self._current_weights(), global_vars)
        self._steps_since_sync[worker] = 0
        for _ in range(self._num_samples_in_flight):
            self._launch_sample(worker)

    def _start_shard(self, shard: Any) -> None:
        for _ in range(self._num_replays_in_flight):
            self._launch_replay(shard)

    def _launch_sample(self, worker: Any) -> None:
        batch_ref, count_ref = worker.apply.options(num_returns=2).remote(_sample_with_counts)
        self._sample_tasks[count_ref] = (worker, batch_ref)

    def _launch_replay(self, shard: Any) -> None:
        betas = {pid: b.value(self.num_steps_sampled) for pid, b in self._beta_schedules.items()}
        self._replay_tasks[shard.replay.remote(betas)] = shard

    def _sampling_paused(self) -> bool:
        r = self.max_sample_train_ratio
        return r is not None and self.num_steps_sampled > self.learning_starts + r * self.num_steps_trained

    def _current_weights(self):
        import ray

        if self._weights_version != self.learner.weights_version or self._weights_ref is None:
            with self.timers["put_weights"], self.learner.lock:
                self._weights_version = self.learner.weights_version
                # Every policy's weights the first time, the trained policies' afterwards (policies_to_sync).
                self._weights_ref = ray.put(self.learner_weights())
        return self._weights_ref

    def step(self) -> dict:
        import ray

        if not self._started:
            self._start()
        if self.learner.error is not None:
            raise RuntimeError("the Ape-X learner thread failed") from self.learner.error
        with self.timers["wait"]:
            pending = list(self._sample_tasks) + list(self._replay_tasks)
            ready, _ = ray.wait(pending, num_returns=1, timeout=0.2) if pending else ([], [])
            if ready:
                ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
        with self.timers["sample_processing"]:
            failed = []
            for count_ref in [r for r in ready if r in self._sample_tasks]:
                worker, batch_ref = self._sample_tasks.pop(count_ref)
                try:
                    count, rows = ray.get(count_ref)
                except WorkerSet.actor_errors() as e:  # an error in the worker's own code propagates
                    failed.append((worker, e))
                    continue
                self._rng.choice(self.replay_actors).add_batch.remote(batch_ref)
                self.num_steps_sampled += count
                self.num_agent_steps_sampled += rows
                self._steps_since_sync[worker] += count
                if self._steps_since_sync[worker] >= self.max_weight_sync_delay:
                    worker.set_weights.remote(self._current_weights(), {"timestep": self.num_steps_sampled})
                    self._steps_since_sync[worker] = 0
                    self.num_weight_syncs += 1
                self._idle_workers.append(worker)
            for worker, error in failed:  # after the batches that did arrive from it are counted
                self._on_worker_failure(worker, error)
            while self._idle_workers and not self._sampling_paused():
                self._launch_sample(self._idle_workers.pop(0))
        with self.timers["replay_processing"]:
            for ref in [r for r in ready if r in self._replay_tasks]:
                if ref not in self._replay_tasks:
                    continue  # dropped: its shard died
                shard = self._replay_tasks.pop(ref)
                try:
                    batch = ray.get(ref)
                except WorkerSet.actor_errors() as e:
                    self._on_shard_failure(shard, e)
                    continue
                if batch is not None:
                    self.learner.inqueue.put((shard, _writable(batch)))  # blocks while the learner is 16 batches behind
                self._launch_replay(shard)
        with self.timers["update_priorities"]:
            while True:
                try:
                    shard, idx, td, count = self.learner.outqueue.get_nowait()
                except queue.Empty:
                    break
                if td is not None and shard not in self._dead_shards:
                    shard.update_priorities.remote(idx, td)
                self.num_steps_trained += count
        return self.learner.stats

    # --- failures ------------------------------------------------------------------------------------------
    def _on_worker_failure(self, worker: Any, error: BaseException) -> None:
        """Forgets the dead worker's requests in flight, then puts its replacement (if any) to work."""
        for ref in [r for r, (w, _) in self._sample_tasks.items() if w == worker]:
            del self._sample_tasks[ref]
        self._idle_workers = [w for w in self._idle_workers if w != worker]
        self._steps_since_sync.pop(worker, None)
        new = self.workers.handle_worker_failure(worker, error)  # WorkerFailureError without the keys
        if new is not None and new not in self._steps_since_sync:
            self._start_worker(new, {"timestep": self.num_steps_sampled})
        if not self.workers.remote_workers():
            raise WorkerFailureError(
                f"every remote worker has died ({self.workers.num_failed} failed): Ape-X has none left to sample"
                " with. Set 'recreate_failed_workers': True to replace failed workers"
            )

    def _on_shard_failure(self, shard: Any, error: BaseException) -> None:
        """Replaces a dead replay shard by an empty one (its contents are lost) when the config allows."""
        if shard in self._dead_shards:
            return
        index = next(i for i, s in enumerate(self.replay_actors) if s == shard)
        if not self.workers.fault_tolerant:
            raise WorkerFailureError(
                f"replay shard {index} (ReplayActor) died ({_first_line(error)}). Set 'recreate_failed_workers':"
                " True or 'ignore_worker_failures': True to replace it with an empty shard and carry on"
            ) from error
        logger.warning("replay shard %d died (%s); replacing it with an empty one", index, _first_line(error))
        for ref in [r for r, s in self._replay_tasks.items() if s == shard]:
            del self._replay_tasks[ref]
        self._dead_shards.add(shard)
        new = self._replay_actor_cls.remote(*self._shard_args[index])
        self.replay_actors[index] = new
        self.num_replay_shards_recreated += 1
        self._start_shard(new)

    # --- reporting and lifecycle --------------------------------------------------------------------------
    def stats(self) -> dict:
        elapsed = max(1e-9, time.time() - self._t0)
        out = {
            **super().stats(),
            "sample_throughput": round(self.num_steps_sampled / elapsed, 3),
            "train_throughput": round(self.num_steps_trained / elapsed, 3),
            "num_weight_syncs": self.num_weight_syncs,
            "num_replay_shards_recreated": self.num_replay_shards_recreated,
            "num_target_updates": self.learner.num_target_updates,
            "learner_queue_size": self.learner.inqueue.qsize(),
            "learner_grad_time_ms": round(1000 * self.learner.grad_timer.mean, 3),
            "learner_dequeue_time_ms": round(1000 * self.learner.queue_timer.mean, 3),
            "learner_peak_throughput": round(self.learner.grad_timer.mean_throughput, 3),
            **{f"{k}_time_ms": round(1000 * t.mean, 3) for k, t in self.timers.items()},
            "learner": dict(self.learner.stats),
        }
        if self.debug:
            import ray

            out["replay_shard_0"] = ray.get(self.replay_actors[0].stats.remote())
        return out

    def save(self) -> dict:
        return {
            **super().save(),
            "num_target_updates": self.learner.num_target_updates,
            "rows_since_target_update": dict(self.learner.rows_since_target_update),
        }

    def restore(self, data: dict) -> None:
        super().restore(data)
        self.learner.num_steps_trained = self.num_steps_trained
        since = data.get("rows_since_target_update", {})
        for pid in self.learner.rows_since_target_update:
            self.learner.rows_since_target_update[pid] = int(since.get(pid, 0))
        self.learner.num_target_updates = int(data.get("num_target_updates", 0))

    def stop(self) -> None:
        self.learner.stop()
        if self.learner.is_alive():
            self.learner.join(timeout=5)
        import ray

        for shard in self.replay_actors:
            try:
                ray.kill(shard)
            except Exception:  # noqa: BLE001 - the actor may already be gone
                pass


def _shard_kwargs(o: ReplayOptions) -> dict:
    """ReplayActor's arguments after ``num_shards`` (in order, without ``seed``) from replay options."""
    return {
        "learning_starts": o.learning_starts,
        "buffer_size": o.buffer_size,
        "train_batch_size": o.train_batch_size,
        "prioritized_replay": o.prioritized_replay,
        "alpha": o.prioritized_replay_alpha,
        "eps": o.prioritized_replay_eps,
        "compress": o.compress_observations,
    }


def _sample_with_counts(worker: Any) -> tuple[Any, tuple[int, int]]:
    """Runs on a worker: its batch, and (the batch's count, its rows over all policies) as a second return."""
    batch = worker.sample()
    return batch, (batch.count, agent_steps(batch))


def _writable(batch: SampleBatch | MultiAgentBatch) -> SampleBatch | MultiAgentBatch:
    """A replayed batch from Ray's object store (read-only arrays) as writable copies."""
    if isinstance(batch, MultiAgentBatch):
        return MultiAgentBatch({pid: _writable(b) for pid, b in batch.policy_batches.items()}, batch.count)
    return SampleBatch({k: np.array(v) for k, v in batch.items()})


ApexOptimizer = AsyncReplayOptimizer
