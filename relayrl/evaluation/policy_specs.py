"""Multi-agent policy specs: ``multiagent.policies`` entries with their missing spaces taken from the env.

    specs = resolve_policy_specs({"p0": (None, None, None, {}), "p1": (None, None, None, {"lr": 1e-3})},
                                 env, mapping_fn, default_cls=PPOTorchPolicy)
    # {"p0": (PPOTorchPolicy, Box(...), Discrete(2), {}), ...}

A ``None`` class is the trainer's default policy; a ``None`` space is the space of the env's agents that the mapping
function maps to that policy (``possible_agents``, or the per-agent space dicts, name them), which must all be the
same; without declared agents, the env's shared ``observation_space`` / ``action_space``.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable
from typing import Any, Callable

from relayrl.policy.sample_batch import DEFAULT_POLICY_ID


def default_mapping_fn(policy_ids: list[str]) -> Callable:
    """The mapping when the config gives none: every agent to the only policy."""
    if len(policy_ids) == 1:
        only = policy_ids[0]
        return lambda agent_id, *args, **kwargs: only
    ids = sorted(policy_ids)

    def missing(agent_id: Hashable, *args: Any, **kwargs: Any) -> str:
        raise ValueError(
            f"multiagent.policy_mapping_fn is required with several policies ({ids}): it maps agent "
            f"{agent_id!r} (and every other) to one of them"
        )

    return missing


def resolve_policy_specs(
    specs: dict | None, env: Any, mapping: Callable[[Hashable, Any], str], default_cls: Any
) -> dict[str, tuple]:
    """``policy id -> (cls, obs_space, act_space, config_overrides)`` with no None left (see the module doc).
    ``mapping(agent_id, episode)``; ``specs`` None or empty: one ``default_policy`` for every agent."""
    specs = dict(specs or {DEFAULT_POLICY_ID: (None, None, None, {})})
    agents = list(env.get_agent_ids()) if hasattr(env, "get_agent_ids") else []
    mapped: dict[str, list] = {}
    if agents and any(spec[1] is None or spec[2] is None for spec in _tuples(specs).values()):
        for agent in agents:
            mapped.setdefault(mapping(agent, None), []).append(agent)
    out = {}
    for pid, (cls, obs_space, act_space, overrides) in _tuples(specs).items():
        obs_space = obs_space or _space_for(pid, mapped.get(pid), env, "observation")
        act_space = act_space or _space_for(pid, mapped.get(pid), env, "action")
        out[pid] = (cls or default_cls, obs_space, act_space, dict(overrides or {}))
    return out


def _tuples(specs: dict) -> dict[str, tuple]:
    out = {}
    for pid, spec in specs.items():
        if isinstance(spec, (tuple, list)) and len(spec) == 4:
            out[pid] = tuple(spec)
        elif spec is None:
            out[pid] = (None, None, None, {})
        else:
            raise ValueError(
                f"multiagent.policies[{pid!r}] is {spec!r}; each entry is (policy class or None, observation space "
                "or None, action space or None, config overrides dict)"
            )
    return out


def _space_for(pid: str, agents: list | None, env: Any, kind: str) -> Any:
    if agents:
        spaces = {agent: _agent_space(env, agent, kind) for agent in agents}
        first = spaces[agents[0]]
        differ = {a: s for a, s in spaces.items() if s != first}
        if differ:
            listing = ", ".join(f"{a!r}: {s}" for a, s in spaces.items())
            raise ValueError(
                f"policy {pid!r} has no {kind} space in multiagent.policies and the agents mapped to it have "
                f"different ones ({listing}); give the policy its space, or map these agents to separate policies"
            )
        return first
    shared = getattr(env, f"{kind}_space", None)
    if shared is None:
        raise ValueError(
            f"policy {pid!r} has no {kind} space: give it in multiagent.policies[{pid!r}], or declare the env's "
            f"{kind}_space, or its possible_agents with {kind}_spaces and map an agent to {pid!r}"
        )
    return shared


def _agent_space(env: Any, agent: Hashable, kind: str) -> Any:
    getter = getattr(env, f"get_{kind}_space", None)
    if getter is not None:
        return getter(agent)
    return getattr(env, f"{kind}_space")


def mapping_caller(fn: Callable, worker: Any = None) -> Callable[[Any, Any], str]:
    """``policy_mapping_fn`` as ``(agent_id, episode) -> policy id``: the RLlib 0.7 form ``fn(agent_id)`` and
    today's ``fn(agent_id, episode, **kwargs)`` (given ``worker=``) are both accepted."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    if len(positional) >= 2 or var_pos:
        if var_kw or any(p.name == "worker" for p in params):
            return lambda agent_id, episode: fn(agent_id, episode, worker=worker)
        return lambda agent_id, episode: fn(agent_id, episode)
    return lambda agent_id, episode: fn(agent_id)
