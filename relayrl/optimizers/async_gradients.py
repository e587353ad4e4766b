"""AsyncGradientsOptimizer: the A3C loop (Mnih et al. 2016, https://arxiv.org/abs/1602.01783, Algorithm S3),
with Ray actors in place of threads (seed 003).

    optimizer = AsyncGradientsOptimizer(workers, grads_per_step=100)
    optimizer.step()   # applies grads_per_step gradients, each as soon as it arrives

Each remote worker samples with the weights it was last sent and computes a gradient on its own batch; the
driver applies every gradient to the local (learner) policy the moment it arrives and sends that worker the
fresh weights together with its next task. The weights a gradient was computed with therefore lag behind the
learner by up to ``num_workers - 1`` updates: the asynchrony of A3C.
"""

from __future__ import annotations

from typing import Any

from relayrl.optimizers.policy_optimizer import PolicyOptimizer
from relayrl.optimizers.sync_samples import get_learner_stats
from relayrl.utils.timers import TimerStat


class AsyncGradientsOptimizer(PolicyOptimizer):
    def __init__(self, workers: Any, remote_workers: list | None = None, *, grads_per_step: int = 100):
        """``grads_per_step``: gradients to collect and apply per ``step()``; high enough to amortise the
        overhead of calling ``step()`` (filter sync and metrics happen between steps)."""
        super().__init__(workers, remote_workers)
        if grads_per_step < 1:
            raise ValueError(f"grads_per_step must be >= 1, got {grads_per_step}")
        if not self.workers.remote_workers():
            raise ValueError("AsyncGradientsOptimizer requires at least 1 remote worker (num_workers >= 1)")
        self.apply_timer = TimerStat()
        self.wait_timer = TimerStat()
        self.dispatch_timer = TimerStat()
        self.grads_per_step = grads_per_step
        self.num_gradients_applied = 0
        self.learner_stats: dict = {}

    def step(self) -> dict:
        import ray

        local = self.workers.local_worker()
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
            gradient, info = ray.get(future)
            w = pending.pop(future)
            self.learner_stats = get_learner_stats(info)
            if gradient is not None:
                with self.apply_timer:
                    local.apply_gradients(gradient)
                self.num_gradients_applied += 1
            self.num_steps_sampled += info["batch_count"]
            self.num_steps_trained += info["batch_count"]
            if num_gradients < self.grads_per_step:
                with self.dispatch_timer:
                    w.set_weights.remote(local.get_weights())
                    pending[w.compute_gradients.remote(w.sample.remote())] = w
                num_gradients += 1
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
