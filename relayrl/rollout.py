"""``relayrl rollout CHECKPOINT``: replays a trained policy (no exploration) and prints each episode's return.

A multi-agent checkpoint steps its MultiAgentEnv with each agent's policy (the checkpoint's policy_mapping_fn, or
one given with ``--config '{"multiagent": {"policy_mapping_fn": "p{agent_id}"}}'``) and prints the episode's total
return and every agent's.

    relayrl rollout ~/ray_results/default/PPO_CartPole-v1_.../checkpoint_000003 --episodes 10 --out episodes.jsonl

The env comes from ``--env`` or the checkpoint's manifest and must have the spaces the policy was trained on;
``--video DIR`` records every episode, ``--render`` opens a window, ``--out`` writes one JSON line per episode.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from relayrl.cli import install_stop_handlers, parse_json
from relayrl.experiments import UserError


def run_rollout(args: argparse.Namespace) -> int:
    """``relayrl rollout CHECKPOINT``: the checkpoint's policy acts greedily in its env for --episodes / --steps."""
    import numpy as np

    from relayrl.agents.checkpoint import CheckpointError, read_manifest
    from relayrl.agents.trainer import Trainer
    from relayrl.agents.trainer_state import env_from_manifest
    from relayrl.env.multi_agent_env import MultiAgentEnv
    from relayrl.env.registry import EnvContext, get_env_creator

    overrides = parse_json(args.config, "--config")
    try:
        manifest = read_manifest(args.checkpoint)
    except CheckpointError as e:
        raise UserError(str(e), "pass a checkpoint directory printed by `relayrl train` (checkpoint_...)") from e
    if args.run and args.run != manifest["trainer"]:
        from relayrl.agents.registry import get_trainer_class

        try:
            get_trainer_class(args.run)
        except ValueError as e:
            raise UserError(str(e), f"this checkpoint was written by {manifest['trainer']}") from e
        raise UserError(
            f"checkpoint {args.checkpoint} was written by {manifest['trainer']}, not {args.run}",
            f"use --run {manifest['trainer']}",
        )
    env = args.env
    if env is None:
        try:
            env = env_from_manifest(args.checkpoint, manifest)
        except CheckpointError as e:
            raise UserError(str(e), "pass --env with a registered name or a Gymnasium id") from e
    if env is None:
        raise UserError("the checkpoint names no environment", "pass --env")
    env_name = env if isinstance(env, str) else manifest["env_callable"]
    try:
        creator = get_env_creator(env)
    except ValueError as e:
        raise UserError(str(e), "use a Gymnasium id such as CartPole-v1") from e
    overrides.setdefault("num_workers", 0)
    overrides.setdefault("evaluation_interval", None)
    overrides.setdefault("monitor", False)  # the trainer only acts here; --video records the rollout's env
    if args.video and args.render:
        raise UserError(
            "--video and --render both render the env",
            "--video records rgb_array frames to files, --render opens a window (render_mode='human'): pick one",
        )
    if args.video:
        from relayrl.env.video import require_moviepy

        try:
            require_moviepy("--video")
        except ValueError as e:
            raise UserError(str(e), "or roll out without --video") from e
    try:
        trainer = Trainer.from_checkpoint(args.checkpoint, overrides)
    except CheckpointError as e:
        raise UserError(str(e), "the checkpoint does not fit this relayrl or this trainer") from e
    except ValueError as e:
        raise UserError(str(e), "check --config against the trainer's DEFAULT_CONFIG") from e
    install_stop_handlers()  # again, in case remote workers (num_workers > 0 in --config) started Ray
    env_config = dict(trainer.config.get("env_config") or {})
    if args.render:
        env_config["render_mode"] = "human"
    # The trainer's model config: Atari ids get the preprocessing the checkpoint was trained with (dim, framestack).
    env = creator(EnvContext(env_config, model=trainer.config.get("model"), video_dir=args.video))
    if args.video:
        from relayrl.env.video import record_video

        try:
            env = record_video(env, args.video, "rollout", env_name, episode_trigger=lambda episode: True)
        except ValueError as e:
            env.close()
            trainer.stop()
            raise UserError(str(e), "roll out a Gymnasium id, or a registered env that renders rgb_array") from e
    multi_agent = isinstance(env, MultiAgentEnv)
    mismatch = _agent_space_mismatch(trainer, env) if multi_agent else _space_mismatch(trainer, env)
    if mismatch:
        env.close()
        trainer.stop()
        raise UserError(
            f"environment {env_name!r} does not fit the checkpoint: {mismatch}",
            f"roll out in the environment it was trained on ({manifest.get('env')}): drop --env or pass"
            f" --env {manifest.get('env')}"
            if manifest.get("env")
            else "pass the env it was trained on",
        )
    episodes = args.episodes if args.episodes is not None else (None if args.steps else 10)
    out = open(args.out, "w") if args.out else None
    try:
        episodes_of = _multi_agent_episodes if multi_agent else _episodes
        returns = episodes_of(trainer, env, args, episodes, out)
    finally:
        if out:
            out.close()
        env.close()
        trainer.stop()
    if returns:
        print(f"mean return over {len(returns)} episodes: {float(np.mean(returns)):.2f}")
    return 0


