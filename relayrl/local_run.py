"""One trial in this process, without Ray or Tune: what ``relayrl train`` does when nothing needs a cluster.

    trial = LocalTrial("cartpole-ppo", spec)    # a normalized spec: run, env, stop, config, checkpoint_config, ...
    trial.run(progress)                         # train() until a stop criterion holds; files as a Tune trial's

A single trial (no grid search, ``num_samples`` 1) with ``num_workers: 0`` needs neither: starting Ray, a trial
actor and Tune's per-result bookkeeping cost more than the training itself for small runs (the README's PPO
CartPole example: ~5 s of training, ~20 s through Tune on 2 cores; ``benchmarks/run.py`` measures both). The trial
directory is laid out as Tune's: ``<storage_path>/<experiment>/<Run>_<env>_<id>_00000/`` with params.json,
result.json, progress.csv, TensorBoard events and ``checkpoint_NNNNNN`` directories. ``relayrl train --tune``
forces Tune.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import time
import uuid
from datetime import datetime
from typing import Any, Callable

from relayrl.utils.result_logger import ResultLogger

SUPPORTED_SPEC_KEYS = {"run", "env", "stop", "config", "checkpoint_config", "storage_path", "restore", "num_samples"}


def runs_in_process(experiments: dict[str, dict]) -> bool:
    """True for one trial that needs no cluster: one experiment, no grid search, num_samples 1, num_workers 0,
    a dict of stop criteria and only the spec keys this runner implements."""
    if len(experiments) != 1:
        return False
    from relayrl.agents.registry import get_trainer_class
    from relayrl.config import merge_dicts
    from relayrl.experiments import grid_variants

    (spec,) = experiments.values()
    if set(spec) - SUPPORTED_SPEC_KEYS or (spec.get("num_samples") or 1) != 1:
        return False
    if not isinstance(spec.get("stop") or {}, dict):
        return False
    config = spec.get("config") or {}
    if len(grid_variants(config)) != 1 or _has_search_space(config):
        return False
    defaults = get_trainer_class(spec["run"])._default_config
    merged = merge_dicts(defaults, {k: v for k, v in config.items() if k != "env"})
    return not merged.get("num_workers")


def _has_search_space(node: Any) -> bool:
    """Tune's sampling domains (tune.uniform & co.) need Tune."""
    if isinstance(node, dict):
        return any(_has_search_space(v) for v in node.values())
    return type(node).__module__.startswith("ray.tune")


class _Checkpoint:
    def __init__(self, path: str):
        self.path = path


class LocalTrial:
    """A trial run in this process; it has the attributes ``relayrl train`` reads of a Tune trial (status,
    last_result, path, checkpoint, trainable_name, config)."""

    def __init__(self, experiment: str, spec: dict):
        self.spec = spec
        self.trainable_name = spec["run"]
        self.config = {**(spec.get("config") or {}), "env": spec["env"]}
        self.trial_id = uuid.uuid4().hex[:5]
        env_name = spec["env"] if isinstance(spec["env"], str) else getattr(spec["env"], "__name__", "env")
        env_name = re.sub(r"[^\w.-]+", "_", env_name)  # no "/" or ":" of "pettingzoo:classic/tictactoe-v3" in paths
        self.name = f"{self.trainable_name}_{env_name}_{self.trial_id}_00000"
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        self.path = os.path.join(spec["storage_path"], experiment, f"{self.name}_0_{stamp}")
        self.status = "PENDING"
        self.last_result: dict = {}
        self.checkpoint: _Checkpoint | None = None
        self.error: str | None = None
        ckpt = spec.get("checkpoint_config") or {}
        self._every = int(ckpt.get("checkpoint_frequency") or 0)
        self._at_end = bool(ckpt.get("checkpoint_at_end"))
        self._keep = int(ckpt.get("num_to_keep") or 0)
        self._kept: list[str] = []

    def __str__(self) -> str:
        return self.name

    def run(self, on_result: Callable[["LocalTrial", dict], None] | None = None) -> "LocalTrial":
        from relayrl.agents.registry import get_trainer_class

        trainer_cls = get_trainer_class(self.trainable_name)
        config = {k: v for k, v in (self.spec.get("config") or {}).items() if k != "env"}
        self.status = "RUNNING"
        start = time.time()
        trainer = trainer_cls(config=config, env=self.spec["env"], logger_creator=self.path)
        log = ResultLogger(self.path, trainer.config)
        try:
            if self.spec.get("restore"):
                trainer.restore(_relayrl_dir(self.spec["restore"]))
            stop = self.spec.get("stop") or {}
            while True:
                result = trainer.train()
                done = _should_stop(result, stop)
                result.update(self._tune_fields(start, result), done=done)
                log.log(result)
                self.last_result = result
                if self._every and trainer.iteration % self._every == 0:
                    self._save(trainer)
                if on_result is not None:
                    on_result(self, result)
                if done:
                    break
            if self._at_end and (not self.checkpoint or not self.checkpoint.path.endswith(f"{trainer.iteration:06d}")):
                self._save(trainer)
            self.status = "TERMINATED"
        except BaseException:
            self.status = "ERROR"
            raise
        finally:
            log.close()
            trainer.stop()
        return self

    def _tune_fields(self, start: float, result: dict) -> dict:
        """The fields Tune adds to each result, so that result.json reads the same either way."""
        return {
            "trial_id": self.trial_id,
            "experiment_tag": "0",
            "timestamp": int(time.time()),
            "time_since_restore": time.time() - start,
            "iterations_since_restore": result["training_iteration"],
            "node_ip": platform.node(),
            "config": self.config,
        }

    def _save(self, trainer: Any) -> None:
        path = trainer.save(self.path)
        self.checkpoint = _Checkpoint(path)
        self._kept.append(path)
        while self._keep and len(self._kept) > self._keep:
            shutil.rmtree(self._kept.pop(0), ignore_errors=True)


def _should_stop(result: dict, stop: dict) -> bool:
    """Tune's dict stopper: any criterion whose (possibly nested, '/'-separated) result value reaches it."""
    from relayrl.utils.result_logger import flatten

    flat = flatten(result)  # Tune's stop keys may name nested results: info/num_steps_trained
    for key, threshold in stop.items():
        value = flat.get(key, result.get(key))
        if isinstance(value, (int, float)) and value == value and value >= threshold:
            return True
    return False


def _relayrl_dir(path: str) -> str:
    """A Tune checkpoint keeps relayrl's directory under ``relayrl/``; a local one is relayrl's directly."""
    inner = os.path.join(path, "relayrl")
    return inner if os.path.isdir(inner) else path
