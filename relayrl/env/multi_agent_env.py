"""MultiAgentEnv: observations, rewards and done flags are dicts keyed by agent id; ``"__all__"`` ends the episode.

The API is Gymnasium's, per agent (as RLlib 2.x)::

    obs, infos = env.reset(seed=seed)
    while True:
        actions = {agent_id: policy_of(agent_id).act(o) for agent_id, o in obs.items() if not done(agent_id)}
        obs, rewards, terminateds, truncateds, infos = env.step(actions)
        if terminateds["__all__"] or truncateds["__all__"]:
            break

``MultiAgentEpisodeChecker`` checks an env against these rules with errors that name the env, the step and the
agent; the sampler runs it. ``make_multi_agent`` turns a single-agent env into N independent copies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from relayrl.env.env_checks import EnvChecker, EnvCheckError, _kind, describe_env
from relayrl.models.action_mask import ACTION_MASK, split_action_mask

ALL = "__all__"  # the key of terminateds / truncateds that ends the whole episode
MA_API = "MultiAgentEnv.step returns 5 dicts keyed by agent id: (obs, rewards, terminateds, truncateds, infos)"


class MultiAgentEnv:
    """An environment of several agents, each with its own observations, actions, rewards and end.

    Rules (the sampler relies on them; ``MultiAgentEpisodeChecker`` enforces them):

    - Agent ids are any hashable (ints, strings); ``"__all__"`` is reserved.
    - ``reset()`` returns ``(obs, infos)``; ``step(actions)`` returns ``(obs, rewards, terminateds, truncateds,
      infos)``; all are dicts keyed by agent id, and ``terminateds`` / ``truncateds`` always hold ``"__all__"``:
      True in either ends the episode (every agent still in it ends with it).
    - **The agents in an observation dict act next**: ``step`` gets an action for each of them and for no other.
      Simultaneous play (every agent each step), turn-based play (one agent per step) and any other order follow.
      Every step asks at least one agent to act, or ends the episode.
    - An observation of an agent whose own ``terminateds`` / ``truncateds`` entry is True in the same step is its
      final observation: that agent has left (see below) and is not asked to act.
    - A reward may name an agent that did not act this step (e.g. the loser of a turn-based game when the winner
      moves): it is added to that agent's last step. A reward needs a step to land on: a non-zero reward for an
      agent that had no observation before this step (none yet, or only its first one now) is an error.
    - An agent may appear for the first time at any step (its first observation) and may leave before the
      episode ends (its own ``terminateds[id]`` or ``truncateds[id]`` True, with or without a final observation);
      a left agent never appears again in that episode (no observation, reward or done flag).
    - Spaces: ``observation_space`` / ``action_space`` shared by all agents, or per-agent dicts
      ``observation_spaces`` / ``action_spaces`` keyed by agent id (a per-agent entry wins over the shared
      space); ``get_observation_space(id)`` / ``get_action_space(id)`` resolve them. ``possible_agents`` lists
      every id that may appear (None: not declared; then per-agent space dicts, if any, name them).
    - Action masks: a Dict observation with an ``action_mask`` entry (PettingZoo's convention,
      ``relayrl.models.action_mask``) makes the actions whose entry is 0 illegal; an all-zero mask is an error.
    """

    observation_space: gym.Space | None = None
    action_space: gym.Space | None = None
    observation_spaces: dict[Hashable, gym.Space] | None = None
    action_spaces: dict[Hashable, gym.Space] | None = None
    possible_agents: list[Hashable] | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        raise NotImplementedError

    def step(self, action_dict: dict) -> tuple[dict, dict, dict, dict, dict]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def render(self) -> Any:
        return None

    def get_agent_ids(self) -> list[Hashable]:
        """``possible_agents``, else the keys of the per-agent space dicts, else [] (ids not declared)."""
        if self.possible_agents is not None:
            return list(self.possible_agents)
        return list(self.observation_spaces or self.action_spaces or [])

    def get_observation_space(self, agent_id: Hashable) -> gym.Space:
        return _space(self, agent_id, "observation")

    def get_action_space(self, agent_id: Hashable) -> gym.Space:
        return _space(self, agent_id, "action")


def _space(env: Any, agent_id: Hashable, kind: str) -> gym.Space:
    per_agent = getattr(env, f"{kind}_spaces", None)
    if per_agent is not None and agent_id in per_agent:
        return per_agent[agent_id]
    shared = getattr(env, f"{kind}_space", None)
    if isinstance(shared, gym.Space):
        return shared
    raise KeyError(
        f"{describe_env(env)} has no {kind} space for agent {agent_id!r}: set {kind}_space (shared) or "
        f"{kind}_spaces[{agent_id!r}]"
    )


class MultiAgentEpisodeChecker:
    """Checks one MultiAgentEnv's episodes against the rules of ``MultiAgentEnv``, step by step::

        checker = MultiAgentEpisodeChecker(env, "'my-env' (MyEnv)", worker_index=1, index=0)
        obs, infos = checker.reset(env.reset(seed=seed))
        while True:
            actions = {a: act(a, obs[a]) for a in checker.acting}    # the agents asked to act, in obs order
            checker.actions(actions)                                  # raises before the env sees a bad dict
            obs, rewards, terminateds, truncateds, infos = checker.step(env.step(actions))
            if checker.episode_over:
                break

    Every problem is an ``EnvCheckError`` whose one-line message names the env, the worker, the sub-env, the
    step and the agent. ``check_spaces = False`` skips the per-step space and mask checks (the costly part) but
    keeps the structural ones, which the bookkeeping of agents needs anyway.
    """

    def __init__(
        self,
        env: Any,
        env_name: str | None = None,
        worker_index: int = 0,
        index: int = 0,
        check_nan: bool = True,
        action_mask_key: str | None = ACTION_MASK,
        check_spaces: bool = True,
    ):
        self.env = env
        self.index = index
        self.check_spaces = check_spaces
        self.action_mask_key = action_mask_key
        self._fmt = EnvChecker(None, describe_env(env, env_name), worker_index, check_nan)  # messages, obs checks
        self._known = set(getattr(env, "possible_agents", None) or [])
        self._spaces: dict[Hashable, tuple[gym.Space, int]] = {}  # agent -> (obs space, mask size)
        self._act_spaces: dict[Hashable, gym.Space | None] = {}
        self.steps = 0  # step() calls since the checker was made (all episodes)
        self.episode_step: int | None = None  # steps in the current episode; None before the first reset
        self._acting: Any = {}.keys()  # the agents asked to act (``acting``), in obs order, as a set-like view
        self.left: dict[Hashable, int] = {}  # agent -> the episode step at which it left
        self.seen: set[Hashable] = set()  # agents that had an observation in this episode
        self.episode_over = True
        self._masks: dict[Hashable, np.ndarray] = {}  # agent -> its latest action mask (acting agents)

    def error(self, problem: str, agent: Any = None, upcoming: bool = False) -> EnvCheckError:
        """The error of the step just returned, or with ``upcoming`` of the step the actions are for."""
        who = "" if agent is None else f"agent {agent!r}: "
        step, episode_step = self.steps, self.episode_step
        if upcoming and episode_step is not None:
            step, episode_step = step + 1, episode_step + 1
        return self._fmt.error(self.index, step, episode_step, who + problem)

    @property
    def acting(self) -> list[Hashable]:
        """The agents asked to act next, in obs order."""
        return list(self._acting)

    @acting.setter
    def acting(self, agents: Any) -> None:
        self._acting = dict.fromkeys(agents).keys()

    # --- reset, actions, step ------------------------------------------------------------------------------------
    def reset(self, result: Any) -> tuple[dict, dict]:
        """Checks a ``reset()`` result, starts a new episode and returns ``(obs, infos)``."""
        self.episode_step, self.left, self.seen, self._masks = None, {}, set(), {}
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            got = f"{len(result)} values" if isinstance(result, (tuple, list)) else _kind(result)
            raise self.error(f"reset() returned {got}; MultiAgentEnv.reset returns (obs_dict, info_dict)")
        obs, infos = result
        self._dicts(("obs", obs), ("infos", infos), source="reset()")
        if not obs:
            raise self.error("reset() returned no observation: at least one agent must be asked to act first")
        self._observations(obs, set(), "reset()")
        self.acting, self.seen, self.episode_over = list(obs), set(obs), False
        self.episode_step = 0
        return obs, infos

    def actions(self, action_dict: Any) -> None:
        """Checks the actions about to go to ``step()``: a dict with one action for each agent asked to act (and
        none masked out by its observation's action mask). Messages name the step the actions are for."""
        if type(action_dict) is dict and action_dict.keys() == self._acting and not self._masks:
            if not self.episode_over:
                return  # one action for each agent asked, none masked to check
        if self.episode_over:
            raise self.error("actions given after the episode ended (or before the first reset); call reset()")
        if not isinstance(action_dict, Mapping):
            raise self.error(f"the actions are {_kind(action_dict)}, not a dict keyed by agent id", upcoming=True)
        for agent, action in action_dict.items():
            if agent not in self.acting:
                why = (
                    f"which left at step {self.left[agent]} of this episode"
                    if agent in self.left
                    else "which was not asked to act (not in the last observation dict, or it ended there)"
                )
                raise self.error(
                    f"an action was given for it, {why}; agents asked to act: {self.acting}", agent, upcoming=True
                )
            mask = self._masks.get(agent)
            if mask is not None and np.ndim(action) == 0:
                space = self._action_space(agent)
                i = int(action) - int(space.start) if isinstance(space, gym.spaces.Discrete) else None
                if i is not None and (not 0 <= i < len(mask) or not mask[i]):
                    raise self.error(
                        f"action {action!r} is illegal: its observation's {self.action_mask_key!r} is"
                        f" {mask.astype(int).tolist()}",
                        agent,
                        upcoming=True,
                    )
        missing = [a for a in self.acting if a not in action_dict]
        if missing:
            raise self.error(
                f"no action given, although it was asked to act (missing: {missing})", missing[0], upcoming=True
            )

    def step(self, result: Any) -> tuple[dict, dict, dict, dict, dict]:
        """Checks a ``step()`` result, updates who acts next (``acting``), who left, ``episode_over``; returns it."""
        if not self.check_spaces and self._plain_step(result):
            return result
        self.steps += 1
        self.episode_step = (self.episode_step or 0) + 1
        if not isinstance(result, (tuple, list)) or len(result) != 5:
            got = f"{len(result)} values" if isinstance(result, (tuple, list)) else _kind(result)
            raise self.error(f"step() returned {got}; {MA_API}")
        obs, rewards, terminateds, truncateds, infos = result
        if isinstance(rewards, Mapping) and any(r is None for r in rewards.values()):  # RLlib-era: no reward
            rewards = {agent: r for agent, r in rewards.items() if r is not None}
        self._dicts(
            ("obs", obs),
            ("rewards", rewards),
            ("terminateds", terminateds),
            ("truncateds", truncateds),
            ("infos", infos),
            source="step()",
        )
        for name, flags in (("terminateds", terminateds), ("truncateds", truncateds)):
            if ALL not in flags:
                raise self.error(f"step() returned {name} without {ALL!r} (True ends the episode): {MA_API}")
            for agent, flag in flags.items():
                if not isinstance(flag, (bool, np.bool_)):
                    raise self.error(f"{name}[{agent!r}] is {_kind(flag)}, not a bool")
        for name, d in (("obs", obs), ("rewards", rewards), ("terminateds", terminateds), ("truncateds", truncateds)):
            for agent in d:
                if agent != ALL:
                    self._check_known(agent)
                if agent in self.left:
                    raise self.error(
                        f"it is in step()'s {name} after it left at step {self.left[agent]} of this "
                        "episode; a left agent never reappears in its episode",
                        agent,
                    )
        ended = {a for a in terminateds if a != ALL and terminateds[a]}
        ended |= {a for a in truncateds if a != ALL and truncateds[a]}
        over = bool(terminateds[ALL] or truncateds[ALL])
        self._masks = {}
        self._observations(obs, ended if not over else set(obs), "step()")
        self._rewards(rewards)  # before this step's observations count: a first observation has no step yet
        self.seen.update(obs)
        for agent in ended:
            if agent not in self.seen:
                raise self.error(
                    "it is done in step()'s terminateds / truncateds but has had no observation in this episode", agent
                )
            self.left[agent] = self.episode_step
        self.acting = [] if over else [a for a in obs if a not in ended]
        if not over and not self.acting:
            raise self.error(
                f"step() asked no agent to act (no observation of a live agent) and did not end the "
                f"episode ({ALL!r} in terminateds / truncateds)"
            )
        self.episode_over = over
        return obs, rewards, terminateds, truncateds, infos

    def _plain_step(self, result: Any) -> bool:
        """The common step, checked in a few set operations: plain dicts, bool flags with ``"__all__"``, none that
        left reappears, each agent that ends now had an observation, someone acts next unless the episode ends, no
        agent new to the episode gets a reward, finite rewards. Anything else returns False before changing any
        state, and ``step`` checks it rule by rule (with the error messages)."""
        if type(result) is not tuple or len(result) != 5:
            return False
        obs, rewards, terms, truncs, infos = result
        if type(obs) is not dict or type(rewards) is not dict or type(terms) is not dict or type(truncs) is not dict:
            return False
        if not obs or ALL in obs or ALL in rewards or (type(infos) is not dict and not isinstance(infos, Mapping)):
            return False
        left = self.left
        if left and not (left.keys().isdisjoint(obs) and left.keys().isdisjoint(rewards)):
            return False
        if ALL not in terms or ALL not in truncs:
            return False
        if left and not (left.keys().isdisjoint(terms) and left.keys().isdisjoint(truncs)):
            return False
        ends = False
        for flag in (*terms.values(), *truncs.values()):  # Python's False passes at once
            if flag is not False:
                if flag is not True and type(flag) is not np.bool_:
                    return False
                ends = ends or bool(flag)
        if (self._known and not self._known.issuperset(obs)) or not self.seen.issuperset(rewards):
            return False
        try:  # numbers (a str or None raises), finite (when not, or on overflow, the full check decides)
            if not math.isfinite(sum(rewards.values())):
                return False
        except TypeError:
            return False
        if not ends:
            self.steps += 1
            self.episode_step += 1
            self.seen.update(obs)
            self._acting = dict.fromkeys(obs).keys()  # a copy: an env may reuse and change its obs dict
            if self._masks:
                self._masks = {}
            return True
        over = bool(terms[ALL] or truncs[ALL])
        ended = {a for a, f in terms.items() if f and a != ALL} | {a for a, f in truncs.items() if f and a != ALL}
        acting = [] if over else [a for a in obs if a not in ended]
        if not (over or acting) or not ended <= self.seen.union(obs):
            return False
        self.steps += 1
        self.episode_step += 1
        self.seen.update(obs)
        for agent in ended:
            left[agent] = self.episode_step
        self.acting, self.episode_over = acting, over
        self._masks = {}
        return True

    # --- parts -----------------------------------------------------------------------------------------------------
    def _dicts(self, *named: tuple[str, Any], source: str) -> None:
        for name, value in named:
            if not isinstance(value, Mapping):
                raise self.error(f"{source} returned {_kind(value)} as {name}, not a dict keyed by agent id")
        for name, value in named:
            if name in ("obs", "rewards") and ALL in value:
                raise self.error(
                    f"{source} returned {name} with the key {ALL!r}, which is reserved for the"
                    " episode's end in terminateds / truncateds"
                )

    def _check_known(self, agent: Hashable) -> None:
        if self._known and agent not in self._known:
            raise self.error(f"it is not one of the env's possible_agents {sorted(self._known, key=str)}", agent)

    def _action_space(self, agent: Hashable) -> gym.Space | None:
        if agent not in self._act_spaces:
            try:
                self._act_spaces[agent] = _space(self.env, agent, "action")
            except KeyError:
                self._act_spaces[agent] = None  # the sampler reports a missing action space when it builds policies
        return self._act_spaces[agent]

    def _agent_space(self, agent: Hashable) -> tuple[gym.Space, int]:
        if agent not in self._spaces:
            self._check_known(agent)
            try:
                space = _space(self.env, agent, "observation")
            except KeyError as e:
                raise self.error(str(e.args[0]), agent) from None
            mask = split_action_mask(space, self.action_mask_key)[1] if self.action_mask_key else 0
            self._spaces[agent] = (space, mask)
        return self._spaces[agent]

    def _observations(self, obs: Mapping, final: set, source: str) -> None:
        for agent, o in obs.items():
            space, mask_size = self._agent_space(agent)
            if not self.check_spaces:
                continue
            problem = self._fmt._obs_problem(space, o, "")
            if problem is not None:
                raise self.error(
                    f"{source} returned an observation that {problem}; its observation space is {space}", agent
                )
            if mask_size and agent not in final:
                mask = np.asarray(o[self.action_mask_key]) != 0
                if not mask.any():
                    raise self.error(f"its observation's {self.action_mask_key!r} is all zeros: no legal action", agent)
                self._masks[agent] = mask

    def _rewards(self, rewards: Mapping) -> None:
        for agent, r in rewards.items():
            if isinstance(r, np.ndarray) and r.shape == ():
                r = r[()]
            if not isinstance(r, (int, float, np.integer, np.floating, np.bool_)):
                raise self.error(f"its reward is {_kind(r)}, not a number", agent)
            if self._fmt.check_nan and not np.isfinite(r):
                raise self.error(f"its reward is {float(r)}; rewards must be finite", agent)
            if agent not in self.seen and r != 0:
                raise self.error(
                    f"it gets reward {float(r)} but had no observation (no step) before this one in "
                    "this episode to add it to",
                    agent,
                )


# --- N independent copies of a single-agent env --------------------------------------------------------------------
class IndependentCopiesEnv(MultiAgentEnv):
    """``num_agents`` independent copies of a single-agent Gymnasium env, agent ids ``0 .. num_agents - 1``, all
    acting every step; a copy whose episode ends leaves (its agent is done) and the episode ends when all have.
    Shared spaces (those of copy 0). ``reset(seed=s)`` seeds copy i with ``s + i``."""

    def __init__(self, make_one: Callable[[int], gym.Env], num_agents: int):
        if num_agents < 1:
            raise ValueError(f"num_agents must be >= 1, got {num_agents}")
        self.envs = [make_one(i) for i in range(num_agents)]
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.possible_agents = list(range(num_agents))
        self._live: set[int] = set()
        self._any_truncated = False

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = {}, {}
        for i, env in enumerate(self.envs):
            obs[i], infos[i] = env.reset(seed=None if seed is None else seed + i, options=options)
        self._live, self._any_truncated = set(self.possible_agents), False
        return obs, infos

    def step(self, action_dict: dict) -> tuple[dict, dict, dict, dict, dict]:
        obs, rewards, terminateds, truncateds, infos = {}, {}, {}, {}, {}
        envs = self.envs
        for i, action in action_dict.items():
            obs[i], rewards[i], terminated, truncated, infos[i] = envs[i].step(action)
            if terminated or truncated:
                terminated, truncated = bool(terminated), bool(truncated)
                self._live.discard(i)
                self._any_truncated |= truncated and not terminated
                terminateds[i], truncateds[i] = terminated, truncated
            else:
                terminateds[i] = truncateds[i] = False
        done = not self._live
        truncateds[ALL] = done and self._any_truncated
        terminateds[ALL] = done and not truncateds[ALL]
        return obs, rewards, terminateds, truncateds, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _make_copies(env: Any, num_agents: int, ctx: Any = None) -> IndependentCopiesEnv:
    from relayrl.env.registry import EnvContext, get_env_creator

    ctx = ctx if isinstance(ctx, EnvContext) else EnvContext(ctx)
    creator = get_env_creator(env)
    n = int(ctx.get("num_agents", num_agents))
    inner = EnvContext(
        {k: v for k, v in ctx.items() if k != "num_agents"},
        ctx.worker_index,
        ctx.vector_index,
        model=ctx.model,
        video_dir=None,
    )
    return IndependentCopiesEnv(lambda i: creator(inner), n)


def make_multi_agent(env: Any, num_agents: int = 2) -> Callable[[Any], IndependentCopiesEnv]:
    """An env creator (for ``register_env``) of ``num_agents`` independent copies of ``env`` (a Gymnasium id, a
    registered name or a creator); ``env_config["num_agents"]`` overrides the number, the rest of ``env_config``
    goes to each copy::

        register_env("multi_cartpole", make_multi_agent("CartPole-v1", 2))
    """
    return functools.partial(_make_copies, env, num_agents)
