"""AsyncGradientsOptimizer: the A3C loop (Mnih et al. 2016, https://arxiv.org/abs/1602.01783, Algorithm S3),
with Ray actors in place of threads (RLlib 0.7's A3C).

    optimizer = AsyncGradientsOptimizer(workers, grads_per_step=100)
    optimizer.step()   # applies grads_per_step gradients, each as soon as it arrives

Each remote worker samples with the weights it was last sent and computes a gradient on its own batch; the
driver applies every gradient to the local (learner) policy the moment it arrives and sends that worker the
fresh weights together with its next task. The weights a gradient was computed with therefore lag behind the
learner by up to ``num_workers - 1`` updates: the asynchrony of A3C.

With no remote workers (``num_workers: 0``) the local worker samples, computes and applies each gradient in
turn: the same loop in one process, without the asynchrony (RLlib 0.7's raised an error instead).

Worker failures: the gradient task of a remote worker that dies is dropped (not applied, not counted) and the
worker goes to ``WorkerSet.handle_worker_failure``. With ``recreate_failed_workers: True`` the replacement
(current weights and filters) gets a new task, so the step still applies ``grads_per_step`` gradients; with
``ignore_worker_failures: True`` the other workers make up for it, and a step with no healthy worker left raises
WorkerFailureError instead of waiting forever; with neither key WorkerFailureError names the worker and both keys.
"""

from __future__ import annotations

from typing import Any

from relayrl.evaluation.worker_set import WorkerSet
from relayrl.optimizers.policy_optimizer import PolicyOptimizer
from relayrl.optimizers.sync_samples import get_learner_stats
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID
from relayrl.policy.torch_policy import LEARNER_STATS_KEY
from relayrl.utils.timers import TimerStat


def _stats_and_count(info: dict) -> tuple[dict, int]:
    """Learner stats by policy id (like the other optimizers) and the steps a gradient was computed on."""
    if LEARNER_STATS_KEY in info or "batch_count" in info:
        return {DEFAULT_POLICY_ID: get_learner_stats(info)}, int(info["batch_count"])
    return (
        {pid: get_learner_stats(i) for pid, i in info.items()},
        max(int(i.get("batch_count", 0)) for i in info.values()),
    )


class AsyncGradientsOptimizer(PolicyOptimizer):
    """Each ``step()`` applies ``grads_per_step`` gradients to the local policy, each as soon as a remote worker
    has computed it on its own sample; that worker then gets the fresh weights with its next task.

    Args:
        workers: a WorkerSet, or the local worker (see PolicyOptimizer).
        remote_workers: the remote workers when ``workers`` is a local worker.
        grads_per_step: gradients to collect and apply per ``step()`` (at least 1, else ValueError); high enough
            to amortise the overhead of calling ``step()`` (filter sync and metrics happen between steps).
    """

    def __init__(self, workers: Any, remote_workers: list | None = None, *, grads_per_step: int = 100):
        super().__init__(workers, remote_workers)
        if grads_per_step < 1:
            raise ValueError(f"grads_per_step must be >= 1, got {grads_per_step}")
        self.apply_timer = TimerStat()
        self.wait_timer = TimerStat()
        self.dispatch_timer = TimerStat()
        self.grads_per_step = grads_per_step
        self.num_gradients_applied = 0
        self.learner_stats: dict = {}

    def step(self) -> dict:
        local = self.workers.local_worker()
        if not self.workers.remote_workers():
            self.workers.check_healthy_workers()
            return self._step_locally(local)
        import ray

        weights = ray.put(local.get_weights())
        pending: dict = {}
        num_gradients = 0
        # The first wave: every worker gets the current weights and a sample -> gradient task.
        for w in self.workers.remote_workers():
            w.set_weights.remote(weights)
            pending[w.compute_gradients.remote(w.sample.remote())] = w
            num_gradients += 1
        while pending:
            with self.wait_timer:
                ready, _ = ray.wait(list(pending), num_returns=1)
            future = ready[0]
            w = pending.pop(future)
            try:
                gradient, info = ray.get(future)
            except WorkerSet.actor_errors() as e:
                self.workers.handle_worker_failure(w, e)
                num_gradients -= 1  # dropped: its idle replacement or another worker computes one more
            else:
                self.learner_stats, count = _stats_and_count(info)
                if gradient is not None:
                    with self.apply_timer:
                        local.apply_gradients(gradient)
                    self.num_gradients_applied += 1
                self.num_steps_sampled += count
                self.num_steps_trained += count
            busy = [id(x) for x in pending.values()]
            for idle in self.workers.remote_workers():
                if num_gradients >= self.grads_per_step:
                    break
                if id(idle) not in busy:
                    with self.dispatch_timer:
                        idle.set_weights.remote(local.get_weights())
                        pending[idle.compute_gradients.remote(idle.sample.remote())] = idle
                    num_gradients += 1
            if not pending and num_gradients < self.grads_per_step:
                self.workers.check_healthy_workers()
        return self.learner_stats

    def _step_locally(self, local: Any) -> dict:
        for _ in range(self.grads_per_step):
            with self.wait_timer:
                gradient, info = local.compute_gradients(local.sample())
            self.learner_stats, count = _stats_and_count(info)
            with self.apply_timer:
                local.apply_gradients(gradient)
            self.num_gradients_applied += 1
            self.num_steps_sampled += count
            self.num_steps_trained += count
        return self.learner_stats

    def stats(self) -> dict:
        return {
            **super().stats(),
            "wait_time_ms": round(1000 * self.wait_timer.mean, 3),
            "apply_time_ms": round(1000 * self.apply_timer.mean, 3),
            "dispatch_time_ms": round(1000 * self.dispatch_timer.mean, 3),
            "num_gradients_applied": self.num_gradients_applied,
            "learner": self.learner_stats,
        }
