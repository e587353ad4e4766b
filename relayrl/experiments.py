"""Experiments as in RLlib's tuned examples, checked before Ray starts, then run with ``tune.run_experiments``.

    experiments = load_experiment_file("tuned_examples/ppo/cartpole-ppo.yaml")   # {name: spec}
    validate_experiments(experiments)            # UserError naming the experiment and key; no Ray yet
    trials = run_experiments(experiments, ray_num_cpus=2)

A spec is ``{run, env, stop, config}`` plus Tune options (``num_samples``, ``checkpoint_freq``,
``checkpoint_at_end``, ``local_dir``/``storage_path``, ``restore``) and an optional ``expected`` (a tuned
example's target, read by ``relayrl/tuned_examples/regression.py`` and stripped before Tune sees the spec).
Each trial writes params.json, result.json, progress.csv and a TensorBoard event file under
``<local_dir>/<experiment>/<trial>/`` (default ``~/ray_results``).
"""

from __future__ import annotations

import copy
import difflib
import itertools
import logging
import math
import os
import sys
from typing import Any

DEFAULT_LOCAL_DIR = "~/ray_results"
SPEC_KEYS = {
    "run": "trainer name (PPO, PG, ...)",
    "env": "environment name",
    "stop": "stopping criteria, e.g. {episode_reward_mean: 475}",
    "config": "trainer config",
    "num_samples": "repetitions of each grid point",
    "checkpoint_freq": "iterations between checkpoints",
    "checkpoint_at_end": "checkpoint when the trial ends",
    "keep_checkpoints_num": "checkpoints to keep",
    "local_dir": "results directory (default ~/ray_results)",
    "storage_path": "same as local_dir",
    "restore": "checkpoint to start from",
    "max_failures": "trial retries",
    "time_budget_s": "wall-clock budget of the experiment",
    "expected": "a tuned example's expected result (not passed to Tune)",
}


# The keys of a training result (Trainer.train(), the episode summary of relayrl/evaluation/metrics.py) and the
# ones Tune adds. A stop criterion on any other key is never met: the trial would train until killed.
RESULT_KEYS = (
    "episode_reward_mean",
    "episode_reward_min",
    "episode_reward_max",
    "episode_len_mean",
    "episodes_this_iter",
    "episodes_total",
    "timesteps_total",
    "timesteps_this_iter",
    "agent_steps_total",
    "agent_steps_this_iter",
    "time_this_iter_s",
    "time_total_s",
    "training_iteration",
    "num_steps_per_s",
    "num_healthy_workers",
    "num_recreated_workers",
    "done",
    # added by Tune
    "time_since_restore",
    "timesteps_since_restore",
    "iterations_since_restore",
    "timestamp",
)
# Result entries that are dicts, which Tune flattens to "group/key" (e.g. "info/num_steps_sampled"): what they
# hold depends on the algorithm, its policies and the user's callbacks, so any key below them is accepted.
RESULT_GROUPS = (
    "info",
    "custom_metrics",
    "policy_reward_mean",
    "policy_reward_min",
    "policy_reward_max",
    "sampler_perf",
    "perf",
    "config",
)
# "evaluation/<key>": the episode summary of the evaluation episodes (only with evaluation_interval set).
EVALUATION_KEYS = (
    "episode_reward_mean",
    "episode_reward_min",
    "episode_reward_max",
    "episode_len_mean",
    "episodes_this_iter",
    "episodes_total",
)


class UserError(Exception):
    """A mistake in the user's input: reported as one line plus a hint, without a traceback."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


class PlacementTimeout(RuntimeError):
    """Every trial has waited ``worker_start_timeout_s`` for resources that a busy cluster does not free."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


# --- loading ---------------------------------------------------------------------------------------------
def load_experiment_file(path: str) -> dict[str, dict]:
    import yaml

    path = os.path.expanduser(path)
    packaged = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned_examples", path)
    if not os.path.isfile(path) and os.path.isfile(packaged):  # -f ppo/cartpole-ppo.yaml: a packaged example
        path = packaged
    if not os.path.isfile(path):
        raise UserError(
            f"experiment file {path} does not exist",
            "pass -f with the path of a YAML file, or a packaged tuned example such as"
            " ppo/cartpole-ppo.yaml (see relayrl/tuned_examples/)",
        )
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(
            f"cannot parse YAML file {path}{where}: {problem}",
            "the format is `name: {run: PPO, env: CartPole-v1, stop: {...}, config: {...}}`",
        ) from e
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(
            f"{path} holds no experiments",
            "the format is `name: {run: PPO, env: CartPole-v1, stop: {...}, config: {...}}`",
        )
    return data


