"""``build_trainer``: an algorithm's trainer is its default config, its policy and a few hooks.

    PGTrainer = build_trainer(name="PG", default_config=DEFAULT_CONFIG, default_policy=PGTorchPolicy)

The iteration it builds (one loop for every algorithm built here) is: ``optimizer.step()`` until
``min_iter_time_s`` and ``timesteps_per_iteration`` are met (filters synchronised after each step), then the
episode metrics and learner stats as the result. With ``asynchronous=True`` (IMPALA, Ape-X DQN, Ape-X DDPG:
optimizers that sample and learn in the background) two things differ:

- filters are synchronised once per iteration (and only with a real observation filter), not after every
  optimizer step: a filter round trip queues behind the workers' in-flight samples and would drain the
  asynchronous pipeline each step;
- ``timesteps_this_iter`` is the optimizer's ``num_steps_sampled`` minus the trainer's ``timesteps_total``, not
  the growth since the iteration began, so that ``timesteps_total`` stays equal to ``num_steps_sampled`` even
  after an iteration that raised (e.g. a WorkerFailureError) while batches had already arrived.

Agent steps (every policy's rows: a multi-agent env step of N acting agents is N of them; single-agent, the env
steps): ``agent_steps_total`` is the optimizer's ``num_agent_steps_sampled`` (0 for an optimizer without it) and
``agent_steps_this_iter`` its growth during the iteration. Learner stats are per policy id:
``result["info"]["learner"][policy_id]`` (single-agent: ``"default_policy"``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import sys
import time
from typing import Any, Callable

from relayrl.agents.trainer import Trainer, worker_policies
from relayrl.evaluation.worker_set import WorkerSet
from relayrl.optimizers.rollout import synchronize_filters
from relayrl.optimizers.sync_samples import SyncSamplesOptimizer

# A policy optimizer spec: ``spec(config) -> (optimizer class, keyword arguments the trainer sets from its config)``.
# The optimizer is built as ``cls(workers, **kwargs, **config["optimizer"])``, and config["optimizer"] may hold
# any other keyword of ``cls`` (checked when the trainer is built, see check_optimizer_options).
PolicyOptimizerSpec = Callable[[dict], tuple[type, dict]]


def default_policy_optimizer(config: dict) -> tuple[type, dict]:
    return SyncSamplesOptimizer, {"train_batch_size": config["train_batch_size"], "seed": config["seed"]}


def default_make_policy_optimizer(workers: WorkerSet, config: dict):
    return make_from_spec(default_policy_optimizer, workers, config)


def make_from_spec(spec: PolicyOptimizerSpec, workers: WorkerSet, config: dict):
    cls, kwargs = spec(config)
    return cls(workers, **kwargs, **config["optimizer"])


def optimizer_options(optimizer_cls: type) -> list[str]:
    """The keyword options of an optimizer's constructor: read from its signature (``**kwargs`` takes none),
    plus the fields of its ``options_type`` dataclass when it declares one (the replay optimizers' ReplayOptions)."""
    params = inspect.signature(optimizer_cls.__init__).parameters.values()
    names = [
        p.name
        for p in params
        if p.name not in ("self", "workers", "remote_workers") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    options_type = getattr(optimizer_cls, "options_type", None)
    if options_type is not None:
        names += [f.name for f in dataclasses.fields(options_type) if f.name not in names]
    return names


def check_optimizer_options(name: str, config: dict, spec: PolicyOptimizerSpec) -> None:
    """Raises ValueError naming the algorithm and the key for an ``optimizer`` sub-key that the algorithm's policy
    optimizer does not take (with the closest option it does take), or one the trainer sets itself."""
    cls, set_by_trainer = spec(config)
    accepted = [k for k in optimizer_options(cls) if k not in set_by_trainer]
    for key in config["optimizer"]:
        if key in set_by_trainer:
            top = f"; set the top-level {key!r} instead" if key in config else ""
            raise ValueError(
                f"{name} config: 'optimizer.{key}' cannot be set: {name} passes {key} to {cls.__name__} itself{top}"
            )
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hint = f" (did you mean 'optimizer.{close[0]}'?)" if close else ""
            takes = f"takes {', '.join(accepted)}" if accepted else "takes no options here"
            raise ValueError(f"{name} config: unknown key 'optimizer.{key}'{hint}; {name}'s {cls.__name__} {takes}")


def build_trainer(
    name: str,
    default_policy: Any,
    default_config: dict,
    make_policy_optimizer: Callable[[WorkerSet, dict], Any] | None = None,
    policy_optimizer: PolicyOptimizerSpec | None = None,
    validate_config: Callable[[dict], None] | None = None,
    get_policy_class: Callable[[dict], Any] | None = None,
    before_init: Callable | None = None,
    after_init: Callable | None = None,
    before_train_step: Callable | None = None,
    after_optimizer_step: Callable | None = None,
    after_train_result: Callable | None = None,
    mixins: list[type] | None = None,
    asynchronous: bool = False,
) -> type[Trainer]:
    """Returns a Trainer subclass.

    - ``policy_optimizer(config) -> (optimizer class, kwargs the trainer sets)``, built with ``config["optimizer"]``
      as further keywords, which are checked against the class's signature (default: SyncSamplesOptimizer with
      ``train_batch_size``); or ``make_policy_optimizer(workers, config)`` for full control (unchecked options);
    - ``validate_config(config)`` raises ValueError for impossible values of the algorithm's keys (it gets the
      merged config: read ``config[key]``);
    - ``get_policy_class(config)`` picks the policy from the config (default: ``default_policy``);
    - ``before_init(trainer)``, ``after_init(trainer)``;
    - ``before_train_step(trainer)``, ``after_optimizer_step(trainer, fetches)``,
      ``after_train_result(trainer, result)``;
    - ``asynchronous``: the optimizer samples and learns in the background; the iteration synchronises filters
      once and counts timesteps from ``num_steps_sampled`` (see the module docstring).
    """

    def _init(self, config: dict, env_creator: Any) -> None:
        if before_init is not None:
            before_init(self)
        self._policy = get_policy_class(config) if get_policy_class is not None else default_policy
        policies = worker_policies(config, self._policy)  # multiagent.policies, or the one policy class
        self.workers = WorkerSet(env_creator, policies, config, num_workers=config["num_workers"])
        if make_policy_optimizer is not None:
            self.optimizer = make_policy_optimizer(self.workers, config)
        else:
            self.optimizer = make_from_spec(spec, self.workers, config)
        if after_init is not None:
            after_init(self)

    def _train(self) -> dict:
        if before_train_step is not None:
            before_train_step(self)
        start = time.time()
        config, optimizer = self.config, self.optimizer
        prev_steps = optimizer.num_steps_sampled
        prev_agent_steps = _agent_steps(optimizer)
        # An asynchronous step may return before anything arrived: the iteration needs at least one step sampled.
        min_steps = max(1, config["timesteps_per_iteration"]) if asynchronous else config["timesteps_per_iteration"]
        while True:
            fetches = optimizer.step()
            if config["synchronize_filters"] and not asynchronous:
                synchronize_filters(self.workers)
            self.workers.local_worker().set_global_vars({"timestep": optimizer.num_steps_sampled})
            if after_optimizer_step is not None:
                after_optimizer_step(self, fetches)
            if (
                time.time() - start >= config["min_iter_time_s"]
                and optimizer.num_steps_sampled - prev_steps >= min_steps
            ):
                break
        if asynchronous and config["synchronize_filters"] and config["observation_filter"] != "NoFilter":
            synchronize_filters(self.workers)
        result = self.collect_metrics()
        result["timesteps_this_iter"] = optimizer.num_steps_sampled - (
            self._timesteps_total if asynchronous else prev_steps
        )
        result["agent_steps_total"] = _agent_steps(optimizer)
        result["agent_steps_this_iter"] = result["agent_steps_total"] - prev_agent_steps
        stats = optimizer.stats()
        result["info"] = {
            "learner": stats.pop("learner", fetches),
            "num_steps_sampled": optimizer.num_steps_sampled,
            "num_steps_trained": optimizer.num_steps_trained,
            **stats,
        }
        if after_train_result is not None:
            after_train_result(self, result)
        return result

    spec = policy_optimizer or default_policy_optimizer

    def _validate_config(config: dict) -> None:
        if validate_config is not None:
            validate_config(config)
        if make_policy_optimizer is None:
            check_optimizer_options(name, config, spec)

    attrs = {
        "__module__": sys._getframe(1).f_globals.get("__name__", __name__),
        "_name": name,
        "_default_config": default_config,
        "_policy": default_policy,
        "_init": _init,
        "_train": _train,
        "_validate_config": staticmethod(_validate_config),
        "__doc__": f"The {name} trainer (built by build_trainer).",
    }
    return type(name + "Trainer", (*(mixins or []), Trainer), attrs)


def _agent_steps(optimizer: Any) -> int:
    return int(getattr(optimizer, "num_agent_steps_sampled", 0) or 0)
