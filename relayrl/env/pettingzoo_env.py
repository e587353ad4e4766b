"""PettingZoo environments as MultiAgentEnvs: ``PettingZooEnv`` (AEC, turn-based) and ``ParallelPettingZooEnv``.

    register_env("tictactoe", lambda ctx: PettingZooEnv(pettingzoo.make("aec", "classic/tictactoe-v3")))
    register_env("spread", lambda ctx: ParallelPettingZooEnv(simple_spread_v3.parallel_env()))  # from mpe2
    # pettingzoo < 1.27: from pettingzoo.classic import tictactoe_v3; PettingZooEnv(tictactoe_v3.env())

Observations are passed through as PettingZoo gives them (classic games: a Dict with ``action_mask``, see
``relayrl.models.action_mask``); spaces are per agent (``observation_spaces`` / ``action_spaces`` over
``possible_agents``), plus shared ``observation_space`` / ``action_space`` when all agents have the same ones.
``pettingzoo`` is an optional extra (``pip install -e ".[pettingzoo]"``): it is imported when a wrapper is made,
never by ``import relayrl``. API: https://pettingzoo.farama.org/api/aec/ and https://pettingzoo.farama.org/api/parallel/
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable
from typing import Any

from relayrl.env.multi_agent_env import ALL, MultiAgentEnv


def _pettingzoo() -> Any:
    try:
        import pettingzoo
    except ImportError as e:
        raise ImportError(
            "PettingZoo environments need the pettingzoo package: pip install 'relayrl[pettingzoo]'"
            " (or pip install pettingzoo)"
        ) from e
    return pettingzoo


def _set_spaces(wrapper: MultiAgentEnv, env: Any) -> None:
    wrapper.possible_agents = list(env.possible_agents)
    wrapper.observation_spaces = {a: env.observation_space(a) for a in wrapper.possible_agents}
    wrapper.action_spaces = {a: env.action_space(a) for a in wrapper.possible_agents}
    for kind, spaces in (("observation", wrapper.observation_spaces), ("action", wrapper.action_spaces)):
        first = next(iter(spaces.values()), None)
        setattr(wrapper, f"{kind}_space", first if all(s == first for s in spaces.values()) else None)


def _episode_flags(left_truncated: dict[Hashable, bool], over: bool) -> tuple[bool, bool]:
    """``(terminateds["__all__"], truncateds["__all__"])``: truncated if any agent was cut off (not terminated)."""
    truncated = over and any(left_truncated.values())
    return over and not truncated, truncated


class PettingZooEnv(MultiAgentEnv):
    """A PettingZoo AEC env (agents act one at a time) as a MultiAgentEnv.

    - ``reset`` and each ``step`` return the observation of the next agent to act only (``agent_selection``);
      ``step`` takes exactly that agent's action.
    - Rewards: PettingZoo accumulates each agent's rewards since its last action (``_cumulative_rewards``, what
      ``last()`` returns). Every step reports, for every agent, the part not reported yet, so a reward given to an
      agent that is not acting (the loser, when the winner moves) lands on that agent's last step; the rewards of
      an episode sum to PettingZoo's. A reward given to an agent before its first observation has no step to land
      on and is left out. The agent that acts next always has a reward entry (0.0 if none).
    - Dead agents: PettingZoo requires a terminated / truncated agent to be stepped once with ``None`` when it is
      selected; the wrapper does that itself and reports the agent then, with its final observation,
      ``terminateds[agent]`` / ``truncateds[agent]`` True and its last reward. ``"__all__"`` is True when no
      agent is left (``truncateds["__all__"]`` if any agent was truncated rather than terminated).
    """

    def __init__(self, env: Any):
        pz = _pettingzoo()
        if isinstance(env, pz.ParallelEnv):
            raise TypeError(f"{env} is a PettingZoo ParallelEnv: wrap it with ParallelPettingZooEnv")
        if not isinstance(env, pz.AECEnv):
            raise TypeError(f"PettingZooEnv wraps a PettingZoo AECEnv (e.g. tictactoe_v3.env()), got {env!r}")
        self.env = env
        _set_spaces(self, env)
        self._reported: dict[Hashable, float] = {}  # agent -> its _cumulative_rewards already reported
        self._left_truncated: dict[Hashable, bool] = {}  # agents that left -> by truncation (not termination)

    @property
    def metadata(self) -> dict:
        return getattr(self.env, "metadata", {})

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.env.reset(seed=seed, options=options)
        self._reported, self._left_truncated = {}, {}
        obs, rewards, terminateds, truncateds, infos = self._advance(acted=None)
        if terminateds[ALL] or truncateds[ALL]:
            raise RuntimeError(f"{self.env} ended its episode at reset() (every agent dead)")
        return obs, infos

    def step(self, action_dict: dict) -> tuple[dict, dict, dict, dict, dict]:
        agent = self.env.agent_selection
        if set(action_dict) != {agent}:
            raise ValueError(
                f"PettingZooEnv: agent {agent!r} acts now (the one in the last observation dict);"
                f" got actions for {list(action_dict)}"
            )
        self.env.step(action_dict[agent])
        return self._advance(acted=agent)

    def _advance(self, acted: Hashable | None) -> tuple[dict, dict, dict, dict, dict]:
        """Collects rewards, steps dead agents with None, and stops at the next live agent or the episode's end."""
        env = self.env
        obs: dict = {}
        rewards: dict = {}
        terminateds: dict = {}
        truncateds: dict = {}
        infos: dict = {}
        if acted is not None:  # its _cumulative_rewards restarted at its action: all of it is new
            self._reported[acted] = 0.0
        self._collect(rewards)
        while env.agents:
            agent = env.agent_selection
            terminated, truncated = bool(env.terminations[agent]), bool(env.truncations[agent])
            if not (terminated or truncated):
                obs[agent] = env.observe(agent)
                rewards.setdefault(agent, 0.0)
                terminateds[agent] = truncateds[agent] = False
                infos[agent] = env.infos.get(agent, {})
                self._reported.setdefault(agent, float(env._cumulative_rewards.get(agent, 0.0)))
                break
            # A dead agent: its final observation and flags now, then PettingZoo's step(None) that removes it
            # (an agent dead before its first observation never was in the episode: it is only stepped).
            if agent in self._reported:
                final = env.observe(agent)
                if final is not None:
                    obs[agent] = final
                rewards.setdefault(agent, 0.0)
                terminateds[agent], truncateds[agent] = terminated, truncated
                infos[agent] = env.infos.get(agent, {})
                self._left_truncated[agent] = truncated and not terminated
            env.step(None)
            if env.agents and env.agent_selection == agent and agent in env.agents:
                raise RuntimeError(f"{env}: stepping dead agent {agent!r} with None did not remove it")
            self._reported.pop(agent, None)
            self._collect(rewards)
        terminateds[ALL], truncateds[ALL] = _episode_flags(self._left_truncated, not env.agents)
        return obs, rewards, terminateds, truncateds, infos

    def _collect(self, rewards: dict) -> None:
        """Adds to ``rewards`` each observed agent's ``_cumulative_rewards`` not reported yet."""
        for agent, total in self.env._cumulative_rewards.items():
            if agent in self._reported:
                new = float(total) - self._reported[agent]
                if new:
                    rewards[agent] = rewards.get(agent, 0.0) + new
                    self._reported[agent] = float(total)

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


