"""WorkerSet: the local RolloutWorker (holding the learner's policies) plus N remote ones as Ray actors.

    workers = WorkerSet(env_creator, PPOTorchPolicy, trainer_config=config, num_workers=2)
    workers.sync_weights()                                   # one ray.put, every remote worker loads it
    batches = ray.get([w.sample.remote() for w in workers.remote_workers()])
    workers.foreach_worker(lambda w: w.get_policy().get_weights())   # local first

With ``num_workers=0`` Ray is never imported or started: everything runs in this process.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable

from relayrl.config import merge_dicts
from relayrl.evaluation.rollout_worker import RolloutWorker
from relayrl.policy.policy import Policy

logger = logging.getLogger(__name__)


def ensure_ray(num_cpus: float = 0) -> None:
    """Starts Ray on this machine unless it already runs (a user's ``ray.init(address=...)`` is kept), with at
    least ``num_cpus`` CPU slots: Ray's CPUs are scheduling slots, so more workers than cores runs (slower)
    instead of waiting forever for a slot. A running Ray with fewer CPUs in all is an error, not a hang."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=max(math.ceil(num_cpus), os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=True, logging_level=logging.WARNING)
        return
    have = ray.cluster_resources().get("CPU", 0)
    if have < num_cpus:
        raise ValueError(f"the remote workers need {num_cpus:g} CPUs (num_workers * num_cpus_per_worker) but the"
                         f" running Ray cluster has {have:g}; lower num_workers or num_cpus_per_worker, or start Ray"
                         " with more CPUs")


class WorkerSet:
    def __init__(
        self,
        env_creator: Callable,
        policy: type[Policy] | dict,
        trainer_config: dict | None = None,
        num_workers: int = 0,
        logdir: str | None = None,
        _setup: bool = True,
    ):
        self._env_creator = env_creator
        self._policy = policy
        self._config = trainer_config or {}
        self._remote_workers: list = []
        self._local_worker: RolloutWorker | None = None
        self.num_recreated = 0
        if _setup:
            self._local_worker = self._make_local()
            self.add_workers(num_workers)

    @classmethod
    def from_workers(cls, local_worker: Any, remote_workers: list | None = None) -> "WorkerSet":
        """Wraps workers built by hand (any objects with the RolloutWorker methods), as in the seeds."""
        ws = cls(None, None, _setup=False)
        ws._local_worker = local_worker
        ws._remote_workers = list(remote_workers or [])
        return ws

    # --- access --------------------------------------------------------------------------------------------
    def local_worker(self) -> RolloutWorker:
        return self._local_worker

    def remote_workers(self) -> list:
        return self._remote_workers

    # --- construction ----------------------------------------------------------------------------------------
    def _make_local(self) -> RolloutWorker:
        return RolloutWorker(
            self._env_creator, self._policy, policy_config=self._config, worker_index=0,
            **self._multiagent_kwargs(),
        )

    def _multiagent_kwargs(self) -> dict:
        ma = self._config.get("multiagent") or {}
        return {"policy_mapping_fn": ma.get("policy_mapping_fn"), "policies_to_train": ma.get("policies_to_train")}

    def add_workers(self, num_workers: int) -> None:
        if num_workers <= 0:
            return
        import ray

        per_worker = self._config.get("num_cpus_per_worker", 1)
        ensure_ray((len(self._remote_workers) + num_workers) * per_worker)
        cls = RolloutWorker.as_remote(
            num_cpus=per_worker,
            num_gpus=self._config.get("num_gpus_per_worker", 0),
            resources=self._config.get("custom_resources_per_worker") or None,
        )
        start = len(self._remote_workers) + 1
        for index in range(start, start + num_workers):
            self._remote_workers.append(self._make_remote(cls, index))
        # Fail fast (and with the worker's own error) if a worker cannot be built.
        ray.get([w.ping.remote() for w in self._remote_workers[start - 1:]])

    def _make_remote(self, cls: Any, index: int) -> Any:
        # A remote worker uses its own GPU share, not the learner's.
        config = merge_dicts(self._config, {"num_gpus": self._config.get("num_gpus_per_worker", 0)})
        return cls.remote(self._env_creator, self._policy, policy_config=config, worker_index=index,
                          **self._multiagent_kwargs())

    # --- broadcast -----------------------------------------------------------------------------------------
    def sync_weights(self, global_vars: dict | None = None) -> None:
        """Sends the local policies' weights to every remote worker through a single ``ray.put``."""
        if not self._remote_workers:
            return
        import ray

        weights = ray.put(self._local_worker.get_weights())
        args = (weights,) if global_vars is None else (weights, global_vars)
        for w in self._remote_workers:
            w.set_weights.remote(*args)

    def foreach_worker(self, func: Callable[[RolloutWorker], Any]) -> list:
        """``func(worker)`` on every worker, local first; returns the results in that order."""
        local = [func(self._local_worker)]
        if not self._remote_workers:
            return local
        import ray

        return local + ray.get([w.apply.remote(func) for w in self._remote_workers])

    def foreach_worker_with_index(self, func: Callable[[RolloutWorker, int], Any]) -> list:
        local = [func(self._local_worker, 0)]
        if not self._remote_workers:
            return local
        import ray

        return local + ray.get([w.apply.remote(func, i + 1) for i, w in enumerate(self._remote_workers)])

    def foreach_policy(self, func: Callable) -> list:
        return self._local_worker.foreach_policy(func)

    # --- failures ------------------------------------------------------------------------------------------
    def recreate_failed_workers(self) -> list[int]:
        """Pings every remote worker; replaces the dead ones with fresh actors (with current weights)."""
        if not self._remote_workers:
            return []
        import ray

        cls = RolloutWorker.as_remote(
            num_cpus=self._config.get("num_cpus_per_worker", 1),
            num_gpus=self._config.get("num_gpus_per_worker", 0),
        )
        failed = []
        for i, w in enumerate(self._remote_workers):
            try:
                ray.get(w.ping.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - any failure of the actor means it must be replaced
                failed.append(i)
        if failed:
            weights = ray.put(self._local_worker.get_weights())
            for i in failed:
                logger.warning("remote worker %d died; recreating it", i + 1)
                self._remote_workers[i] = self._make_remote(cls, i + 1)
                self._remote_workers[i].set_weights.remote(weights)
                self.num_recreated += 1
        return failed

    def stop(self) -> None:
        self._local_worker.stop()
        if self._remote_workers:
            import ray

            for w in self._remote_workers:
                try:
                    w.stop.remote()
                    ray.kill(w)
                except Exception:  # noqa: BLE001 - the actor may already be gone
                    pass
            self._remote_workers = []
