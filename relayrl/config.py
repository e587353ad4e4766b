"""The configuration every trainer shares (RLlib 0.7's common config) and its validation.

Configs are plain dicts: ``DEFAULT_CONFIG.copy()``, ``with_common_config({...})``, YAML files and Tune's
``grid_search`` all work on them. ``validate_config`` rejects an unknown key, a wrong type or an impossible
value with a ValueError that names the key (and suggests the closest known key).
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import logging
from typing import Any, Callable

import numpy as np

from relayrl.models.catalog import MODEL_DEFAULTS, validate_model_config
from relayrl.multiagent_config import normalize_multiagent
from relayrl.utils.filters import FILTERS

logger = logging.getLogger(__name__)

CALLBACK_NAMES = (
    "on_episode_start",
    "on_episode_step",
    "on_episode_end",
    "on_sample_end",
    "on_postprocess_traj",
    "on_train_result",
)

COMMON_CONFIG: dict[str, Any] = {
    # === Debugging ===
    # Record episode videos of sub-env 0 of every worker (gymnasium's RecordVideo, its default schedule: episodes
    # 0, 1, 8, 27, ..., 1000, 2000, ...) into the trial directory (Trainer.logdir) as worker<i>-episode-<n>.mp4
    # (evaluation episodes under evaluation/). Needs moviepy (pip install -e '.[video]') and an env that renders
    # rgb_array frames: Gymnasium ids are made with render_mode="rgb_array"; see EnvContext.render_mode.
    "monitor": False,
    # Logging level of relayrl's loggers: DEBUG, INFO, WARN or ERROR.
    "log_level": "WARN",
    # Functions called with an info dict at points of sampling and training; see CALLBACK_NAMES.
    "callbacks": {name: None for name in CALLBACK_NAMES},
    # Carry on with the healthy remote workers when one dies (its in-flight work is dropped) instead of failing.
    "ignore_worker_failures": False,
    # Replace a remote worker that died with a new one (same resources, current weights, filters and global
    # vars) and give it work again. Implies carrying on like ignore_worker_failures.
    "recreate_failed_workers": False,
    # Seconds to wait for remote workers to start (a busy cluster has no free CPUs for them) before failing
    # with an error naming the missing resources.
    "worker_start_timeout_s": 60,
    # === Policy ===
    # Model options, see relayrl.models.catalog.MODEL_DEFAULTS.
    "model": MODEL_DEFAULTS,
    # Options of the policy optimizer (algorithm-specific).
    "optimizer": {},
    # Use the stochastic policy when acting (False: greedy / noise-free actions).
    "explore": True,
    # Legacy switch of the seed configs, accepted for compatibility: relayrl's policies are always PyTorch (an
    # explicit False is ignored with a warning).
    "use_pytorch": True,
    # === Environment ===
    # Cut episodes after this many steps (a truncation: values are bootstrapped). None: the env's own limit.
    "horizon": None,
    # Passed to the env creator (and as keyword arguments to gymnasium.make).
    "env_config": {},
    # The environment: a Gymnasium id or a name given to register_env. Usually set by the trainer's `env`.
    "env": None,
    # True: clip rewards to their sign; a number c: clip to [-c, c]; None/False: no clipping.
    "clip_rewards": None,
    # Clip Box actions to the action space's bounds before stepping the env.
    "clip_actions": True,
    # Check each sub-env's step()/reset() results and observations (against the space) on its first N steps (and
    # every reset then; one in 100 after), then step at full speed (True: every step; False/0: never); raises
    # relayrl.env.EnvCheckError.
    "check_env": 1000,
    # Raise instead of learning from NaN/inf: rewards and observations (each fragment, in numpy), and each
    # policy update's losses and gradients (before the optimizer step, so the weights stay as they were).
    "check_nan": True,
    # Discount factor of the MDP.
    "gamma": 0.99,
    # Learning rate.
    "lr": 0.0001,
    # === Evaluation ===
    # Evaluate every this many iterations (None: never); results go under "evaluation" in the result.
    "evaluation_interval": None,
    # Episodes per evaluation.
    "evaluation_num_episodes": 10,
    # Config overrides of the evaluation worker, e.g. {"explore": False}.
    "evaluation_config": {},
    # === Resources ===
    # Remote rollout workers (Ray actors). 0: everything in this process, without Ray.
    "num_workers": 0,
    # GPUs of the learner (fractions allowed). CPU when no CUDA device is present.
    "num_gpus": 0,
    # CPUs reserved for each remote worker.
    "num_cpus_per_worker": 1,
    # GPUs reserved for each remote worker.
    "num_gpus_per_worker": 0,
    # Extra Ray resources reserved for each remote worker.
    "custom_resources_per_worker": {},
    # CPUs reserved for the driver (the learner) when run under Tune.
    "num_cpus_for_driver": 1,
    # Sub-environments per worker, stepped together with one batched policy call per step (must stay 1 when the env
    # creator returns a Gymnasium vector env: its num_envs are the worker's sub-envs, relayrl/env/gym_vector_env.py).
    "num_envs_per_worker": 1,
    # Steps per sub-environment in one sample() fragment.
    "sample_batch_size": 200,
    # Steps per training batch.
    "train_batch_size": 200,
    # "truncate_episodes": fixed-size fragments (values bootstrapped at cuts); "complete_episodes": whole episodes.
    "batch_mode": "truncate_episodes",
    # Multi-agent envs: what sample_batch_size and train_batch_size count: "env_steps" (one per step of an env)
    # or "agent_steps" (one per action of an agent).
    "count_steps_by": "env_steps",
    # Sample in a background thread of the worker (A3C).
    "sample_async": False,
    # Observation filter: "NoFilter" or "MeanStdFilter" (running mean and std; "ConcurrentMeanStdFilter", a seed
    # name, is accepted as MeanStdFilter).
    "observation_filter": "NoFilter",
    # Merge the workers' filter statistics after every iteration.
    "synchronize_filters": True,
    # LZ4-compress observations in sample batches.
    "compress_observations": False,
    # Seconds to wait for episode metrics of remote workers.
    "collect_metrics_timeout": 180,
    # Episodes in the window of episode_reward_mean and friends.
    "metrics_smoothing_episodes": 100,
    # An iteration lasts at least this many seconds.
    "min_iter_time_s": 0,
    # An iteration samples at least this many env steps.
    "timesteps_per_iteration": 0,
    # Seed of the env, torch and numpy generators (None: not seeded).
    "seed": None,
    # === Multi-agent ===
    "multiagent": {
        # policy id -> (policy class or None for the trainer's default, obs_space, act_space, config overrides); in
        # YAML null or [null, null, null, {lr: 0.001}] (relayrl/multiagent_config.py).
        "policies": {},
        # agent id -> policy id: a function, "package.module:function", a template such as "p{agent_id}", or a
        # mapping {agent id: policy id} (relayrl/multiagent_config.py).
        "policy_mapping_fn": None,
        # Policy ids to train (None: all).
        "policies_to_train": None,
    },
}

# Keys whose default is None (or a number) but which take these types.
_NULLABLE_TYPES: dict[str, tuple[type, ...]] = {
    "horizon": (int,),
    "clip_rewards": (bool, int, float),
    "evaluation_interval": (int,),
    "seed": (int,),
    "lr_schedule": (list, tuple),
    "grad_clip": (int, float),
    "grad_norm_clipping": (int, float),
    "env": (str, type, Callable),
    "policy_mapping_fn": (str, dict, Callable),
    "policies_to_train": (list, tuple),
    "custom_model": (str, type),
    "custom_preprocessor": (str, type),
    "custom_action_dist": (str, type),
    "conv_filters": (list, tuple),
    "num_gpus": (int, float),
    "num_gpus_per_worker": (int, float),
    "num_cpus_per_worker": (int, float),
    "check_env": (bool, int),
}
# Dict-valued keys whose contents are free-form (checked elsewhere or user-defined).
_FREE_DICTS = {"env_config", "optimizer", "custom_options", "custom_resources_per_worker", "policies"}


# Names of RLlib 0.7's era (2019) and the keys that replaced them.
LEGACY_KEYS = {
    "sgd_stepsize": "lr",
    "sgd_batchsize": "sgd_minibatch_size",
    "timesteps_per_batch": "train_batch_size",
    "rollout_fragment_length": "sample_batch_size",  # RLlib 0.8's name
    # RLlib 0.7's documentation: `gpu: true` asks for one GPU, `gpu_fraction: f` for a fraction of one (both: the
    # fraction when gpu is true, none when it is false).
    "gpu": "num_gpus",
    "gpu_fraction": "num_gpus",
}


def translate_legacy_keys(config: dict, defaults: dict) -> dict:
    """Renames RLlib 0.7-era keys (``sgd_stepsize`` -> ``lr``, ``gpu`` / ``gpu_fraction`` -> ``num_gpus``, ...) that
    the defaults know by their new name."""
    out = dict(config)
    if "gpu" in out and "gpu_fraction" in out and "gpu" not in defaults and "gpu_fraction" not in defaults:
        gpu = out.pop("gpu")
        out["gpu_fraction"] = out["gpu_fraction"] if gpu else 0
    if isinstance(out.get("gpu"), bool) and "gpu" not in defaults:
        out["gpu"] = int(out["gpu"])
    if "framework" in out and "framework" not in defaults:  # RLlib 0.8: "torch", or a TensorFlow one ("tf", ...)
        out.setdefault("use_pytorch", out.pop("framework") == "torch")
    ma = out.get("multiagent")
    if isinstance(ma, dict) and "policy_graphs" in ma:  # RLlib 0.7's name of multiagent.policies
        if "policies" in ma:
            raise ValueError("config has both multiagent.policy_graphs and its new name policies; keep policies")
        out["multiagent"] = {("policies" if k == "policy_graphs" else k): v for k, v in ma.items()}
    for old, new in LEGACY_KEYS.items():
        if old in out and old not in defaults and new in defaults:
            if new in out:
                raise ValueError(f"config has both {old!r} and its new name {new!r}; keep {new!r}")
            out[new] = out.pop(old)
    return out


def prepare_config(
    config: dict | None, defaults: dict, name: str = "trainer", check_values: Callable | None = None
) -> dict:
    """The one place a trainer's config is checked: translates RLlib 0.7-era keys, rejects unknown keys and wrong types
    (ValueError naming the key), merges the config onto ``defaults``, then checks the values of the merged config
    (the common keys here, the algorithm's keys with ``check_values(merged)``). Returns the merged config, which
    everything downstream reads as ``config[key]``."""
    user = translate_legacy_keys(_plain_scalars(dict(config or {})), defaults)
    _check_keys_and_types(user, defaults, name, prefix="")
    merged = merge_dicts(defaults, user)
    _check_common_values(merged, name)
    normalize_multiagent(
        merged, name, lambda overrides, prefix: _check_keys_and_types(overrides, defaults, name, prefix)
    )
    if check_values is not None:
        check_values(merged)
    if user.get("use_pytorch") is False:
        logger.warning("%s config: 'use_pytorch': False is ignored: relayrl's policies are always PyTorch", name)
    return merged


def _plain_scalars(value: Any) -> Any:
    """numpy scalars (``np.int64(4)`` from ``np.arange``, a search library or a sweep script) as the Python int /
    float / bool they hold, in nested dicts, lists and tuples: the type checks take them, and the config stays
    JSON for params.json and checkpoint manifests."""
    if isinstance(value, np.generic):
        return value.item()
    if type(value) is dict:
        return {k: _plain_scalars(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # not their subclasses (a namedtuple is not made from one iterable)
        return type(value)(_plain_scalars(v) for v in value)
    return value


def merge_dicts(base: dict, override: dict) -> dict:
    """Deep merge: nested dicts are merged key by key; other values are replaced."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("policies",):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def with_common_config(extra: dict) -> dict:
    """An algorithm's DEFAULT_CONFIG: the common config updated with the algorithm's keys."""
    return merge_dicts(COMMON_CONFIG, extra)


def validate_config(config: dict, defaults: dict, name: str = "trainer", check_values: Callable | None = None) -> None:
    """Raises ValueError for unknown keys, wrong types and impossible values, naming the key (``prepare_config``
    without keeping the merged config; RLlib 0.7-era key names are accepted)."""
    prepare_config(config, defaults, name, check_values)


def _check_keys_and_types(config: dict, defaults: dict, name: str, prefix: str) -> None:
    for key, value in config.items():
        path = prefix + key
        if key not in defaults:
            if key.startswith("_"):
                continue  # private keys (set by the library itself) are not validated
            close = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{name} config: unknown key {path!r}{hint}")
        if isinstance(value, dict) and "grid_search" in value:
            raise ValueError(
                f"{name} config: {path!r} is a grid_search; grid searches run through tune.run_experiments"
                " or `relayrl train`, not a trainer built by hand"
            )
        _check_type(path, value, defaults[key], name)
        if key == "evaluation_config":
            _check_keys_and_types(value, COMMON_CONFIG | defaults, name, prefix=path + ".")
        elif isinstance(value, dict) and key not in _FREE_DICTS and defaults[key]:
            _check_keys_and_types(value, defaults[key], name, prefix=path + ".")


def _check_type(path: str, value: Any, default: Any, name: str) -> None:
    key = path.rsplit(".", 1)[-1]
    if value is None:
        return
    allowed = _NULLABLE_TYPES.get(key)
    if allowed is None:
        if default is None:
            return
        if isinstance(default, bool):
            allowed = (bool,)
        elif isinstance(default, int):
            allowed = (int,)
        elif isinstance(default, float):
            allowed = (int, float)
        elif isinstance(default, str):
            allowed = (str,)
        elif isinstance(default, (list, tuple)):
            allowed = (list, tuple)
        elif isinstance(default, dict):
            allowed = (dict,)
        else:
            return

    def matches(t: type) -> bool:
        if t is Callable:
            return callable(value)
        # bool is an int subclass, but True is no learning rate.
        return isinstance(value, t) and not (isinstance(value, bool) and bool not in allowed)

    ok = any(matches(t) for t in allowed)
    if not ok:
        expected = " or ".join("callable" if t is Callable else t.__name__ for t in allowed)
        raise ValueError(f"{name} config: {path!r} must be {expected}, got {value!r} ({type(value).__name__})")


def _check_common_values(config: dict, name: str) -> None:
    def need(key: str, ok: bool, what: str) -> None:
        if key in config and config[key] is not None and not ok:
            raise ValueError(f"{name} config: {key!r} must be {what}, got {config[key]!r}")

    get = config.get
    need("num_workers", get("num_workers", 0) >= 0, ">= 0")
    need("num_envs_per_worker", get("num_envs_per_worker", 1) >= 1, ">= 1")
    need("sample_batch_size", get("sample_batch_size", 1) >= 1, ">= 1")
    need("train_batch_size", get("train_batch_size", 1) >= 1, ">= 1")
    need("gamma", 0.0 <= get("gamma", 0.99) <= 1.0, "in [0, 1]")
    need("lr", get("lr", 0.0) >= 0, ">= 0")
    need("num_gpus", (get("num_gpus") or 0) >= 0, ">= 0")
    need("num_cpus_per_worker", (get("num_cpus_per_worker") or 0) >= 0, ">= 0")
    need("num_gpus_per_worker", (get("num_gpus_per_worker") or 0) >= 0, ">= 0")
    need("horizon", get("horizon") is None or get("horizon") >= 1, "None or >= 1")  # 0 would cut every step
    need(
        "check_env",
        isinstance(get("check_env"), bool) or (get("check_env") or 0) >= 0,
        "True, False or a number of steps >= 0",
    )
    need("metrics_smoothing_episodes", get("metrics_smoothing_episodes", 1) >= 1, ">= 1")
    need("evaluation_interval", (get("evaluation_interval") or 1) >= 1, "None or >= 1")
    need("evaluation_num_episodes", get("evaluation_num_episodes", 1) >= 1, ">= 1")
    need(
        "batch_mode",
        get("batch_mode") in ("truncate_episodes", "complete_episodes"),
        "'truncate_episodes' or 'complete_episodes'",
    )
    steps_by = get("count_steps_by", "env_steps")
    need("count_steps_by", steps_by in ("env_steps", "agent_steps"), "'env_steps' or 'agent_steps'")
    need("observation_filter", get("observation_filter") in FILTERS, " or ".join(repr(f) for f in FILTERS))
    need(
        "log_level",
        str(get("log_level", "WARN")).upper() in ("DEBUG", "INFO", "WARN", "WARNING", "ERROR"),
        "DEBUG, INFO, WARN or ERROR",
    )
    if isinstance(get("model"), dict):
        validate_model_config(get("model"), f"{name} config")
    if get("monitor") and importlib.util.find_spec("moviepy") is None:
        raise ValueError(f"{name} config: monitor: True needs moviepy: pip install -e '.[video]'")
    callbacks = get("callbacks") or {}
    for cb_name, fn in callbacks.items():
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} config: callbacks.{cb_name} must be callable, got {fn!r}")