def normalize_experiments(experiments: dict[str, dict], local_dir: str | None = None) -> dict[str, dict]:
    """Specs Tune accepts: checkpoint options in ``checkpoint_config``, paths absolute, ``expected`` removed."""
    out = {}
    for name, spec in experiments.items():
        spec = copy.deepcopy(spec)
        spec.pop("expected", None)
        ckpt = {}
        if spec.get("checkpoint_freq"):
            ckpt["checkpoint_frequency"] = int(spec.pop("checkpoint_freq"))
        if spec.get("checkpoint_at_end"):
            ckpt["checkpoint_at_end"] = bool(spec.pop("checkpoint_at_end"))
        if spec.get("keep_checkpoints_num"):
            ckpt["num_to_keep"] = int(spec.pop("keep_checkpoints_num"))
        for key in ("checkpoint_freq", "checkpoint_at_end", "keep_checkpoints_num"):
            spec.pop(key, None)
        if ckpt:
            spec["checkpoint_config"] = ckpt
        storage = spec.pop("local_dir", None) or spec.pop("storage_path", None) or local_dir or DEFAULT_LOCAL_DIR
        spec["storage_path"] = os.path.abspath(os.path.expanduser(storage))
        if spec.get("restore"):
            spec["restore"] = os.path.abspath(os.path.expanduser(spec["restore"]))
        out[name] = spec
    return out


# --- validation (before Ray starts) ------------------------------------------------------------------------
def validate_experiments(experiments: dict[str, dict]) -> int:
    """Raises UserError for the first mistake; returns the CPUs the largest trial needs."""
    from relayrl.agents.registry import get_trainer_class
    from relayrl.config import validate_config
    from relayrl.env.registry import get_env_creator

    for name, spec in experiments.items():
        where = f"experiment {name!r}"
        for key in spec:
            if key not in SPEC_KEYS:
                raise UserError(
                    f"{where}: unknown key {key!r}{_did_you_mean(key, SPEC_KEYS)}",
                    f"an experiment has the keys {', '.join(SPEC_KEYS)}",
                )
        if "run" not in spec:
            raise UserError(f"{where} names no algorithm", "add `run: PPO` (or pass --run)")
        try:
            trainer_cls = get_trainer_class(spec["run"])
        except ValueError as e:
            raise UserError(f"{where}: {e}", "pick one with --run (names are case-sensitive)") from e
        config = spec.get("config") or {}
        if not isinstance(config, dict):
            raise UserError(f"{where}: config must be a mapping, got {config!r}", "e.g. --config '{\"lr\": 0.001}'")
        env = spec.get("env", config.get("env"))
        if env is None:
            raise UserError(f"{where} names no environment", "pass --env CartPole-v1 (or `env:` in the YAML)")
        try:
            get_env_creator(env)
        except ValueError as e:
            atari = isinstance(env, str) and ("NoFrameskip" in env or env.startswith("ALE/"))
            hint = (
                "Atari needs `pip install 'relayrl[atari]'` (ale-py)"
                if atari
                else "use a Gymnasium id such as CartPole-v1 or Pendulum-v1"
            )
            raise UserError(f"{where}: {e}", hint) from e
        stop = spec.get("stop") or {}
        if not isinstance(stop, dict) or not all(isinstance(v, (int, float)) for v in stop.values()):
            raise UserError(
                f"{where}: stop must map result keys to numbers, got {stop!r}",
                'e.g. --stop \'{"episode_reward_mean": 475, "timesteps_total": 100000}\'',
            )
        validate_stop(where, stop, trainer_cls._default_config, config)
        for key, minimum in (("num_samples", 1), ("checkpoint_freq", 0), ("keep_checkpoints_num", 1)):
            value = spec.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
                raise UserError(
                    f"{where}: {key} must be an integer >= {minimum}, got {value!r}", f"e.g. {key}: {max(minimum, 1)}"
                )
        for variant in grid_variants(config):
            variant.pop("env", None)
            try:
                validate_config(variant, trainer_cls._default_config, spec["run"], trainer_cls._validate_config)
            except ValueError as e:
                raise UserError(
                    f"{where}: {e}", f"see the documented keys of relayrl {spec['run']} DEFAULT_CONFIG"
                ) from e
        if spec.get("restore"):
            _check_restore(where, spec["restore"], spec["run"])
    return resources_needed(experiments)[0]


