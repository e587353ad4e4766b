"""A Trainer's checkpoint state: what ``save`` writes besides the weights' tree, what ``restore`` checks and applies.

``checked_state`` reads everything ``restore`` applies out of a checkpoint and checks it against the live trainer
(every policy of a multi-agent trainer: weights, optimizer state, its observation filter); ``current_state`` and
``apply_state`` let ``restore`` apply it all or nothing. ``rebuild_config`` turns a checkpoint's stored config
into the config ``Trainer.from_checkpoint`` builds with.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

from relayrl.agents import checkpoint as ckpt

logger = logging.getLogger(__name__)


def space_signature(policy: Any) -> dict:
    return {"observation_space": repr(policy.observation_space), "action_space": repr(policy.action_space)}


_COUNTERS = {"iteration": int, "timesteps_total": int, "episodes_total": int, "time_total_s": float}


def check_counters(prefix: str, manifest: dict) -> dict:
    """The manifest's counters (iteration, timesteps_total, time_total_s, episodes_total), each present and a
    non-negative integer (a number for time_total_s); else CheckpointError naming it."""
    counters = manifest.get("counters")
    if not isinstance(counters, dict):
        raise ckpt.CheckpointError(f"{prefix}{ckpt.MANIFEST} has no 'counters' object")
    for key, kind in _COUNTERS.items():
        if key not in counters:
            raise ckpt.CheckpointError(f"{prefix}counter {key!r} is missing from {ckpt.MANIFEST}")
        value = counters[key]
        number = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
        if isinstance(value, bool) or not number or not (value >= 0 and math.isfinite(value)):
            what = "number" if kind is float else "integer"
            raise ckpt.CheckpointError(f"{prefix}counter {key!r} must be a non-negative {what}, found {value!r}")
    # Optional (written since multi-agent support; older checkpoints: agent steps = env steps).
    agent_steps = counters.get("agent_steps_total", counters["timesteps_total"])
    if isinstance(agent_steps, bool) or not isinstance(agent_steps, int) or agent_steps < 0:
        raise ckpt.CheckpointError(
            f"{prefix}counter 'agent_steps_total' must be a non-negative integer, found {agent_steps!r}"
        )
    return {**counters, "agent_steps_total": agent_steps}


def checked_state(trainer: Any, path: str, manifest: dict, state: dict) -> dict:
    """Everything ``restore`` applies, taken from a checkpoint and checked against the live trainer: its name
    and spaces, the counters, each policy's state (weights, optimizer state, global_timestep, ...) against the
    policy's own ``get_state()``, each filter's statistics against the filter, the policy optimizer's and the
    algorithm's extra state. Raises CheckpointError naming the field; changes nothing."""
    prefix = f"checkpoint {path}: "
    if manifest["trainer"] != trainer._name:
        raise ckpt.CheckpointError(
            f"checkpoint {path} was written by trainer {manifest['trainer']!r}, not {trainer._name!r}"
        )
    local = trainer.workers.local_worker()
    expected = {pid: space_signature(p) for pid, p in local.policy_map.items()}
    if manifest.get("spaces") != expected:
        raise ckpt.CheckpointError(
            f"checkpoint {path} has spaces {manifest.get('spaces')}, this trainer has {expected}"
        )
    counters = check_counters(prefix, manifest)
    # Format 1 checkpoints may lack fields added since; the policies' set_state defaults fill those in.
    allow_missing = manifest["format_version"] < 2
    sections = {}
    for section in ("policies", "filters", "optimizer", "trainer"):
        sections[section] = state.get(section)
        if not isinstance(sections[section], dict):
            raise ckpt.CheckpointError(f"{prefix}its state has no {section!r} object")
    policies, filters = sections["policies"], sections["filters"]
    for pid, policy in local.policy_map.items():
        if pid not in policies:
            raise ckpt.CheckpointError(f"{prefix}field 'policies' has no state for policy {pid!r}")
        ckpt.check_structure(policies[pid], policy.get_state(), f"policies.{pid}", prefix, allow_missing)
    for pid, live in local.filters.items():
        if pid not in filters:
            raise ckpt.CheckpointError(f"{prefix}field 'filters' has no state for policy {pid!r}")
        kind = filters[pid].get("type") if isinstance(filters[pid], dict) else None
        if kind != type(live).__name__:
            raise ckpt.CheckpointError(
                f"{prefix}field 'filters.{pid}' is a {kind}, this trainer's observation_filter"
                f" is a {type(live).__name__}"
            )
        try:
            live.check_state(filters[pid], f"filters.{pid}")
        except ValueError as e:
            raise ckpt.CheckpointError(prefix + str(e)) from None
    live_optimizer = trainer.optimizer.save()
    if manifest["format_version"] < 3:
        sections["optimizer"] = upgrade_optimizer_state(sections["optimizer"], live_optimizer)
    ckpt.check_structure(sections["optimizer"], live_optimizer, "optimizer", prefix, allow_missing)
    ckpt.check_structure(sections["trainer"], trainer._extra_state(), "trainer", prefix, allow_missing)
    return {
        "policies": {pid: policies[pid] for pid in local.policy_map},
        "filters": {pid: filters[pid] for pid in local.filters},
        "counters": {key: counters[key] for key in (*_COUNTERS, "agent_steps_total")},
        "optimizer": sections["optimizer"],
        "extra": sections["trainer"],
    }