def _episodes(trainer: Any, env: Any, args: argparse.Namespace, episodes: int | None, out: Any) -> list:
    """Rolls out a Gymnasium env with the trainer's policy (greedily); prints each episode's return; returns them."""
    import numpy as np

    from relayrl.models.spaces import clip_action
    from relayrl.policy.sample_batch import DEFAULT_POLICY_ID

    returns, steps = [], 0
    policy_map = getattr(trainer.workers.local_worker(), "policy_map", {})  # none in ES / ARS: feed-forward
    policy = next(iter(policy_map.values())) if len(policy_map) == 1 else policy_map.get(DEFAULT_POLICY_ID)
    while (episodes is None or len(returns) < episodes) and (args.steps is None or steps < args.steps):
        seed = trainer.config.get("seed")
        obs, _ = env.reset(seed=None if seed is None else seed + len(returns))
        record: dict[str, list] = {"obs": [], "actions": [], "rewards": []}
        memory = start_memory(policy)  # a recurrent policy's state: reset at each episode's start
        done = False
        while not done and (args.steps is None or steps < args.steps):
            action = act(trainer, obs, DEFAULT_POLICY_ID, memory)
            env_action = clip_action(action, env.action_space) if trainer.config.get("clip_actions") else action
            next_obs, reward, terminated, truncated, _ = env.step(env_action)
            if memory is not None and "prev_reward" in memory:  # clipped as the sampler feeds it (clip_rewards)
                memory["prev_reward"] = _clip_reward(reward, trainer.config.get("clip_rewards"))
            if args.render:
                env.render()
            for key, value in (("obs", obs), ("actions", action), ("rewards", reward)):
                record[key].append(_jsonable(value))
            obs, steps, done = next_obs, steps + 1, terminated or truncated
        ret = float(np.sum(record["rewards"]))
        returns.append(ret)
        print(f"episode {len(returns):4d}  return {ret:10.2f}  length {len(record['rewards'])}", flush=True)
        if out:
            out.write(
                json.dumps({"episode": len(returns) - 1, "return": ret, "length": len(record["rewards"]), **record})
                + "\n"
            )
    return returns


def _multi_agent_episodes(trainer: Any, env: Any, args: argparse.Namespace, episodes: int | None, out: Any) -> list:
    """Rolls out a MultiAgentEnv: each agent acts with the policy the mapping function gives it (greedily); prints
    each episode's total return and every agent's; returns the totals."""
    import random
    from collections import defaultdict

    import numpy as np

    from relayrl.env.multi_agent_env import ALL
    from relayrl.evaluation.episode import MultiAgentEpisode
    from relayrl.evaluation.multi_agent_sampler import mapping_caller
    from relayrl.models.spaces import clip_action

    worker = trainer.workers.local_worker()
    mapping, seed = mapping_caller(worker.policy_mapping_fn, worker), trainer.config.get("seed")
    rng, clip = random.Random(seed), trainer.config.get("clip_actions")
    totals: list[float] = []
    per_agent: dict = defaultdict(list)  # (agent, policy) -> its returns
    steps = 0
    while (episodes is None or len(totals) < episodes) and (args.steps is None or steps < args.steps):
        episode = MultiAgentEpisode(0, rng, mapping)
        obs, _ = env.reset(seed=None if seed is None else seed + len(totals))
        returns: dict = defaultdict(float)
        memories: dict = {}  # agent -> its recurrent policy's state, from the agent's first step in this episode
        record: dict[str, list] = {"obs": [], "actions": [], "rewards": []}
        done = False
        while not done and (args.steps is None or steps < args.steps):
            actions = {}
            for agent, agent_obs in obs.items():
                pid = episode.policy_for(agent)
                if agent not in memories:
                    memories[agent] = start_memory(worker.policy_map.get(pid))  # unknown: compute_action says so
                action = act(trainer, agent_obs, pid, memories[agent])
                space = env.get_action_space(agent)
                actions[agent] = clip_action(action, space) if clip else action
            obs, rewards, terminateds, truncateds, _ = env.step(actions)
            if args.render:
                env.render()
            for agent, reward in rewards.items():
                episode.policy_for(agent)
                returns[agent] += float(reward)
                memory = memories.get(agent)
                if memory is not None and "prev_reward" in memory:  # as the sampler: the rewards since its action
                    memory["prev_reward"] += float(reward)
            for key, value in (("obs", obs), ("actions", actions), ("rewards", rewards)):
                record[key].append(_jsonable(value))
            left = {a for a in (*terminateds, *truncateds) if a != ALL and (terminateds.get(a) or truncateds.get(a))}
            obs = {a: o for a, o in obs.items() if a not in left}  # a final observation: that agent has left
            steps, done = steps + 1, bool(terminateds.get(ALL) or truncateds.get(ALL))
        order = [a for a in env.get_agent_ids() if a in returns]  # the env's order, then agents it did not declare
        returns = {a: returns[a] for a in order + [a for a in returns if a not in order]}
        total = float(sum(returns.values()))
        totals.append(total)
        agents = {f"{a} ({episode.policy_for(a)})": r for a, r in returns.items()}
        for agent, ret in returns.items():
            per_agent[(agent, episode.policy_for(agent))].append(ret)
        shown = ", ".join(f"{name} {ret:.2f}" for name, ret in agents.items())
        length = len(record["rewards"])
        print(f"episode {len(totals):4d}  return {total:10.2f}  length {length}  agents: {shown}", flush=True)
        if out:
            policies = {str(a): episode.policy_for(a) for a in returns}
            line = {"episode": len(totals) - 1, "return": total, "length": length, "policies": policies}
            out.write(json.dumps({**line, "agent_returns": _jsonable(dict(returns)), **record}) + "\n")
    for (agent, pid), rets in per_agent.items():
        print(f"agent {agent!r} (policy {pid!r}): mean return {float(np.mean(rets)):.2f} over {len(rets)} episodes")
    return totals