# --- documentation -----------------------------------------------------------------------------------------
def key_comments(*paths: str) -> dict[str, str]:
    """The one-line comments above each ``"key": value`` of the given source files (the first file wins)."""
    import re

    comments: dict[str, str] = {}
    for path in paths:
        pending: list[str] = []
        with open(path) as f:
            for line in f:
                stripped = line.strip()
                if stripped.startswith("#"):
                    text = stripped.lstrip("#").strip()
                    if text and not text.startswith("==="):
                        pending.append(text)
                    continue
                match = re.match(r'"(\w+)"\s*:', stripped)
                if match and pending:
                    comments.setdefault(match.group(1), " ".join(pending))
                pending = []
    return comments


def describe_config(trainer_cls: Any) -> str:
    """``relayrl config ALGO``: every key of the algorithm's config with its default and its comment, the
    algorithm's own keys (and the common keys it changes) first, then the common keys, then the model's."""
    import inspect
    import json
    import os

    from relayrl.models import catalog

    defaults = trainer_cls._default_config
    algo_dir = os.path.dirname(inspect.getfile(trainer_cls))
    here = os.path.dirname(os.path.abspath(__file__))
    own_files = sorted(os.path.join(algo_dir, f) for f in os.listdir(algo_dir) if f.endswith(".py"))
    agents = os.path.join(here, "agents")
    all_algo_files = sorted(
        os.path.join(root, f) for root, _, files in os.walk(agents) for f in files if f.endswith(".py")
    )
    comments = key_comments(*own_files, *all_algo_files, __file__, inspect.getfile(catalog))

    def show(value: Any) -> str:
        try:
            return json.dumps(value)
        except TypeError:
            return repr(value)

    def section(title: str, items: dict, base: dict | None = None) -> list[str]:
        lines = [title]
        for key, value in items.items():
            if isinstance(value, dict) and key in ("model", "multiagent", "callbacks"):
                shown = "{...}" if key != "callbacks" else "{on_episode_start: null, ...}"
            else:
                shown = show(value)
            changed = " (changed from the common default)" if base is not None and key in base else ""
            lines.append(f"  {key} = {shown}{changed}")
            if comments.get(key):
                lines.append(f"      {comments[key]}")
        return lines

    own = {k: v for k, v in defaults.items() if k not in COMMON_CONFIG or COMMON_CONFIG[k] != v}
    common = {k: defaults.get(k, v) for k, v in COMMON_CONFIG.items() if k not in own}
    lines = section(f"{trainer_cls._name} keys:", own, base={k: None for k in own if k in COMMON_CONFIG})
    lines += [""] + section("common keys (every algorithm):", common)
    lines += [""] + section('model keys (under "model"):', dict(defaults.get("model") or MODEL_DEFAULTS))
    return "\n".join(lines)
