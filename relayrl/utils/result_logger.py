"""Per-iteration result files for a trainer used from Python: the same files a Tune trial writes.

    trainer = PPOTrainer(env="CartPole-v1", config={...}, logdir="runs/ppo")
    trainer.train()     # appends to runs/ppo/result.json and progress.csv, writes TensorBoard events there

``params.json`` holds the config (callables by name), ``result.json`` one JSON object per iteration,
``progress.csv`` the flattened numeric results, and the TensorBoard event file the scalars under
``ray/tune/<key>`` (Tune's tag names, so dashboards built on Tune trials read these too), with
``timesteps_total`` as the step. Nested results are flattened with "/": per policy,
``info/learner/<policy_id>/policy_loss`` and ``policy_reward_mean/<policy_id>``. A column that first appears after
the first iteration (a policy whose agents had not yet finished an episode, or learned, by then) is added to
``progress.csv``, rewritten once with the wider header (earlier rows leave it empty); Tune's CSV logger keeps the
first iteration's columns.
"""

from __future__ import annotations

import csv
import json
import math
import os
from numbers import Number
from typing import Any

_NOT_SCALARS = ("config", "pid", "timestamp", "time_total_s", "training_iteration")


def flatten(result: dict, prefix: str = "", sep: str = "/") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in result.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def to_json(value: Any) -> Any:
    """A JSON-safe copy: numpy scalars as numbers, arrays as lists, classes and functions as module:qualname."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "tolist"):
        return to_json(value.tolist())
    if callable(value):
        return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


class ResultLogger:
    """Writes ``params.json`` once, then ``result.json``, ``progress.csv`` and TensorBoard events per result.

    Args:
        logdir: the directory (created if missing).
        config: the trainer's config, stored in ``params.json``.
    """

    def __init__(self, logdir: str, config: dict):
        self.logdir = os.path.abspath(os.path.expanduser(logdir))
        os.makedirs(self.logdir, exist_ok=True)
        with open(os.path.join(self.logdir, "params.json"), "w") as f:
            json.dump(to_json(config), f, indent=2, sort_keys=True)
        self._json = open(os.path.join(self.logdir, "result.json"), "a")
        self._csv_file = open(os.path.join(self.logdir, "progress.csv"), "a", newline="")
        self._csv: csv.DictWriter | None = None
        self._tb = None

    def log(self, result: dict) -> None:
        self._json.write(json.dumps(to_json(result)) + "\n")
        self._json.flush()
        flat = flatten({k: v for k, v in result.items() if k != "config"})
        columns = [k for k, v in flat.items() if _is_scalar(v) or isinstance(v, str)]
        if self._csv is None:
            self._csv = csv.DictWriter(self._csv_file, columns, extrasaction="ignore")
            if self._csv_file.tell() == 0:
                self._csv.writeheader()
        elif any(k not in self._csv.fieldnames for k in columns):
            self._widen_csv(columns)
        self._csv.writerow({k: flat.get(k) for k in self._csv.fieldnames})
        self._csv_file.flush()
        self._tensorboard(result)

    def _widen_csv(self, columns: list[str]) -> None:
        """Rewrites progress.csv with the new columns appended to its header (the earlier rows leave them empty)."""
        fieldnames = list(self._csv.fieldnames) + [k for k in columns if k not in self._csv.fieldnames]
        path = self._csv_file.name
        self._csv_file.close()
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self._csv_file = open(path, "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames, extrasaction="ignore")

    def _tensorboard(self, result: dict) -> None:
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(self.logdir, flush_secs=30)
        step = result.get("timesteps_total") or result.get("training_iteration", 0)
        for key, value in flatten({k: v for k, v in result.items() if k not in _NOT_SCALARS}).items():
            if _is_scalar(value) and math.isfinite(float(value)):
                self._tb.add_scalar(f"ray/tune/{key}", float(value), global_step=step)

    def close(self) -> None:
        self._json.close()
        self._csv_file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, complex)