def upgrade_optimizer_state(stored: dict, live: dict) -> dict:
    """A format 1-2 checkpoint's optimizer state in today's layout (format 3 keeps the replay optimizers' target
    update counters per policy id): a number where a per-policy dict is now is given to every policy; a counter
    renamed since (Ape-X's ``last_target_update``) is left out and starts from 0."""
    out = {}
    for key, value in live.items():
        if key not in stored:
            out[key] = value if not isinstance(value, dict) else {pid: 0 for pid in value}
        elif isinstance(value, dict) and isinstance(stored[key], int) and not isinstance(stored[key], bool):
            out[key] = {pid: stored[key] for pid in value}
        else:
            out[key] = stored[key]
    return out


def current_state(trainer: Any) -> dict:
    """What ``apply_state`` needs to put the trainer back as it is now (copies, not views)."""
    local = trainer.workers.local_worker()
    return {
        "policies": {pid: copy.deepcopy(p.get_state()) for pid, p in local.policy_map.items()},
        "filters": {pid: f.to_state() for pid, f in local.filters.items()},
        "counters": {
            "iteration": trainer.iteration,
            "timesteps_total": trainer._timesteps_total,
            "time_total_s": trainer._time_total,
            "episodes_total": trainer._metrics.episodes_total,
            "agent_steps_total": int(getattr(trainer.optimizer, "num_agent_steps_sampled", 0)),
        },
        "optimizer": copy.deepcopy(trainer.optimizer.save()),
        "extra": copy.deepcopy(trainer._extra_state()),
        "global_vars": copy.deepcopy(local.global_vars),
    }


def apply_state(trainer: Any, state: dict) -> None:
    local = trainer.workers.local_worker()
    for pid, policy in local.policy_map.items():
        policy.set_state(state["policies"][pid])
    for pid, f in local.filters.items():
        f.set_state(state["filters"][pid])
    counters = state["counters"]
    trainer.iteration = int(counters["iteration"])
    trainer._timesteps_total = int(counters["timesteps_total"])
    trainer._time_total = float(counters["time_total_s"])
    trainer._metrics.episodes_total = int(counters["episodes_total"])
    trainer.optimizer.restore(state["optimizer"])
    if "agent_steps_total" in counters and hasattr(trainer.optimizer, "num_agent_steps_sampled"):
        trainer.optimizer.num_agent_steps_sampled = int(counters["agent_steps_total"])
    trainer._restore_extra_state(state["extra"])
    if "global_vars" in state:
        local.global_vars.clear()
        local.global_vars.update(state["global_vars"])