def validate_stop(where: str, stop: dict, defaults: dict, config: dict) -> None:
    """Raises UserError for a stop criterion that no result of this trainer reports (with the closest key):
    Tune would silently never stop on it. Accepted: RESULT_KEYS, any key under RESULT_GROUPS (``info/...``,
    ``custom_metrics/...``), ``evaluation/<episode key>`` when evaluation is on, and any key at all when an
    ``on_train_result`` callback (which may add keys) is set."""
    from relayrl.config import merge_dicts

    variants = [merge_dicts(defaults, v) for v in grid_variants(config)]
    if any((v.get("callbacks") or {}).get("on_train_result") for v in variants):
        return
    known = (
        list(RESULT_KEYS)
        + [f"evaluation/{k}" for k in EVALUATION_KEYS]
        + ["info/num_steps_sampled", "info/num_steps_trained"]
    )
    for key in stop:
        group, _, rest = str(key).partition("/")
        if group in RESULT_GROUPS and rest:
            continue
        if group == "evaluation" and (rest in EVALUATION_KEYS or rest.split("/", 1)[0] in RESULT_GROUPS):
            if not all(v.get("evaluation_interval") for v in variants):
                raise UserError(
                    f"{where}: stop criterion {key!r} is only reported when evaluation runs, and"
                    " evaluation_interval is not set",
                    'add "evaluation_interval": 1 to the config, or stop on episode_reward_mean',
                )
            continue
        if key in RESULT_KEYS:
            continue
        if key in RESULT_GROUPS or key == "evaluation":
            raise UserError(
                f"{where}: stop criterion {key!r} is a group of results, not a number",
                f"stop on one of its entries, e.g. {key}/...",
            )
        raise UserError(
            f"{where}: unknown stop criterion {key!r}{_did_you_mean(key, known)}: no result reports"
            " it, so the trial would never stop",
            "stop on a result key such as episode_reward_mean, timesteps_total, training_iteration,"
            " time_total_s, or one under info/, evaluation/, custom_metrics/, policy_reward_mean/",
        )


def resources_needed(experiments: dict[str, dict]) -> tuple[int, float]:
    """CPUs and GPUs the largest trial of validated experiments asks for: CPUs ``num_cpus_for_driver + num_workers
    * num_cpus_per_worker`` (rounded up), GPUs ``num_gpus + num_workers * num_gpus_per_worker``."""
    from relayrl.agents.registry import get_trainer_class
    from relayrl.config import merge_dicts, translate_legacy_keys

    cpus, gpus = 1, 0.0
    for spec in experiments.values():
        defaults = get_trainer_class(spec["run"])._default_config
        for variant in grid_variants(spec.get("config") or {}):
            variant.pop("env", None)
            full = merge_dicts(defaults, translate_legacy_keys(variant, defaults))
            workers = full.get("num_workers") or 0
            need = (full.get("num_cpus_for_driver") or 1) + workers * (full.get("num_cpus_per_worker") or 0)
            cpus = max(cpus, math.ceil(need))
            gpus = max(gpus, float(full.get("num_gpus") or 0) + workers * float(full.get("num_gpus_per_worker") or 0))
    return cpus, gpus


def grid_variants(config: dict) -> list[dict]:
    """Every combination of the config's ``grid_search`` values (a config without one is its only variant)."""
    paths: list[tuple[tuple, list]] = []

    def find(node: Any, path: tuple) -> None:
        if isinstance(node, dict):
            if set(node) == {"grid_search"}:
                paths.append((path, list(node["grid_search"])))
                return
            for k, v in node.items():
                find(v, path + (k,))

    find(config, ())
    variants = []
    for values in itertools.product(*[vals for _, vals in paths]) if paths else [()]:
        variant = copy.deepcopy(config)
        for (path, _), value in zip(paths, values):
            node = variant
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
        variants.append(variant)
    return variants


