"""SyncSamplesOptimizer (alias LocalSyncOptimizer, its RLlib name until ray-project/ray#2303, 2018): sample on
all workers, learn on the local policy, broadcast the new weights. The loop behind PG and A2C.

With ``sgd_minibatch_size`` the learning is ``num_sgd_iter`` epochs of shuffled minibatches, the routine that
LocalMultiGPUOptimizer also runs (``minibatch_sgd.py``: seeded from ``seed``, a last partial minibatch dropped).

Worker failures (``collect_samples``): a remote worker that dies while a step waits on its batch goes to
``WorkerSet.handle_worker_failure``. With ``recreate_failed_workers: True`` its replacement (current weights and
filters) samples in its place; with ``ignore_worker_failures: True`` the others sample the missing steps (an
error once none is left); with neither, WorkerFailureError names the worker and both keys. The dead worker's
batch is lost: only what arrived is learned on and counted in ``num_steps_sampled`` / ``num_steps_trained``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relayrl.optimizers.minibatch_sgd import MinibatchSGD, get_learner_stats
from relayrl.optimizers.policy_optimizer import PolicyOptimizer, agent_steps
from relayrl.optimizers.rollout import collect_samples
from relayrl.policy.rnn_sequencing import sequence_layout, sequence_rows
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch
from relayrl.utils.timers import TimerStat

__all__ = [
    "SyncSamplesOptimizer",
    "LocalSyncOptimizer",
    "learn_in_minibatches",
    "policy_batch_label",
    "standardize",
    "get_learner_stats",
]


class SyncSamplesOptimizer(PolicyOptimizer):
    """Each ``step()``: the local weights to every worker, at least ``train_batch_size`` steps sampled, then
    ``num_sgd_iter`` epochs of (minibatch) learning on the local worker's trained policies.

    Args:
        workers: a WorkerSet, or the local worker (see PolicyOptimizer).
        remote_workers: the remote workers when ``workers`` is a local worker.
        num_sgd_iter: epochs of learning over each train batch.
        train_batch_size: the env steps to sample per ``step()`` (at least; the workers' whole batches are kept).
        sgd_minibatch_size: rows of one minibatch (``MinibatchSGD``); 0, or at least the batch's size: one update
            per epoch on the whole batch.
        standardize_fields: columns brought to zero mean and unit variance before learning (PPO: advantages).
        seed: seed of the minibatch shuffles (None: seeded with 0).
    """

    def __init__(
        self,
        workers: Any,
        remote_workers: list | None = None,
        *,
        num_sgd_iter: int = 1,
        train_batch_size: int = 1,
        sgd_minibatch_size: int = 0,
        standardize_fields: tuple[str, ...] = (),
        seed: int | None = None,
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
        # A multi-agent batch's rows per policy are agent steps, not train_batch_size: checked per policy instead.
        multi_agent = getattr(self.workers.local_worker(), "multi_agent", False)
        self.sgd = MinibatchSGD(sgd_minibatch_size, num_sgd_iter, seed, None if multi_agent else train_batch_size)

    def step(self) -> dict:
        with self.update_weights_timer:
            self.workers.sync_weights(policies=self.policies_to_sync())
        with self.sample_timer:
            samples = collect_samples(self.workers, self.train_batch_size)
        self.sample_timer.push_units_processed(samples.count)
        with self.grad_timer:
            self.learner_stats = learn_in_minibatches(
                self.workers.local_worker(), samples, self.sgd, self.standardize_fields
            )
        self.grad_timer.push_units_processed(samples.count)
        self.num_steps_sampled += samples.count
        self.num_steps_trained += samples.count
        self.num_agent_steps_sampled += agent_steps(samples)
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
    worker: Any,
    samples: SampleBatch | MultiAgentBatch,
    sgd: MinibatchSGD,
    standardize_fields: tuple[str, ...],
) -> dict:
    """``sgd``'s epochs of minibatch learning on the worker's trained policies, each on its own batch (its own
    minibatches, remainder and warning); returns stats per policy id. A policy not in ``policies_to_train`` is
    not touched."""
    if isinstance(samples, SampleBatch):
        standardize(samples, standardize_fields)
        policy = getattr(worker, "policy_map", {}).get(DEFAULT_POLICY_ID)
        return {DEFAULT_POLICY_ID: _run(sgd, policy, samples, worker.learn_on_batch)}
    stats = {}
    for pid, batch in samples.policy_batches.items():
        if pid not in worker.policies_to_train:
            continue
        standardize(batch, standardize_fields)
        policy = worker.policy_map[pid]
        sgd.warn_remainder(batch.count, policy_batch_label(pid))
        stats[pid] = _run(sgd, policy, batch, policy.learn_on_batch)
    return stats


def policy_batch_label(pid: str) -> str:
    """How the minibatch remainder warning names a policy's batch in a MultiAgentBatch."""
    return f"policy {pid!r} train batch (agent steps, first batch)"


def _run(sgd: MinibatchSGD, policy: Any, batch: SampleBatch, learn: Any) -> dict:
    """``sgd``'s epochs of ``learn(minibatch)``; a recurrent policy's minibatches are whole sequences (the rows of
    each in time order, so that the policy's ``load_batch`` cuts the same sequences again)."""
    if not getattr(policy, "is_recurrent", lambda: False)():
        return sgd.run(batch.count, lambda rows: learn(_rows(batch, rows)))
    max_seq_len = getattr(policy, "max_seq_len", None) or policy.config.get("model", {}).get("max_seq_len", 20)
    starts, lens = sequence_layout(batch, max_seq_len)
    return sgd.run(
        len(lens),
        lambda seqs: learn(batch if seqs is None else _rows(batch, sequence_rows(starts, lens, seqs.numpy()))),
        seq_lens=lens,
    )


def _rows(batch: SampleBatch, rows: Any) -> SampleBatch:
    if rows is None:
        return batch
    idx = rows.numpy() if hasattr(rows, "numpy") else rows
    return SampleBatch({k: v[idx] for k, v in batch.items() if k != SampleBatch.SEQ_LENS})


def standardize(batch: SampleBatch, fields: tuple[str, ...]) -> None:
    """Zero-mean, unit-variance columns in place (e.g. advantages for PPO)."""
    for field in fields:
        value = batch[field].astype(np.float64)
        batch[field] = ((value - value.mean()) / max(1e-4, value.std())).astype(np.float32)


LocalSyncOptimizer = SyncSamplesOptimizer
