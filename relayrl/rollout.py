"""``relayrl rollout CHECKPOINT``: replays a trained policy (no exploration) and prints each episode's return.

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
    env_name = args.env or manifest.get("env")
    if env_name is None:
        raise UserError("the checkpoint names no environment", "pass --env")
    try:
        creator = get_env_creator(env_name)
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
    mismatch = _space_mismatch(trainer, env)
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
    returns, steps = [], 0
    try:
        while (episodes is None or len(returns) < episodes) and (args.steps is None or steps < args.steps):
            seed = trainer.config.get("seed")
            obs, _ = env.reset(seed=None if seed is None else seed + len(returns))
            record: dict[str, list] = {"obs": [], "actions": [], "rewards": []}
            done = False
            while not done and (args.steps is None or steps < args.steps):
                action = trainer.compute_action(obs, explore=False)
                env_action = _clip_action(action, env.action_space) if trainer.config.get("clip_actions") else action
                next_obs, reward, terminated, truncated, _ = env.step(env_action)
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
    finally:
        if out:
            out.close()
        env.close()
        trainer.stop()
    if returns:
        print(f"mean return over {len(returns)} episodes: {float(np.mean(returns)):.2f}")
    return 0


def _space_mismatch(trainer: Any, env: Any) -> str:
    """Why ``env`` cannot be rolled out with the trainer's policy (spaces of another type or shape), or ''."""
    import gymnasium as gym

    trained_on = getattr(trainer.workers.local_worker(), "env", None)
    if trained_on is None or not hasattr(trained_on, "observation_space"):
        return ""

    def fits(a: gym.Space, b: gym.Space) -> bool:
        if type(a) is not type(b):
            return False
        return a.shape == b.shape if isinstance(a, gym.spaces.Box) else a == b

    problems = []
    for what in ("observation_space", "action_space"):
        have, want = getattr(env, what), getattr(trained_on, what)
        if not fits(have, want):
            problems.append(f"its {what.replace('_', ' ')} is {have}, the checkpoint's is {want}")
    return "; ".join(problems)


def _clip_action(action: Any, space: Any) -> Any:
    import gymnasium as gym
    import numpy as np

    if isinstance(space, gym.spaces.Box):
        return np.clip(action, space.low, space.high)
    if isinstance(space, (gym.spaces.Tuple, gym.spaces.Dict)):  # the Box leaves of a nested action
        from relayrl.models.spaces import flatten_action, unflatten_action

        return unflatten_action(flatten_action(action, space), space, clip=True)
    return action


def _jsonable(value: Any) -> Any:
    """An observation or action (numpy values, possibly in tuples / dicts) as JSON-ready lists and numbers."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return np.asarray(value).tolist()


# --- export ------------------------------------------------------------------------------------------------
