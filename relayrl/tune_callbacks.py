"""Ray Tune callbacks of ``relayrl train`` (params.json without pickle, throttled progress lines, a watchdog for
trials that cannot be placed) and the progress printer that the in-process runner shares with them.

Built lazily (``_ParamsJsonLogger()`` & co.) so that importing this module does not import Tune.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from relayrl.experiments import PlacementTimeout

PROGRESS_INTERVAL_S = 2.0


class ProgressPrinter:
    """Prints a trial's progress line (iteration, timesteps, mean reward, steps/s, elapsed) at most once per
    ``interval`` seconds, and its last result when it ends (if that one was not printed)."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_S):
        self.interval = interval
        self._start = time.time()
        self._printed: dict[Any, tuple[float, int]] = {}  # trial -> (time, iteration) of its last line

    def result(self, key: Any, name: str, result: dict) -> None:
        when, _ = self._printed.get(key, (-math.inf, -1))
        if time.time() - when >= self.interval:
            self._print(key, name, result)

    def last(self, key: Any, name: str, result: dict) -> None:
        if result and self._printed.get(key, (0, -1))[1] != result.get("training_iteration", 0):
            self._print(key, name, result)

    def _print(self, key: Any, name: str, result: dict) -> None:
        reward = result.get("episode_reward_mean")
        reward = "    nan" if reward is None or reward != reward else f"{reward:8.2f}"
        it, ts = result.get("training_iteration", 0), result.get("timesteps_total", 0)
        sps = result.get("num_steps_per_s", 0.0)
        print(
            f"{name} iter {it:4d}  ts {ts:8d}  reward {reward}  {sps:7.0f} steps/s  {time.time() - self._start:6.1f}s",
            flush=True,
        )
        self._printed[key] = (time.time(), it)


def _make_callbacks():
    from ray.tune import Callback
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.logger.json import EXPR_PARAM_FILE, SafeFallbackEncoder

    class ParamsJsonLogger(JsonLoggerCallback):
        """Tune's JSON logger without its params.pkl: relayrl writes no pickle."""

        def update_config(self, trial, config):
            import json
            from pathlib import Path

            self._trial_configs[trial] = config
            with Path(trial.local_path, EXPR_PARAM_FILE).open("w") as f:
                json.dump(config, f, indent=2, sort_keys=True, cls=SafeFallbackEncoder)

    class ProgressLine(Callback):
        """Progress lines (ProgressPrinter): at most one per PROGRESS_INTERVAL_S per trial, plus each trial's last;
        with several trials each line names its trial by its short tag (index and grid values)."""

        def __init__(self):
            self._printer = ProgressPrinter()

        def _name(self, trials, trial) -> str:
            return str(trial) if len(trials) <= 1 else f"[{trial.experiment_tag}]"

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._printer.result(trial.trial_id, self._name(trials, trial), result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._printer.last(trial.trial_id, self._name(trials, trial), trial.last_result or {})

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"{trial} failed", file=sys.stderr, flush=True)

    class PendingWatchdog(Callback):
        """Fails the run (PlacementTimeout) when its trials have waited longer than their ``worker_start_timeout_s``
        for resources: Tune would keep them PENDING forever on a cluster whose CPUs other jobs hold. Waiting means
        a trial is PENDING, none RUNNING (else the pending ones wait for this run's own trials, which is normal)
        and no placement group of this job is ready (else a trial got its resources and its actor is starting)."""

        def __init__(self):
            self._since: float | None = None
            self._checked = 0.0

        def on_step_begin(self, iteration, trials, **info):
            pending = [t for t in trials if t.status == "PENDING"]
            if not pending or any(t.status == "RUNNING" for t in trials):
                self._since = None
                return
            now = time.monotonic()
            if now - self._checked < 1.0:
                return
            self._checked = now
            if _has_ready_placement_group():
                self._since = None
                return
            if self._since is None:
                self._since = now
                return
            timeout = min(_start_timeout(t) for t in pending)
            if now - self._since > timeout:
                raise PlacementTimeout(
                    _placement_message(pending[0], timeout, len(pending)),
                    "free the cluster's CPUs, lower num_workers, or raise worker_start_timeout_s",
                )

    return ParamsJsonLogger, ProgressLine, PendingWatchdog


def _start_timeout(trial: Any) -> float:
    from relayrl.config import COMMON_CONFIG

    value = (trial.config or {}).get("worker_start_timeout_s")
    return float(value if value is not None else COMMON_CONFIG["worker_start_timeout_s"])


def _has_ready_placement_group() -> bool:
    """Whether this job (this driver: Tune creates a placement group per trial) has a placement group whose
    resources are reserved. A placement group id ends with the id of the job that created it."""
    import ray
    from ray.util import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    return any(pg_id.endswith(job) and pg.get("state") == "CREATED" for pg_id, pg in placement_group_table().items())


def _placement_message(trial: Any, timeout: float, num_pending: int) -> str:
    from relayrl.evaluation.worker_set import _describe_available, _describe_holders

    need = trial.placement_group_factory.required_resources
    need_text = ", ".join(f"{v:g} {k}" for k, v in sorted(need.items()) if v)
    workers = len(trial.placement_group_factory.bundles) - 1
    others = f" (and {num_pending - 1} more trials)" if num_pending > 1 else ""
    return (
        f"trial {trial}{others} could not start within worker_start_timeout_s={timeout:g} s: it needs {need_text}"
        f" (the driver and {workers} workers) and the Ray cluster has {_describe_available()}"
        f" ({_describe_holders()})"
    )


def _ParamsJsonLogger():  # noqa: N802 - built lazily so that importing this module does not import Tune
    return _make_callbacks()[0]()


def _PendingWatchdog():  # noqa: N802
    return _make_callbacks()[2]()


def _ProgressLine():  # noqa: N802
    return _make_callbacks()[1]()
