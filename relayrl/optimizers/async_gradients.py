"""AsyncGradientsOptimizer: the A3C loop (Mnih et al. 2016, https://arxiv.org/abs/1602.01783, Algorithm S3),
with Ray actors in place of threads (RLlib 0.7's A3C).

    optimizer = AsyncGradientsOptimizer(workers, grads_per_step=100)
    optimizer.step()   # applies grads_per_step gradients, each as soon as it arrives

Each remote worker samples with the weights it was last sent and computes a gradient on its own batch; the
driver applies every gradient to the local (learner) policy the moment it arrives and sends that worker the
fresh weights together with its next task. The weights a gradient was computed with therefore lag behind the
learner by up to ``num_workers - 1`` updates: the asynchrony of A3C.

Multi-agent: a gradient is a dict ``{policy_id: gradient}`` of the trained policies whose agents are in the
worker's batch (possibly none: the batch's agents all map to policies that are not trained), applied policy by
policy; the steps it counts come with it (``_sample_and_gradients``), and after the first round only the trained
policies' weights travel.

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
from relayrl.optimizers.policy_optimizer import PolicyOptimizer, agent_steps
from relayrl.optimizers.sync_samples import get_learner_stats
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID
from relayrl.policy.torch_policy import LEARNER_STATS_KEY
from relayrl.utils.timers import TimerStat


def _learner_stats(info: dict) -> dict:
    """Learner stats by policy id (like the other optimizers) from a single-agent or a multi-agent gradient info."""
    if LEARNER_STATS_KEY in info or "batch_count" in info:
        return {DEFAULT_POLICY_ID: get_learner_stats(info)}
    return {pid: get_learner_stats(i) for pid, i in info.items()}


def _sample_and_gradients(worker: Any) -> tuple[Any, dict, int, int]:
    """A multi-agent worker's task: sample, compute the trained policies' gradients, and count the batch's env
    steps and agent steps (a gradient info has neither: a policy sees only its own agents' rows)."""
    batch = worker.sample()
    gradient, info = worker.compute_gradients(batch)
    return gradient, info, batch.count, agent_steps(batch)


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
        self._multi_agent = bool(getattr(self.workers.local_worker(), "multi_agent", False))

    def step(self) -> dict:
        local = self.workers.local_worker()
        if not self.workers.remote_workers():
            self.workers.check_healthy_workers()
            return self._step_locally(local)
        import ray

        weights = ray.put(self.learner_weights())
        pending: dict = {}
        num_gradients = 0
        # The first wave: every worker gets the current weights and a sample -> gradient task.
        for w in self.workers.remote_workers():
            w.set_weights.remote(weights)
            pending[self._gradient_task(w)] = w
            num_gradients += 1
        while pending:
            with self.wait_timer:
                ready, _ = ray.wait(list(pending), num_returns=1)
            future = ready[0]
            w = pending.pop(future)
            try:
                result = ray.get(future)
            except WorkerSet.actor_errors() as e:
                self.workers.handle_worker_failure(w, e)
                num_gradients -= 1  # dropped: its idle replacement or another worker computes one more
            else:
                self._apply(local, *result)
            busy = [id(x) for x in pending.values()]
            for idle in self.workers.remote_workers():
                if num_gradients >= self.grads_per_step:
                    break
                if id(idle) not in busy:
                    with self.dispatch_timer:
                        idle.set_weights.remote(self.learner_weights())
                        pending[self._gradient_task(idle)] = idle
                    num_gradients += 1
            if not pending and num_gradients < self.grads_per_step:
                self.workers.check_healthy_workers()
        return self.learner_stats

    def _gradient_task(self, worker: Any) -> Any:
        """``worker`` samples and computes a gradient on its sample: ``(gradient, info[, env steps, agent steps])``."""
        if self._multi_agent:
            return worker.apply.remote(_sample_and_gradients)
        return worker.compute_gradients.remote(worker.sample.remote())

    def _apply(self, local: Any, gradient: Any, info: dict, count: int | None = None, agents: int | None = None):
        """Applies one gradient (none, or an empty dict: no trained policy had rows) and counts its steps."""
        # Per policy, the latest stats: a multi-agent gradient may carry only some of the trained policies.
        self.learner_stats = {**self.learner_stats, **_learner_stats(info)}
        if gradient is not None and (not isinstance(gradient, dict) or gradient):
            with self.apply_timer:
                local.apply_gradients(gradient)
            self.num_gradients_applied += 1
        count = int(info["batch_count"]) if count is None else count
        self.num_steps_sampled += count
        self.num_steps_trained += count
        self.num_agent_steps_sampled += count if agents is None else agents

    def _step_locally(self, local: Any) -> dict:
        for _ in range(self.grads_per_step):
            with self.wait_timer:
                result = _sample_and_gradients(local)
            self._apply(local, *result)
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
