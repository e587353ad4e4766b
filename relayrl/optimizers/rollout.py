"""Gathering samples from a WorkerSet, and the filter synchronisation that follows."""

from __future__ import annotations

from relayrl.evaluation.worker_set import WorkerSet
from relayrl.policy.sample_batch import MultiAgentBatch, SampleBatch


def collect_samples(workers: WorkerSet, min_steps: int) -> SampleBatch | MultiAgentBatch:
    """At least ``min_steps`` env steps sampled with the current weights.

    Without remote workers the local one samples. Otherwise every remote worker keeps one ``sample()`` in
    flight until enough steps have arrived; the batches still in flight are awaited and kept (they were sampled
    with the same weights), so no work is thrown away."""
    batches = []
    count = 0
    remotes = workers.remote_workers()
    if not remotes:
        local = workers.local_worker()
        while count < min_steps:
            batch = local.sample()
            batches.append(batch)
            count += batch.count
        return SampleBatch.concat_samples(batches)

    import ray

    pending = {w.sample.remote(): w for w in remotes}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        worker = pending.pop(ready[0])
        batch = ray.get(ready[0])
        batches.append(batch)
        count += batch.count
        if count + _in_flight_estimate(batch, len(pending)) < min_steps:
            pending[worker.sample.remote()] = worker
    return SampleBatch.concat_samples(batches)


def _in_flight_estimate(batch, num_pending: int) -> int:
    return batch.count * num_pending


def synchronize_filters(workers: WorkerSet) -> None:
    """Folds every remote worker's new filter statistics into the local filters, then sends them back."""
    remotes = workers.remote_workers()
    if not remotes:
        return
    import ray

    local = workers.local_worker()
    remote_filters = ray.get([w.get_filters.remote(flush_after=True) for w in remotes])
    for filters in remote_filters:
        for pid, f in filters.items():
            local.filters[pid].apply_changes(f, with_buffer=False)
    copies = ray.put(local.get_filters())
    for w in remotes:
        w.sync_filters.remote(copies)
