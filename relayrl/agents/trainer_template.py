"""``build_trainer``: an algorithm's trainer is its default config, its policy and a few hooks.

    PGTrainer = build_trainer(name="PG", default_config=DEFAULT_CONFIG, default_policy=PGTorchPolicy)

The iteration it builds is: ``optimizer.step()`` until ``min_iter_time_s`` and ``timesteps_per_iteration`` are
met (filters synchronised after each step), then the episode metrics and learner stats as the result.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from relayrl.agents.trainer import Trainer
from relayrl.evaluation.worker_set import WorkerSet
from relayrl.optimizers.rollout import synchronize_filters
from relayrl.optimizers.sync_samples import SyncSamplesOptimizer


def default_make_policy_optimizer(workers: WorkerSet, config: dict):
    return SyncSamplesOptimizer(workers, train_batch_size=config["train_batch_size"], **config["optimizer"])


def build_trainer(
    name: str,
    default_policy: Any,
    default_config: dict,
    make_policy_optimizer: Callable[[WorkerSet, dict], Any] | None = None,
    validate_config: Callable[[dict], None] | None = None,
    get_policy_class: Callable[[dict], Any] | None = None,
    before_init: Callable | None = None,
    after_init: Callable | None = None,
    before_train_step: Callable | None = None,
    after_optimizer_step: Callable | None = None,
    after_train_result: Callable | None = None,
    mixins: list[type] | None = None,
) -> type[Trainer]:
    """Returns a Trainer subclass.

    - ``make_policy_optimizer(workers, config)`` (default: SyncSamplesOptimizer);
    - ``validate_config(config)`` raises ValueError for impossible values of the algorithm's keys;
    - ``get_policy_class(config)`` picks the policy from the config (default: ``default_policy``);
    - ``before_init(trainer)``, ``after_init(trainer)``;
    - ``before_train_step(trainer)``, ``after_optimizer_step(trainer, fetches)``,
      ``after_train_result(trainer, result)``.
    """

    def _init(self, config: dict, env_creator: Any) -> None:
        if before_init is not None:
            before_init(self)
        self._policy = get_policy_class(config) if get_policy_class is not None else default_policy
        policies = _multiagent_policies(config, self._policy)
        self.workers = WorkerSet(env_creator, policies or self._policy, config, num_workers=config["num_workers"])
        self.optimizer = (make_policy_optimizer or default_make_policy_optimizer)(self.workers, config)
        if after_init is not None:
            after_init(self)

    def _train(self) -> dict:
        if before_train_step is not None:
            before_train_step(self)
        start = time.time()
        prev_steps = self.optimizer.num_steps_sampled
        while True:
            fetches = self.optimizer.step()
            if self.config["synchronize_filters"]:
                synchronize_filters(self.workers)
            global_vars = {"timestep": self.optimizer.num_steps_sampled}
            self.workers.local_worker().set_global_vars(global_vars)
            if after_optimizer_step is not None:
                after_optimizer_step(self, fetches)
            if (
                time.time() - start >= self.config["min_iter_time_s"]
                and self.optimizer.num_steps_sampled - prev_steps >= self.config["timesteps_per_iteration"]
            ):
                break
        result = self.collect_metrics()
        result["timesteps_this_iter"] = self.optimizer.num_steps_sampled - prev_steps
        stats = self.optimizer.stats()
        result["info"] = {
            "learner": stats.pop("learner", fetches),
            "num_steps_sampled": self.optimizer.num_steps_sampled,
            "num_steps_trained": self.optimizer.num_steps_trained,
            **stats,
        }
        if after_train_result is not None:
            after_train_result(self, result)
        return result

    attrs = {
        "__module__": sys._getframe(1).f_globals.get("__name__", __name__),
        "_name": name,
        "_default_config": default_config,
        "_policy": default_policy,
        "_init": _init,
        "_train": _train,
        "_validate_config": staticmethod(validate_config or (lambda config: None)),
        "__doc__": f"The {name} trainer (built by build_trainer).",
    }
    return type(name + "Trainer", (*(mixins or []), Trainer), attrs)


def _multiagent_policies(config: dict, default_policy: Any) -> dict | None:
    specs = (config.get("multiagent") or {}).get("policies") or {}
    if not specs:
        return None
    return {pid: (cls or default_policy, obs, act, conf) for pid, (cls, obs, act, conf) in specs.items()}
