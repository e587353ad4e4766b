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
from relayrl.models.registry import resolve_config
from relayrl.policy.policy import Policy

logger = logging.getLogger(__name__)


def ensure_ray(num_cpus: float = 0) -> None:
    """Starts Ray on this machine unless it already runs (a user's ``ray.init(address=...)`` is kept), with at
    least ``num_cpus`` CPU slots: Ray's CPUs are scheduling slots, so more workers than cores runs (slower)
    instead of waiting forever for a slot. A running Ray with fewer CPUs in all is an error, not a hang."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=max(math.ceil(num_cpus), os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=True,
            logging_level=logging.WARNING,
        )
        return
    have = ray.cluster_resources().get("CPU", 0)
    if have < num_cpus:
        raise ValueError(
            f"the remote workers need {num_cpus:g} CPUs (num_workers * num_cpus_per_worker) but the"
            f" running Ray cluster has {have:g}; lower num_workers or num_cpus_per_worker, or start Ray"
            " with more CPUs"
        )


class WorkerSet:
    """The local RolloutWorker (the learner's policies) and ``num_workers`` remote ones (Ray actors).

    Args:
        env_creator: ``env_creator(EnvContext) -> env``, shipped to every remote worker.
        policy: a Policy class or a multi-agent policy dict (see RolloutWorker).
        trainer_config: the trainer's config (resources per worker, fault-tolerance keys, worker options).
        num_workers: remote workers to start now (0: no Ray at all).
        logdir: unused; kept for the RLlib 0.7-era signature.

    A remote worker that dies is handled where an optimizer waits on it (``handle_worker_failure``, ``fetch``,
    ``gather``): replaced with ``recreate_failed_workers``, dropped with ``ignore_worker_failures``, else a
    WorkerFailureError naming it, its node and both keys.
    """

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
        self.num_failed = 0
        self._indices: dict = {}  # actor key -> worker_index
        self._nodes: dict[int, str] = {}  # worker_index -> "node <ip> (<node id>)"
        self._replaced: dict = {}  # actor key of a failed worker -> its replacement (None: dropped)
        if _setup:
            self._local_worker = self._make_local()
            self.add_workers(num_workers)

    @classmethod
    def from_workers(cls, local_worker: Any, remote_workers: list | None = None) -> "WorkerSet":
        """Wraps workers built by hand (any objects with the RolloutWorker methods), as in RLlib 0.7."""
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
            self._env_creator,
            self._policy,
            policy_config=self._config,
            worker_index=0,
            **self._multiagent_kwargs(),
        )

    def _multiagent_kwargs(self) -> dict:
        ma = self._config.get("multiagent") or {}
        return {"policy_mapping_fn": ma.get("policy_mapping_fn"), "policies_to_train": ma.get("policies_to_train")}

    def add_workers(self, num_workers: int) -> None:
        if num_workers <= 0:
            return
        per_worker = self._config.get("num_cpus_per_worker", 1)
        ensure_ray((len(self._remote_workers) + num_workers) * per_worker)
        import ray

        free = ray.available_resources().get("CPU", 0)
        if free < num_workers * per_worker:
            logger.warning(
                "%d remote worker(s) need %g CPUs but the cluster has %g free; waiting up to %g s for them",
                num_workers,
                num_workers * per_worker,
                free,
                self._config.get("worker_start_timeout_s", 60),
            )
        cls = self._remote_class()
        start = len(self._remote_workers) + 1
        indices = list(range(start, start + num_workers))
        new = [self._make_remote(cls, index) for index in indices]
        self._remote_workers.extend(new)
        self._await_started(new, indices)

    def _remote_class(self) -> Any:
        return RolloutWorker.as_remote(
            num_cpus=self._config.get("num_cpus_per_worker", 1),
            num_gpus=self._config.get("num_gpus_per_worker", 0),
            resources=self._config.get("custom_resources_per_worker") or None,
        )

    def _await_started(self, workers: list, indices: list[int]) -> None:
        """Waits (at most ``worker_start_timeout_s``) until every new worker answers; a worker that cannot be
        built fails with its own error, one that cannot be placed with the resources it is waiting for."""
        import ray

        timeout = float(self._config.get("worker_start_timeout_s", 60))
        futures = {w.node.remote(): index for w, index in zip(workers, indices)}
        ready, not_ready = ray.wait(list(futures), num_returns=len(futures), timeout=timeout)
        for future in ready:
            self._nodes[futures[future]] = ray.get(future)  # raises the worker's constructor error, if any
        if not_ready:
            for w in workers:
                ray.kill(w)
            missing = sorted(futures[f] for f in not_ready)
            raise WorkerStartTimeout(
                f"remote worker(s) {missing} did not start within worker_start_timeout_s={timeout:g} s: each needs"
                f" {self._resource_request()} ({len(missing)} waiting) and the cluster has {_describe_available()}"
                f" ({_describe_holders()}). Free resources, lower num_workers / num_cpus_per_worker, or raise"
                " worker_start_timeout_s"
            )

    def _resource_request(self) -> str:
        parts = {
            "CPU": self._config.get("num_cpus_per_worker", 1),
            "GPU": self._config.get("num_gpus_per_worker", 0),
            **(self._config.get("custom_resources_per_worker") or {}),
        }
        return ", ".join(f"{v:g} {k}" for k, v in parts.items() if v)

    def _make_remote(self, cls: Any, index: int) -> Any:
        # A remote worker uses its own GPU share, not the learner's. Custom model / preprocessor / action-dist
        # names travel as the classes they name: the worker's process has not run the user's registrations.
        config = merge_dicts(resolve_config(self._config), {"num_gpus": self._config.get("num_gpus_per_worker", 0)})
        worker = cls.remote(
            self._env_creator, self._policy, policy_config=config, worker_index=index, **self._multiagent_kwargs()
        )
        self._indices[_actor_key(worker)] = index
        return worker

    # --- broadcast -----------------------------------------------------------------------------------------
    def sync_weights(self, global_vars: dict | None = None, policies: list[str] | None = None) -> None:
        """Sends the local policies' weights (only those of ``policies`` when given) to every remote worker
        through a single ``ray.put``.

        Nothing is awaited (a worker runs its calls in order, so its next ``sample()`` uses these weights): a
        dead worker does not fail here but at the next call whose result is fetched, which handles it."""
        if not self._remote_workers:
            return
        import ray

        local = self._local_worker
        weights = ray.put(local.get_weights() if policies is None else local.get_weights(policies))
        args = (weights,) if global_vars is None else (weights, global_vars)
        for w in self._remote_workers:
            w.set_weights.remote(*args)

    def foreach_worker(self, func: Callable[[RolloutWorker], Any]) -> list:
        """``func(worker)`` on every worker, local first; returns the results in that order. A remote worker that
        dies meanwhile is handled by ``handle_worker_failure``: its replacement runs ``func`` instead, a dropped
        one is left out of the results."""
        local = [func(self._local_worker)]
        return local + [r for _, r in self.gather(lambda w, i: w.apply.remote(func))]

    def foreach_worker_with_index(self, func: Callable[[RolloutWorker, int], Any]) -> list:
        """``func(worker, i)`` with ``i`` 0 for the local worker and 1.. for the remote ones in order."""
        local = [func(self._local_worker, 0)]
        return local + [r for _, r in self.gather(lambda w, i: w.apply.remote(func, i + 1))]

    def gather(self, call: Callable[[Any, int], Any], timeout: float | None = None) -> list[tuple[Any, Any]]:
        """``call(actor, i)`` on every remote worker, ``i`` its position, returning an ObjectRef (None: nothing for
        that worker); returns the (actor, result) pairs in worker order, for the calls answered within
        ``timeout``. A worker that dies is handled by ``handle_worker_failure``; its replacement, if any, gets the
        same call once more."""
        pending = {}
        for i, w in enumerate(self._remote_workers):
            future = call(w, i)
            if future is not None:  # None: nothing for this worker
                pending[future] = (w, i)
        done: dict[int, tuple[Any, Any]] = {}
        retried: set[int] = set()
        while pending:
            answers = {_actor_key(w): r for w, r in self.fetch({f: w for f, (w, _) in pending.items()}, timeout)}
            retry = {}
            for w, i in pending.values():
                key = _actor_key(w)
                if key in answers:
                    done[i] = (w, answers[key])
                elif self._replaced.get(key) is not None and i not in retried:
                    retried.add(i)
                    new = self._replaced[key]
                    retry[call(new, i)] = (new, i)
            pending = retry
        return [done[i] for i in sorted(done)]

    def foreach_policy(self, func: Callable) -> list:
        return self._local_worker.foreach_policy(func)

    # --- failures ------------------------------------------------------------------------------------------
    # How an optimizer survives a worker that dies while it waits on it:
    #
    #     try:
    #         batch = ray.get(future)
    #     except WorkerSet.ACTOR_ERRORS as e:        # the actor (or its node) is gone
    #         new = workers.handle_worker_failure(worker, e)   # raises WorkerFailureError without the flags
    #         ...drop the worker's in-flight futures; if `new` is not None, give it work...
    #
    # ``fetch`` does this for a dict of futures. Errors raised *inside* a worker's method (a RayTaskError, e.g.
    # from a broken env) are not failures of the worker: they propagate with their own message.

    @staticmethod
    def actor_errors() -> tuple[type[BaseException], ...]:
        """Exceptions that mean a remote worker (or its node) died, as opposed to an error in its code."""
        import ray.exceptions as rex

        return (
            rex.RayActorError,
            rex.ActorUnavailableError,
            rex.ObjectLostError,
            rex.OwnerDiedError,
            rex.NodeDiedError,
        )

    @property
    def fault_tolerant(self) -> bool:
        return bool(self._config.get("ignore_worker_failures") or self._config.get("recreate_failed_workers"))

    def worker_index(self, worker: Any) -> int:
        """The 1-based index a remote worker was created with (its ``worker_index``)."""
        return self._indices.get(_actor_key(worker), 0)

    def handle_worker_failure(self, worker: Any, error: BaseException | None = None) -> Any | None:
        """Deals with a remote worker that died: returns its replacement (``recreate_failed_workers``), or None
        once it is dropped from ``remote_workers()`` (``ignore_worker_failures``). Without either key it raises
        WorkerFailureError naming the worker, its node and the two keys. Calling it again for a worker already
        handled returns the same answer without doing anything. A worker whose constructor raised is not a
        failure: that error is raised again."""
        if getattr(error, "actor_init_failed", False):
            # Its constructor raised (e.g. a broken env): an error in the worker's own code, not a failure.
            raise error
        key = _actor_key(worker)
        if key in self._replaced:
            return self._replaced[key]
        position = next((i for i, w in enumerate(self._remote_workers) if _actor_key(w) == key), None)
        # Workers wrapped by from_workers have no recorded index: their 1-based position stands in for it.
        index = self._indices.get(key) or (position + 1 if position is not None else 0)
        node = self._nodes.get(index, "unknown node")
        if not self.fault_tolerant:
            raise WorkerFailureError(
                f"remote worker {index} (on {node}) died: {_first_line(error)}. Set 'recreate_failed_workers': True"
                " to replace it and carry on, or 'ignore_worker_failures': True to carry on without it"
            ) from error
        if not self._config.get("recreate_failed_workers"):
            logger.warning(
                "remote worker %d (on %s) died (%s); carrying on with the other %d",
                index,
                node,
                _first_line(error),
                len(self._remote_workers) - (position is not None),
            )
            if position is not None:
                del self._remote_workers[position]
            self.num_failed += 1
            self._replaced[key] = None
            return None
        logger.warning("remote worker %d (on %s) died (%s); recreating it", index, node, _first_line(error))
        new = self._make_remote(self._remote_class(), index)
        self._await_started([new], [index])
        self._load_current_state(new)
        if position is not None:
            self._remote_workers[position] = new
        else:
            self._remote_workers.append(new)
        self.num_failed += 1
        self.num_recreated += 1
        self._replaced[key] = new
        return new

    def fetch(self, futures: dict, timeout: float | None = None) -> list[tuple[Any, Any]]:
        """``ray.get`` of each ``{future: worker}`` (the ones ready within ``timeout``), as (worker, result)
        pairs. A future whose worker died goes to ``handle_worker_failure`` and is left out."""
        if not futures:
            return []
        import ray

        ready, _ = ray.wait(list(futures), num_returns=len(futures), timeout=timeout)
        out = []
        for future in ready:
            worker = futures[future]
            try:
                out.append((worker, ray.get(future)))
            except self.actor_errors() as e:
                self.handle_worker_failure(worker, e)
        return out

    def probe_unhealthy_workers(self, timeout: float = 30.0) -> list[int]:
        """Pings every remote worker and handles the ones that do not answer; returns their indices."""
        if not self._remote_workers:
            return []
        futures = {w.ping.remote(): w for w in self._remote_workers}
        answered = {_actor_key(w) for w, _ in self.fetch(futures, timeout=timeout)}
        failed = []
        for w in list(futures.values()):
            if _actor_key(w) not in answered:
                failed.append(self.worker_index(w))
                self.handle_worker_failure(w, TimeoutError(f"no answer to a ping within {timeout:g} s"))
        return failed

    def recreate_failed_workers(self) -> list[int]:
        """RLlib 0.7-era name: pings every remote worker and replaces the dead ones (whatever the config says)."""
        saved = self._config
        self._config = {**saved, "recreate_failed_workers": True}
        try:
            return self.probe_unhealthy_workers()
        finally:
            self._config = saved

    @property
    def num_healthy_workers(self) -> int:
        return len(self._remote_workers)

    def check_healthy_workers(self) -> None:
        """Raises WorkerFailureError when remote workers died and none is left (``ignore_worker_failures``
        dropped them all): the local worker does not silently take over their sampling."""
        if self.num_failed and not self._remote_workers:
            raise WorkerFailureError(
                f"no healthy remote worker is left: {self.num_failed} died and 'ignore_worker_failures' dropped"
                " them. Set 'recreate_failed_workers': True to replace dead workers instead"
            )

    def _load_current_state(self, worker: Any) -> None:
        """A new worker gets the local worker's weights, global vars and filters before any work."""
        import ray

        local = self._local_worker
        worker.set_weights.remote(ray.put(local.get_weights()), dict(local.global_vars) or None)
        ray.get(worker.sync_filters.remote(ray.put(local.get_filters())))

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


class WorkerStartTimeout(RuntimeError):
    """Remote workers could not be placed within ``worker_start_timeout_s`` (e.g. every CPU is taken)."""


def _describe_available() -> str:
    """What the cluster has free of its totals, e.g. "0 of 3 CPU free" (GPUs only where it has some)."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    kinds = ["CPU"] + (["GPU"] if total.get("GPU") else [])
    return ", ".join(f"{free.get(k, 0):g} of {total.get(k, 0):g} {k}" for k in kinds) + " free"


def _describe_holders() -> str:
    """Who holds the cluster's CPUs: the live actors by class and job (the job's driver pid), read from the GCS
    (Ray's state API needs the dashboard, which clusters started with --include-dashboard=false lack)."""
    try:
        import ray
        from ray._private import state

        drivers = {j["JobID"]: j for j in state.jobs()}
        this_job = ray.get_runtime_context().get_job_id()
        counts: dict[tuple[str, str], int] = {}
        for a in state.actors().values():
            if a.get("State") != "ALIVE":
                continue
            job = a.get("JobID", "")
            if job == this_job:
                owner = "this job"
            elif job in drivers:
                owner = f"job {job}, driver pid {drivers[job]['DriverPid']} on {drivers[job]['DriverIPAddress']}"
            else:
                owner = f"job {job}"
            key = (a.get("ActorClassName") or "actor", owner)
            counts[key] = counts.get(key, 0) + 1
    except Exception:  # noqa: BLE001 - private GCS accessors: fall back to a pointer
        return "see `ray status` for who holds them"
    held = ", ".join(f"{name} x {n} ({owner})" for (name, owner), n in sorted(counts.items()))
    return f"held by live actors: {held}" if held else "no live actors hold them: other jobs' tasks do"


class WorkerFailureError(RuntimeError):
    """A remote worker died and neither ``ignore_worker_failures`` nor ``recreate_failed_workers`` is set."""


def _actor_key(worker: Any) -> Any:
    actor_id = getattr(worker, "_actor_id", None)
    return actor_id.hex() if actor_id is not None else id(worker)


def _first_line(error: BaseException | None) -> str:
    if error is None:
        return "no answer"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": .")
