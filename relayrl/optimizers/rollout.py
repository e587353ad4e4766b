"""Gathering samples from a WorkerSet, and the filter synchronisation that follows.

A remote worker that dies while these wait on it goes to ``WorkerSet.handle_worker_failure``: with
``recreate_failed_workers`` its replacement (current weights and filters) samples in its place, with
``ignore_worker_failures`` the others carry on, with neither a WorkerFailureError names it. The dead worker's
batch never arrives and is never counted.
"""

from __future__ import annotations

from relayrl.evaluation.worker_set import WorkerSet
from relayrl.policy.sample_batch import MultiAgentBatch, SampleBatch


def collect_samples(workers: WorkerSet, min_steps: int) -> SampleBatch | MultiAgentBatch:
    """At least ``min_steps`` env steps sampled with the current weights.

    Without remote workers the local one samples. Otherwise every remote worker keeps one ``sample()`` in
    flight until enough steps have arrived; the batches still in flight are awaited and kept (they were sampled
    with the same weights), so no work is thrown away. A worker whose external env has had no news for its
    ``idle_s`` hands back what it has (even nothing): an idle simulator does not hold up the others' steps."""
    batches = []
    count = 0
    remotes = workers.remote_workers()
    if not remotes:
        workers.check_healthy_workers()
        local = workers.local_worker()
        while count < min_steps:
            batch = local.sample()
            batches.append(batch)
            count += batch.count
        return SampleBatch.concat_samples(batches)

    import ray

    pending = {w.sample.remote(): w for w in remotes}
    last = 0  # the size of the last batch: what each sample() still in flight is expected to bring
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        worker = pending.pop(ready[0])
        try:
            batch = ray.get(ready[0])
        except WorkerSet.actor_errors() as e:
            workers.handle_worker_failure(worker, e)  # a replacement is idle and gets work below
        else:
            batches.append(batch)
            count += batch.count
            last = batch.count
        # Keep the healthy idle workers (this one, a replacement) sampling while the batches in flight are
        # not expected to make up the missing steps.
        busy = [id(w) for w in pending.values()]
        for w in workers.remote_workers():
            if id(w) not in busy and count < min_steps and (not last or count + last * len(pending) < min_steps):
                pending[w.sample.remote()] = w
        if not pending and count < min_steps:
            workers.check_healthy_workers()
    return SampleBatch.concat_samples(batches)


def synchronize_filters(workers: WorkerSet) -> None:
    """Folds every remote worker's new filter statistics into the local filters, then sends them back. A worker
    that died is handled (its statistics are lost; a replacement already holds the local filters)."""
    if not workers.remote_workers():
        return
    import ray

    local = workers.local_worker()
    for _, filters in workers.gather(lambda w, i: w.get_filters.remote(flush_after=True)):
        for pid, f in filters.items():
            local.filters[pid].apply_changes(f, with_buffer=False)
    copies = ray.put(local.get_filters())
    for w in workers.remote_workers():
        w.sync_filters.remote(copies)