class ParallelPettingZooEnv(MultiAgentEnv):
    """A PettingZoo Parallel env (all live agents act each step) as a MultiAgentEnv.

    Observations, rewards, flags and infos are PettingZoo's own dicts. An agent that PettingZoo reports
    terminated / truncated leaves with that observation as its final one (and PettingZoo drops it from
    ``agents``); ``"__all__"`` is True when no agent is left (``truncateds["__all__"]`` if any agent was
    truncated rather than terminated)."""

    def __init__(self, env: Any):
        pz = _pettingzoo()
        if isinstance(env, pz.AECEnv):
            raise TypeError(f"{env} is a PettingZoo AECEnv: wrap it with PettingZooEnv")
        if not isinstance(env, pz.ParallelEnv):
            raise TypeError(
                f"ParallelPettingZooEnv wraps a PettingZoo ParallelEnv (e.g. simple_spread_v3"
                f".parallel_env()), got {env!r}"
            )
        self.env = env
        _set_spaces(self, env)
        self._left_truncated: dict[Hashable, bool] = {}

    @property
    def metadata(self) -> dict:
        return getattr(self.env, "metadata", {})

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self._left_truncated = {}
        return dict(obs), dict(infos)

    def step(self, action_dict: dict) -> tuple[dict, dict, dict, dict, dict]:
        obs, rewards, terminations, truncations, infos = self.env.step(action_dict)
        terminateds = {a: bool(f) for a, f in terminations.items()}
        truncateds = {a: bool(f) for a, f in truncations.items()}
        for agent in set(terminateds) | set(truncateds):
            terminated, truncated = terminateds.get(agent, False), truncateds.get(agent, False)
            if terminated or truncated:
                self._left_truncated[agent] = truncated and not terminated
        terminateds[ALL], truncateds[ALL] = _episode_flags(self._left_truncated, not self.env.agents)
        return dict(obs), {a: float(r) for a, r in rewards.items()}, terminateds, truncateds, dict(infos)

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


