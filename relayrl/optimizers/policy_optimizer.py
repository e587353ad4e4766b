"""PolicyOptimizer: the strategy that turns a WorkerSet's samples into policy improvement.

    optimizer = SyncSamplesOptimizer(workers, train_batch_size=200)
    while optimizer.num_steps_sampled < 100_000:
        optimizer.step()
    optimizer.stats()

RLlib 0.7-era construction is accepted too: ``Optimizer(local_evaluator, remote_evaluators, **options)`` and
``Optimizer.make(env_creator, policy, num_workers=2, optimizer_config={...})``.
"""

from __future__ import annotations

from typing import Any, Callable

from relayrl.evaluation.metrics import RolloutMetrics
from relayrl.evaluation.worker_set import WorkerSet
from relayrl.policy.sample_batch import MultiAgentBatch


def agent_steps(samples: Any) -> int:
    """The agent steps in a batch: the rows of every policy of a MultiAgentBatch, a SampleBatch's count."""
    return samples.total() if isinstance(samples, MultiAgentBatch) else samples.count


class PolicyOptimizer:
    """Base of every policy optimizer: holds the workers and the step counters; a subclass implements ``step()``.

    Args:
        workers: a WorkerSet; or, RLlib 0.7-style, the local worker (evaluator), with ``remote_workers`` the remote
            ones (both are wrapped with ``WorkerSet.from_workers``).
        remote_workers: the remote workers (Ray actor handles) when ``workers`` is a local worker; ignored when it is
            a WorkerSet.
    """

    def __init__(self, workers: Any, remote_workers: list | None = None):
        if not isinstance(workers, WorkerSet):
            workers = WorkerSet.from_workers(workers, remote_workers)
        self.workers = workers
        self.num_steps_sampled = 0
        self.num_steps_trained = 0
        self.num_agent_steps_sampled = 0  # rows over all policies (a SampleBatch's count, MultiAgentBatch.total())
        self._synced_every_policy = False  # see policies_to_sync
        self.episode_history: list[RolloutMetrics] = []

    # --- RLlib 0.7-era accessors -----------------------------------------------------------------------------------
    @property
    def local_evaluator(self):
        return self.workers.local_worker()

    @property
    def remote_evaluators(self) -> list:
        return self.workers.remote_workers()

    def step(self) -> dict:
        """One round of sampling and learning; returns learner stats."""
        raise NotImplementedError

    def stats(self) -> dict:
        return {
            "num_steps_sampled": self.num_steps_sampled,
            "num_steps_trained": self.num_steps_trained,
            "num_agent_steps_sampled": self.num_agent_steps_sampled,
        }

    def policies_to_sync(self) -> list[str] | None:
        """The policies whose weights the next broadcast to the workers carries: every policy (None) the first
        time, then only the trained ones, the only weights that learning changes. A policy that is not trained
        keeps the weights it was sent; ``Trainer.restore``, ``Trainer.set_weights`` and a recreated worker send
        every policy themselves."""
        local = self.workers.local_worker()
        trained = getattr(local, "policies_to_train", None)
        if not self._synced_every_policy or trained is None or set(trained) >= set(local.policy_map):
            self._synced_every_policy = True
            return None
        return list(trained)

    def learner_weights(self) -> dict:
        """The local worker's weights of ``policies_to_sync()`` (what a broadcast sends)."""
        policies = self.policies_to_sync()
        local = self.workers.local_worker()
        return local.get_weights() if policies is None else local.get_weights(policies)

    def save(self) -> dict:
        """Counters to store in a checkpoint."""
        return {"num_steps_sampled": self.num_steps_sampled, "num_steps_trained": self.num_steps_trained}

    def restore(self, data: dict) -> None:
        self.num_steps_sampled = int(data.get("num_steps_sampled", 0))
        self.num_steps_trained = int(data.get("num_steps_trained", 0))

    def stop(self) -> None:
        pass

    def foreach_worker(self, func: Callable) -> list:
        """``func(worker)`` on every worker, the local one first."""
        return self.workers.foreach_worker(func)

    foreach_evaluator = foreach_worker

    def foreach_worker_with_index(self, func: Callable) -> list:
        return self.workers.foreach_worker_with_index(func)

    foreach_evaluator_with_index = foreach_worker_with_index

    @classmethod
    def make(
        cls,
        env_creator_or_worker_cls: Any,
        policy_or_args: Any = None,
        num_workers: int = 0,
        optimizer_config: dict | None = None,
        worker_config: dict | None = None,
        evaluator_kwargs: dict | None = None,
    ) -> "PolicyOptimizer":
        """Builds the workers and the optimizer in one call.

        ``make(env_creator, PolicyClass, num_workers, optimizer_config, worker_config)`` builds RolloutWorkers;
        ``make(EvaluatorClass, [args...], num_workers, optimizer_config)`` (RLlib 0.7) instantiates a user's
        own evaluator class locally and as Ray actors."""
        if isinstance(env_creator_or_worker_cls, type):
            evaluator_cls = env_creator_or_worker_cls
            args, kwargs = list(policy_or_args or []), dict(evaluator_kwargs or {})
            local = evaluator_cls(*args, **kwargs)
            remotes = []
            if num_workers:
                import ray

                from relayrl.evaluation.worker_set import ensure_ray

                ensure_ray(num_workers)
                remote_cls = ray.remote(num_cpus=1)(evaluator_cls)
                remotes = [remote_cls.remote(*args, **kwargs) for _ in range(num_workers)]
            workers = WorkerSet.from_workers(local, remotes)
        else:
            workers = WorkerSet(env_creator_or_worker_cls, policy_or_args, worker_config or {}, num_workers)
        return cls(workers, **(optimizer_config or {}))
