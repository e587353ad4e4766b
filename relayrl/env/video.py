"""Episode videos with Gymnasium's ``RecordVideo``: the ``monitor`` config key (sub-env 0 of every worker, into
the trial directory) and ``relayrl rollout --video DIR``. Needs moviepy, the ``video`` extra."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any, Callable

import gymnasium as gym

MOVIEPY_HINT = "pip install -e '.[video]'"


def require_moviepy(what: str = "monitor: True") -> None:
    """Raises ValueError naming ``what`` when moviepy (which RecordVideo writes mp4 files with) is missing."""
    if importlib.util.find_spec("moviepy") is None:
        raise ValueError(f"{what} needs moviepy: {MOVIEPY_HINT}")


def record_video(
    env: Any,
    video_dir: str,
    name_prefix: str,
    env_name: str | None = None,
    episode_trigger: Callable[[int], bool] | None = None,
) -> gym.Env:
    """``env`` wrapped in RecordVideo, writing ``<video_dir>/<name_prefix>-episode-<n>.mp4``. ``episode_trigger``
    None is RecordVideo's default schedule (episodes 0, 1, 8, 27, ..., 1000, 2000, ...). Raises ValueError when
    ``env`` cannot give rgb_array frames."""
    require_moviepy()
    name = env_name or getattr(getattr(env, "spec", None), "id", None) or type(env).__name__
    if not isinstance(env, gym.Env):
        raise ValueError(
            f"monitor: True records videos of gymnasium.Env environments; the creator of {name!r}"
            f" returned a {type(env).__name__}"
        )
    if env.render_mode not in ("rgb_array", "rgb_array_list"):
        raise ValueError(
            f"monitor: True needs an env that renders rgb_array frames, but {name!r} was made with render_mode="
            f"{env.render_mode!r}: a register_env creator should pass ctx.render_mode ('rgb_array' for the sub-env"
            " that records) to its env, e.g. gym.make(id, render_mode=ctx.render_mode)"
        )
    with warnings.catch_warnings():
        # Workers share the folder with files of their own prefix: nothing is overwritten.
        warnings.filterwarnings("ignore", message=".*Overwriting existing videos")
        return gym.wrappers.RecordVideo(env, video_dir, episode_trigger=episode_trigger, name_prefix=name_prefix)
