"""SyncSamplesOptimizer (seed alias LocalSyncOptimizer): sample on all workers, learn on the local policy,
broadcast the new weights. The loop behind PG and A2C.

Worker failures (``collect_samples``): a remote worker that dies while a step waits on its batch goes to
``WorkerSet.handle_worker_failure``. With ``recreate_failed_workers: True`` its replacement (current weights and
filters) samples in its place; with ``ignore_worker_failures: True`` the others sample the missing steps (an
error once none is left); with neither, WorkerFailureError names the worker and both keys. The dead worker's
batch is lost: only what arrived is learned on and counted in ``num_steps_sampled`` / ``num_steps_trained``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relayrl.optimizers.policy_optimizer import PolicyOptimizer
from relayrl.optimizers.rollout import collect_samples
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch
from relayrl.policy.torch_policy import LEARNER_STATS_KEY
from relayrl.utils.timers import TimerStat


class SyncSamplesOptimizer(PolicyOptimizer):
    def __init__(
        self,
        workers: Any,
        remote_workers: list | None = None,
        *,
        num_sgd_iter: int = 1,
        train_batch_size: int = 1,
        sgd_minibatch_size: int = 0,
        standardize_fields: tuple[str, ...] = (),
    ):
        super().__init__(workers, remote_workers)
        self.num_sgd_iter = num_sgd_iter
        self.train_batch_size = train_batch_size
        self.sgd_minibatch_size = sgd_minibatch_size
        self.standardize_fields = tuple(standardize_fields)
        self.update_weights_timer = TimerStat()
        self.sample_timer = TimerStat()
        self.grad_timer = TimerStat()
        self.learner_stats: dict = {}
        self._rng = np.random.default_rng(0)

    def step(self) -> dict:
        with self.update_weights_timer:
            self.workers.sync_weights()
        with self.sample_timer:
            samples = collect_samples(self.workers, self.train_batch_size)
        self.sample_timer.push_units_processed(samples.count)
        with self.grad_timer:
            self.learner_stats = learn_in_minibatches(
                self.workers.local_worker(), samples, self.num_sgd_iter, self.sgd_minibatch_size,
                self.standardize_fields, self._rng,
            )
        self.grad_timer.push_units_processed(samples.count)
        self.num_steps_sampled += samples.count
        self.num_steps_trained += samples.count
        return self.learner_stats

    def stats(self) -> dict:
        return {
            **super().stats(),
            "sample_time_ms": round(1000 * self.sample_timer.mean, 3),
            "grad_time_ms": round(1000 * self.grad_timer.mean, 3),
            "update_time_ms": round(1000 * self.update_weights_timer.mean, 3),
            "opt_peak_throughput": round(self.grad_timer.mean_throughput, 3),
            "sample_peak_throughput": round(self.sample_timer.mean_throughput, 3),
            "opt_samples": round(self.grad_timer.mean_units_processed, 3),
            "learner": self.learner_stats,
        }


def learn_in_minibatches(
    worker: Any, samples: SampleBatch | MultiAgentBatch, num_sgd_iter: int, minibatch_size: int,
    standardize_fields: tuple[str, ...], rng: np.random.Generator,
) -> dict:
    """``num_sgd_iter`` passes of minibatch learning on the worker's policies; returns stats per policy id."""
    if isinstance(samples, SampleBatch):
        standardize(samples, standardize_fields)
        fetch: dict = {}
        for _ in range(num_sgd_iter):
            for mb in minibatches(samples, minibatch_size, rng):
                fetch = worker.learn_on_batch(mb)
        return {DEFAULT_POLICY_ID: get_learner_stats(fetch or {})}
    stats = {}
    for pid, batch in samples.policy_batches.items():
        if pid not in worker.policies_to_train:
            continue
        standardize(batch, standardize_fields)
        for _ in range(num_sgd_iter):
            for mb in minibatches(batch, minibatch_size, rng):
                fetch = worker.policy_map[pid].learn_on_batch(mb)
        stats[pid] = get_learner_stats(fetch)
    return stats


def standardize(batch: SampleBatch, fields: tuple[str, ...]) -> None:
    """Zero-mean, unit-variance columns in place (e.g. advantages for PPO)."""
    for field in fields:
        value = batch[field].astype(np.float64)
        batch[field] = ((value - value.mean()) / max(1e-4, value.std())).astype(np.float32)


def minibatches(batch: SampleBatch, size: int, rng: np.random.Generator):
    """The whole batch if ``size`` is 0 or covers it, else shuffled slices of ``size`` rows."""
    if not size or size >= batch.count:
        yield batch
        return
    batch = batch.copy().shuffle(rng)
    for start in range(0, batch.count - size + 1, size):
        yield batch.slice(start, start + size)


def get_learner_stats(fetches: dict) -> dict:
    return fetches.get(LEARNER_STATS_KEY, fetches)


LocalSyncOptimizer = SyncSamplesOptimizer