def env_reference(env: Any) -> dict:
    """How a checkpoint's manifest names its env: ``{"env": id}`` for a name, or ``{"env": None,
    "env_callable": "module:qualname"}`` for an env class or creator that can be imported by name (not a lambda,
    a local function or a script's ``__main__``), which ``env_from_manifest`` imports back."""
    if isinstance(env, str):
        return {"env": env}
    name = ckpt.callable_name(env)
    if name.startswith(("<unrestorable", "__main__:")):
        return {"env": None}
    return {"env": None, "env_callable": name}


def env_from_manifest(path: str, manifest: dict) -> Any:
    """The env a checkpoint was trained on: its id, its imported class or creator, or None if it names none."""
    if isinstance(manifest.get("env"), str):
        return manifest["env"]
    name = manifest.get("env_callable")
    if not isinstance(name, str):
        return None
    try:
        return ckpt.resolve_callable(name)
    except ckpt.CheckpointError as e:
        raise ckpt.CheckpointError(
            f"checkpoint {path} was trained on env {name}, which cannot be imported here ({e.__cause__});"
            " pass the env (config_overrides={'env': ...}, or --env)"
        ) from e


def portable_config(config: dict) -> dict:
    out = copy.copy(config)
    if not isinstance(out.get("env"), str):
        out["env"] = None
    return out


def rebuild_config(path: str, stored: dict, defaults: dict, overrides: dict) -> dict:
    """The trainer config of ``Trainer.from_checkpoint``: the stored config's keys the trainer knows (not ``env``),
    its functions (``{"__callable__": "module:qualname"}``, read with ``resolve_callables=False``) imported back,
    then ``overrides`` merged on top. A function that cannot be imported in this process (a lambda, a local
    function, one of a script's ``__main__``) is dropped with a warning, unless it is the policy mapping of
    several policies: then a CheckpointError says to pass it in ``overrides``. A key given in ``overrides``
    is not imported at all."""
    from relayrl.config import merge_dicts

    config = {k: v for k, v in stored.items() if k in defaults and k != "env"}

    def walk(node: Any, key: str, override: Any) -> Any:
        if isinstance(node, dict) and set(node) == {"__callable__"}:
            if override is not _MISSING:
                return None  # replaced by the override: never imported
            try:
                fn = ckpt.resolve_callable(node["__callable__"])
            except ckpt.CheckpointError:
                fn = None
            if fn is None:
                _unrestorable(path, key, node["__callable__"], config)
            return fn
        if isinstance(node, dict) and set(node) == {"__repr__"} and _is_policy_space(key):
            return None  # a space given in multiagent.policies: the env's agents give it again (restore checks it)
        if isinstance(node, dict):
            sub = override if isinstance(override, dict) else {}
            return {k: walk(v, f"{key}.{k}" if key else str(k), sub.get(k, _MISSING)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{key}.{i}", _MISSING) for i, v in enumerate(node)]
        return node

    config = walk(config, "", overrides or {})
    return merge_dicts(config, overrides or {})


_MISSING = object()


def _is_policy_space(key: str) -> bool:
    parts = key.split(".")
    return len(parts) >= 4 and parts[:2] == ["multiagent", "policies"] and parts[-1] in ("1", "2")


def _unrestorable(path: str, key: str, name: str, config: dict) -> None:
    policies = (config.get("multiagent") or {}).get("policies") or {}
    if key == "multiagent.policy_mapping_fn" and len(policies) > 1:
        raise ckpt.CheckpointError(
            f"checkpoint {path}: its multiagent.policy_mapping_fn {name!r} cannot be imported here (a lambda, a local"
            " function or one of a script's __main__ is not stored by name); pass it in the config overrides, e.g."
            ' --config \'{"multiagent": {"policy_mapping_fn": "p{agent_id}"}}\' (a template, "package.module:fn" or'
            " {agent id: policy id}), and use such a form when training to store it in checkpoints"
        )
    if not key.startswith("callbacks.") and not key.startswith("multiagent.policy_mapping_fn"):
        raise ckpt.CheckpointError(
            f"checkpoint {path}: config key {key} names {name!r}, which cannot be imported here; pass the key in the"
            " config overrides"
        )
    logger.warning("checkpoint %s: config key %s (%s) cannot be imported here and is left out", path, key, name)
