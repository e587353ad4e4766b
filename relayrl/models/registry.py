"""Names of users' own models, preprocessors and action distributions, and how they reach other processes.

    ModelCatalog.register_custom_model("my_model", MyModel)      # then model: {custom_model: "my_model"}
    model: {custom_model: MyModel}                               # or the class itself

A name is resolved to its class in the process that builds the trainer: the WorkerSet ships the class (not the
name) to remote workers, so a worker process never needs the user's registration code. Tune trials run in
other processes; ``relayrl.agents.tune_adapter`` adds Ray Tune's cluster-wide registry as a second place to
register and look names up (this module imports no Ray).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

KINDS = ("model", "preprocessor", "action_dist")

_LOCAL: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
# Installed by relayrl.agents.tune_adapter: mirror a registration / look a name up elsewhere.
REGISTER_HOOKS: list[Callable[[str, str, Any], None]] = []
LOOKUP_HOOKS: list[Callable[[str, str], Any]] = []


def register(kind: str, name: str, cls: Any) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_custom_{kind} needs a non-empty name, got {name!r}")
    if not callable(cls):
        raise TypeError(f"register_custom_{kind}({name!r}, ...) needs a class, got {cls!r}")
    _LOCAL[kind][name] = cls
    for hook in REGISTER_HOOKS:
        hook(kind, name, cls)


def registered(kind: str) -> dict[str, Any]:
    return dict(_LOCAL[kind])


def resolve(kind: str, value: Any) -> Any:
    """The class for ``custom_<kind>``: ``value`` itself when it is a class, else the one registered as it."""
    if value is None or not isinstance(value, str):
        return value
    cls = _LOCAL[kind].get(value)
    for hook in LOOKUP_HOOKS if cls is None else ():
        cls = hook(kind, value)
        if cls is not None:
            _LOCAL[kind][value] = cls
            break
    if cls is None:
        raise ValueError(
            f"custom_{kind} {value!r} is not registered (known: {sorted(_LOCAL[kind]) or 'none'}): call"
            f" ModelCatalog.register_custom_{kind}({value!r}, cls) before building the trainer, or pass the"
            " class itself"
        )
    return cls


def resolve_model_config(model_config: dict | None) -> dict | None:
    """A copy of a model config with custom names replaced by their classes (for shipping to other processes)."""
    if not model_config or not any(isinstance(model_config.get(f"custom_{k}"), str) for k in KINDS):
        return model_config
    out = dict(model_config)
    for kind in KINDS:
        out[f"custom_{kind}"] = resolve(kind, out.get(f"custom_{kind}"))
    return out


def resolve_config(config: dict) -> dict:
    """A copy of a trainer config whose model configs (top level and per-policy overrides) name classes."""
    out = dict(config)
    if "model" in config:  # absent stays absent: a None here would replace MODEL_DEFAULTS when merged
        out["model"] = resolve_model_config(config["model"])
    ma = config.get("multiagent") or {}
    if ma.get("policies"):
        policies = {}
        for pid, spec in ma["policies"].items():
            spec = tuple(spec)
            if len(spec) == 4 and isinstance(spec[3], dict) and spec[3].get("model"):
                spec = (*spec[:3], {**spec[3], "model": resolve_model_config(spec[3]["model"])})
            policies[pid] = spec
        out["multiagent"] = {**ma, "policies": policies}
    return copy.copy(out)