def start_memory(policy: Any) -> dict | None:
    """What a recurrent policy carries from one step of an agent to the next: ``{"state"}`` (the initial state),
    plus ``"prev_action"`` / ``"prev_reward"`` (zeros) when its model reads them; None for a feed-forward one (or
    None, a trainer without a policy map)."""
    import gymnasium as gym
    import numpy as np

    from relayrl.evaluation.sampler import wants_prev_action_reward

    if policy is None or not policy.is_recurrent():
        return None
    memory = {"state": policy.get_initial_state()}
    if wants_prev_action_reward(policy):
        space = policy.action_space
        discrete = isinstance(space, gym.spaces.Discrete)
        memory["prev_action"] = np.zeros((), np.int64) if discrete else np.zeros(space.shape, np.float32)
        memory["prev_reward"] = 0.0
    return memory


def act(trainer: Any, obs: Any, policy_id: str, memory: dict | None) -> Any:
    """The greedy action of ``policy_id`` for ``obs``; a recurrent policy's ``memory`` (start_memory) is used and
    updated: the state out, and this action as the next step's previous action (its reward not in yet: 0)."""
    if memory is None:
        return trainer.compute_action(obs, policy_id=policy_id, explore=False)
    prev_reward = memory.get("prev_reward")
    if prev_reward is not None:  # clipped as the samplers feed it (clip_rewards); clipping a clipped value is a no-op
        prev_reward = _clip_reward(prev_reward, trainer.config.get("clip_rewards"))
    action, memory["state"], _ = trainer.compute_action(
        obs, memory["state"], memory.get("prev_action"), prev_reward, policy_id=policy_id, explore=False
    )
    if "prev_action" in memory:
        memory["prev_action"], memory["prev_reward"] = action, 0.0
    return action


def _clip_reward(reward: float, clip: Any) -> float:
    """``reward`` as SyncSampler clips it (``clip_rewards``: True -> its sign, a number c -> [-c, c])."""
    import numpy as np

    if clip is True:
        return float(np.sign(reward))
    return float(np.clip(reward, -clip, clip)) if clip else float(reward)


def _agent_space_mismatch(trainer: Any, env: Any) -> str:
    """Why a MultiAgentEnv's agents cannot act with the checkpoint's policies (an agent mapped to no policy of it,
    or spaces of another type or shape than its policy's), or ''."""
    from relayrl.evaluation.multi_agent_sampler import mapping_caller

    worker = trainer.workers.local_worker()
    mapping = mapping_caller(worker.policy_mapping_fn, worker)
    problems = []
    for agent in env.get_agent_ids():
        pid = mapping(agent, None)
        if pid not in worker.policy_map:
            problems.append(f"agent {agent!r} maps to policy {pid!r}, which the checkpoint lacks")
            continue
        pairs = (
            ("observation space", env.get_observation_space(agent), worker.preprocessors[pid].obs_space),
            ("action space", env.get_action_space(agent), worker.policy_map[pid].action_space),
        )
        problems += [
            f"agent {agent!r}'s {what} is {have}, its policy {pid!r}'s is {want}"
            for what, have, want in pairs
            if not _fits(have, want)
        ]
    return "; ".join(problems)


def _fits(a: Any, b: Any) -> bool:
    import gymnasium as gym

    if type(a) is not type(b):
        return False
    return a.shape == b.shape if isinstance(a, gym.spaces.Box) else a == b


def _space_mismatch(trainer: Any, env: Any) -> str:
    """Why ``env`` cannot be rolled out with the trainer's policy (spaces of another type or shape), or ''."""

    trained_on = getattr(trainer.workers.local_worker(), "env", None)
    if trained_on is None or not hasattr(trained_on, "observation_space"):
        return ""

    problems = []
    for what in ("observation_space", "action_space"):
        have, want = getattr(env, what), getattr(trained_on, what)
        if not _fits(have, want):
            problems.append(f"its {what.replace('_', ' ')} is {have}, the checkpoint's is {want}")
    return "; ".join(problems)


def _jsonable(value: Any) -> Any:
    """An observation or action (numpy values, possibly in tuples / dicts) as JSON-ready lists and numbers."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return np.asarray(value).tolist()


# --- export ------------------------------------------------------------------------------------------------