def _check_restore(where: str, path: str, run: str) -> None:
    from relayrl.agents.checkpoint import CheckpointError, read_manifest

    try:
        manifest = read_manifest(path)
    except CheckpointError as e:
        raise UserError(f"{where}: --restore {e}", "pass a checkpoint directory printed by `relayrl train`") from e
    if manifest["trainer"] != run:
        raise UserError(
            f"{where}: checkpoint {path} was written by {manifest['trainer']}, not {run}",
            f"use --run {manifest['trainer']}",
        )


def _did_you_mean(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- running -----------------------------------------------------------------------------------------------
def start_ray(
    address: str | None = None, num_cpus: int | None = None, verbose: int = 0, need: int = 1, need_gpus: float = 0
) -> None:
    """Starts Ray (or connects to ``address``) unless it already runs; a cluster with fewer than ``need`` CPUs or
    ``need_gpus`` GPUs, the most one trial asks for, is an error here rather than a trial that waits forever.
    A cluster that has them but not free (other jobs hold them) gets a warning: ``run_experiments`` then fails
    the run if no trial could start within ``worker_start_timeout_s``."""
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = dict(
            include_dashboard=False,
            log_to_driver=verbose > 0,
            logging_level=logging.INFO if verbose > 1 else logging.ERROR,
        )
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    resources = ray.cluster_resources()
    have = resources.get("CPU", 0)
    if have < need:
        raise UserError(
            f"a trial needs {need} CPUs (num_cpus_for_driver + num_workers * num_cpus_per_worker) but"
            f" the Ray cluster has {have:g}",
            "lower num_workers, or give Ray more CPUs (--ray-num-cpus, or `ray start --num-cpus`)",
        )
    have_gpus = resources.get("GPU", 0)
    if have_gpus < need_gpus:
        raise UserError(
            f"a trial asks for {need_gpus:g} GPUs (num_gpus + num_workers * num_gpus_per_worker) but the"
            f" Ray cluster has {have_gpus:g}",
            "set num_gpus: 0 (and num_gpus_per_worker: 0) to train on CPU",
        )
    free = ray.available_resources()
    if free.get("CPU", 0) < need or free.get("GPU", 0) < need_gpus:
        from relayrl.evaluation.worker_set import _describe_available, _describe_holders

        print(
            f"relayrl: warning: a trial needs {need} CPUs{f' and {need_gpus:g} GPUs' if need_gpus else ''} and"
            f" the Ray cluster has {_describe_available()} ({_describe_holders()}); waiting for them at most"
            " worker_start_timeout_s",
            file=sys.stderr,
            flush=True,
        )


def run_experiments(experiments: dict[str, dict], verbose: int = 0, quiet: bool = False) -> list:
    """Runs normalized, validated experiments through Tune; returns Tune's trials (failed ones included)."""
    from ray import tune

    import relayrl  # noqa: F401  (installs the hook that registers our trainables when ray.tune is imported)
    from relayrl.agents.registry import available_algorithms, get_trainer_class
    from relayrl.agents.tune_adapter import register_all

    register_all()
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new engine prints its tables even when silent
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        logging.getLogger("ray.train").setLevel(logging.CRITICAL)
    for name, spec in experiments.items():  # Python callers skip validate_experiments; a dict stop is checked
        stop, run = spec.get("stop"), spec.get("run")
        if isinstance(stop, dict) and isinstance(run, str) and run in available_algorithms():
            validate_stop(
                f"experiment {name!r}", stop, get_trainer_class(run)._default_config, spec.get("config") or {}
            )
    from relayrl.tune_callbacks import _ParamsJsonLogger, _PendingWatchdog, _ProgressLine

    callbacks = [_ParamsJsonLogger(), _PendingWatchdog()] + ([] if quiet else [_ProgressLine()])
    # One tune.run per experiment (concurrent=False): Ray 2.60 run concurrently writes every trial of the later
    # experiments nowhere on disk (their storage context is the first experiment's). Trials of one experiment
    # (a grid search, num_samples) still run in parallel.
    return tune.run_experiments(
        experiments, verbose=min(verbose, 2), raise_on_failed_trial=False, callbacks=callbacks, concurrent=False
    )


def trial_error(trial: Any) -> str:
    """The last line of a failed trial's traceback (the exception and its message)."""
    if getattr(trial, "error", None):  # a trial run in this process (relayrl.local_run) keeps its own
        return trial.error
    text = None
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001 - the error file may be gone; fall back to the status
        text = None
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~")) and ":" in ln:
            return ln
    return lines[-1] if lines else f"status {trial.status}"
