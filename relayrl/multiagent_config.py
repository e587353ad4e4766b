"""The ``multiagent`` config in files: policies as YAML lists, ``policy_mapping_fn`` as text, checked at build time.

A YAML (or JSON) experiment writes the multi-agent keys with plain values::

    multiagent:
        policies:
            p0: null                                  # the trainer's policy, spaces from the env
            p1: [null, null, null, {lr: 0.001}]       # (class, obs space, action space, config overrides)
        policy_mapping_fn: "p{agent_id}"              # or "my_pkg.mapping:fn", or {0: p0, 1: p1}
        policies_to_train: [p0, p1]

``policy_mapping_fn`` may be, besides a Python callable:

- ``"package.module:function"``: imported (no eval). The module must be importable by the driver and by every
  worker process: an installed package or a module on the workers' PYTHONPATH, not a function of the script.
- a template whose only field is ``{agent_id}``, e.g. ``"p{agent_id}"`` (agents 0, 1 -> p0, p1);
- a mapping of agent ids to policy ids, e.g. ``{player_1: learner, player_2: opponent}`` (an agent id not in it
  is looked up as ``str(agent_id)`` too; still missing: an error naming it).

The policy class of an entry may be ``"package.module:Class"`` too. The text stays in the config (checkpoints store
it as it is); ``resolve_mapping_fn`` turns it into a function where the mapping is used (RolloutWorker).
Policy ids are non-empty strings without control characters; other characters ("player/1", "p 0") are kept,
and file names derived from an id encode it (``relayrl.policy.export.policy_dir_name``).
"""

from __future__ import annotations

import importlib
import string
from collections.abc import Hashable, Mapping
from typing import Any, Callable

KEY = "multiagent.policy_mapping_fn"
_FORMS = (
    "a function, 'package.module:function', a template with {agent_id} such as 'policy_{agent_id}', or a"
    " mapping of agent ids to policy ids"
)


def import_path(path: str, what: str) -> Any:
    """The object named ``"package.module:qualname"``; ValueError naming ``what`` when it cannot be imported."""
    module, sep, qualname = path.partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"{what} {path!r} is not an import path 'package.module:name'")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(
            f"{what} {path!r}: cannot import module {module!r} ({e}); it must be importable by the driver and every"
            " worker (an installed package or on PYTHONPATH)"
        ) from e
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {path!r}: module {module!r} has no {qualname!r}")
        obj = getattr(obj, part)
    return obj


class TemplateMapping:
    """``agent_id -> template.format(agent_id=agent_id)``; the template's only field is ``{agent_id}``."""

    def __init__(self, template: str):
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
        if not fields or any(name != "agent_id" or spec or conv for name, spec, conv in fields):
            raise ValueError(
                f"{KEY} template {template!r} may hold the field {{agent_id}} only (no other field, attribute,"
                " index, conversion or format spec)"
            )
        self.template = template

    def __call__(self, agent_id: Hashable, episode: Any = None, **kwargs: Any) -> str:
        return self.template.format(agent_id=agent_id)

    def __repr__(self) -> str:
        return f"TemplateMapping({self.template!r})"


class TableMapping:
    """``agent_id -> table[agent_id]`` (or ``table[str(agent_id)]``: YAML keys and env ids may differ in type)."""

    def __init__(self, table: Mapping):
        bad = {k: v for k, v in table.items() if not isinstance(v, str)}
        if not table or bad:
            raise ValueError(f"{KEY} as a mapping maps agent ids to policy ids (strings); got {dict(table)!r}")
        self.table = dict(table)

    def __call__(self, agent_id: Hashable, episode: Any = None, **kwargs: Any) -> str:
        if agent_id in self.table:
            return self.table[agent_id]
        if str(agent_id) in self.table:
            return self.table[str(agent_id)]
        raise ValueError(f"{KEY} maps agents {sorted(map(repr, self.table))} and not agent {agent_id!r}")

    def __repr__(self) -> str:
        return f"TableMapping({self.table!r})"


def resolve_mapping_fn(value: Any) -> Callable | None:
    """A config's ``policy_mapping_fn`` (None, a callable, or a form in the module docstring) as a callable."""
    if value is None or callable(value):
        return value
    if isinstance(value, Mapping):
        return TableMapping(value)
    if isinstance(value, str):
        if "{" in value or "}" in value:
            return TemplateMapping(value)
        if ":" in value:
            fn = import_path(value, KEY)
            if not callable(fn):
                raise ValueError(f"{KEY} {value!r} is a {type(fn).__name__}, not a function")
            return fn
    raise ValueError(f"{KEY} must be {_FORMS}; got {value!r}")


def check_policy_id(pid: Any, where: str = "multiagent.policies") -> None:
    if not isinstance(pid, str) or not pid:
        hint = " (quote it in YAML)" if isinstance(pid, (int, float, bool)) else ""
        raise ValueError(f"{where}: a policy id must be a non-empty string, got {pid!r}{hint}")
    if any(ord(c) < 32 or ord(c) == 127 for c in pid):
        raise ValueError(f"{where}: policy id {pid!r} holds control characters")


def normalize_multiagent(config: dict, name: str, check_overrides: Callable[[dict, str], None]) -> None:
    """Checks ``config["multiagent"]`` in place and writes each policy entry as a 4-tuple (a YAML ``null`` or list
    becomes ``(cls, obs_space, act_space, overrides)``, a class given as text is imported); ``policy_mapping_fn``
    is checked by resolving it but kept as given. ``check_overrides(overrides, prefix)`` checks the keys of a
    policy's config overrides. ValueError names the key."""
    ma = config.get("multiagent")
    if not isinstance(ma, dict):
        return
    where = f"{name} config: multiagent.policies"
    policies = ma.get("policies") or {}
    if not isinstance(policies, Mapping):
        raise ValueError(f"{where} must map policy ids to entries, got {policies!r}")
    out = {}
    for pid, spec in policies.items():
        check_policy_id(pid, where)
        out[pid] = _entry(pid, spec, f"{where}[{pid!r}]", check_overrides)
    ma["policies"] = out
    to_train = ma.get("policies_to_train")
    if to_train is not None and out:
        unknown = [pid for pid in to_train if pid not in out]
        if unknown:
            raise ValueError(
                f"{name} config: multiagent.policies_to_train names {unknown}, not among the policies {sorted(out)}"
            )
    try:
        resolve_mapping_fn(ma.get("policy_mapping_fn"))
    except ValueError as e:
        raise ValueError(f"{name} config: {e}") from None


def _entry(pid: str, spec: Any, where: str, check_overrides: Callable[[dict, str], None]) -> tuple:
    if spec is None:
        return (None, None, None, {})
    if not isinstance(spec, (list, tuple)) or len(spec) != 4:
        raise ValueError(
            f"{where} is {spec!r}; an entry is null or [policy class or null, observation space or null, action"
            " space or null, {config overrides}]"
        )
    cls, obs_space, act_space, overrides = spec
    if isinstance(cls, str):
        cls = import_path(cls, f"{where} policy class")
    if cls is not None and not isinstance(cls, type):
        raise ValueError(f"{where}: the policy class must be a class, 'package.module:Class' or null, got {cls!r}")
    for kind, space in (("observation", obs_space), ("action", act_space)):
        if space is not None and not hasattr(space, "contains"):
            raise ValueError(
                f"{where}: the {kind} space must be a gymnasium Space or null (taken from the env), got {space!r}"
            )
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{where}: the config overrides must be a mapping, got {overrides!r}")
    check_overrides(dict(overrides), f"multiagent.policies[{pid!r}].")
    return (cls, obs_space, act_space, dict(overrides))