class PettingZooCreator:
    """The env creator behind the names ``"pettingzoo:NAME"`` (AEC, in a PettingZooEnv) and
    ``"pettingzoo_parallel:NAME"`` (Parallel, in a ParallelPettingZooEnv), e.g.
    ``env: "pettingzoo:classic/tictactoe-v3"`` in a YAML experiment; ``env_config`` holds the env's keyword
    arguments. NAME is an id of PettingZoo's registry (``pettingzoo.make``, pettingzoo >= 1.27:
    "classic/tictactoe-v3") or a module path whose ``env()`` / ``parallel_env()`` makes the env (older pettingzoo,
    other packages: "pettingzoo.classic.tictactoe_v3"). The name is checked when the creator is made: an unknown
    one is a ValueError at build time."""

    def __init__(self, name: str, parallel: bool = False):
        import importlib

        self.name, self.parallel = name, parallel
        kind, factory = ("parallel", "parallel_env") if parallel else ("aec", "env")
        pz = _pettingzoo()
        if "/" in name:
            if not hasattr(pz, "make"):
                raise ValueError(
                    f"PettingZoo env id {name!r} needs pettingzoo's registry (pettingzoo >= 1.27); name the module"
                    " instead, e.g. pettingzoo.classic.tictactoe_v3"
                )
            from pettingzoo.env_registry import registration

            known = getattr(registration, f"{kind}_registry", {})
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=3)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"PettingZoo env id {name!r} is not in pettingzoo's {kind} registry{hint}")
            return
        try:
            found = importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"PettingZoo env module {name!r} cannot be imported ({e})") from e
        if not callable(getattr(found, factory, None)):
            raise ValueError(f"PettingZoo env module {name!r} has no {factory}() (the {kind} API)")

    def __call__(self, ctx: Any = None) -> MultiAgentEnv:
        import importlib

        kwargs = dict(ctx or {})
        if getattr(ctx, "render_mode", None) is not None:
            kwargs.setdefault("render_mode", ctx.render_mode)
        if "/" in self.name:
            env = _pettingzoo().make("parallel" if self.parallel else "aec", self.name, **kwargs)
        else:
            module = importlib.import_module(self.name)
            env = module.parallel_env(**kwargs) if self.parallel else module.env(**kwargs)
        return ParallelPettingZooEnv(env) if self.parallel else PettingZooEnv(env)

    def __repr__(self) -> str:
        return f"PettingZooCreator({self.name!r}, parallel={self.parallel})"
