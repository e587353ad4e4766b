"""DeepMind-style Atari preprocessing (Mnih et al. 2015, "Methods"), from Gymnasium's own wrappers.

``wrap_deepmind(env)``: up to 30 no-op actions at reset, 4 frames per step (max-pooled over the last two),
84x84 grayscale, then the last 4 frames stacked channels-last into a ``(84, 84, 4)`` uint8 observation, the
layout of ``relayrl.models.visionnet.VisionNetwork``. ``get_env_creator`` applies it to every ALE id.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def is_atari(env: gym.Env) -> bool:
    spec = getattr(env, "spec", None)
    entry = getattr(spec, "entry_point", "") or ""
    return isinstance(entry, str) and entry.startswith("ale_py")


def wrap_deepmind(env: gym.Env, dim: int = 84, framestack: int = 4, noop_max: int = 30) -> gym.Env:
    # Ids with a built-in frame skip ("Deterministic", "ALE/...-v5") must not be skipped twice.
    built_in_skip = (env.spec.kwargs or {}).get("frameskip", 1) if env.spec else 1
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=noop_max, frame_skip=4 if built_in_skip == 1 else 1, screen_size=dim, grayscale_obs=True
    )
    if framestack:
        env = gym.wrappers.FrameStackObservation(env, framestack)
        space = gym.spaces.Box(0, 255, (dim, dim, framestack), np.uint8)
        env = gym.wrappers.TransformObservation(env, lambda obs: np.moveaxis(np.asarray(obs), 0, -1), space)
    return env
