"""DeepMind-style Atari preprocessing (Mnih et al. 2015, "Methods"), from Gymnasium's own wrappers.

``wrap_deepmind(env)``: up to 30 no-op actions at reset, 4 frames per step (max-pooled over the last two),
84x84 grayscale, then the last 4 frames stacked channels-last into a ``(84, 84, 4)`` uint8 observation, the
layout of ``relayrl.models.visionnet.VisionNetwork``. ``get_env_creator`` applies it to every ALE id, with the
options of the trainer's model config (``framestack``, ``dim``, ``grayscale``, ``zero_mean``; see
``relayrl.models.catalog.MODEL_DEFAULTS`` and ``atari_options``), e.g. ``dim: 42`` gives ``(42, 42, 4)`` frames.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

# The model config keys that shape the Atari preprocessing.
ATARI_MODEL_KEYS = ("framestack", "dim", "grayscale", "zero_mean")
_DEFAULT_STACK = 4  # framestack: True


def is_atari(env: gym.Env) -> bool:
    spec = getattr(env, "spec", None)
    entry = getattr(spec, "entry_point", "") or ""
    return isinstance(entry, str) and entry.startswith("ale_py")


def atari_options(model_config: dict | None) -> dict[str, Any]:
    """``wrap_deepmind``'s keyword arguments from a model config (missing keys take MODEL_DEFAULTS)."""
    from relayrl.models.catalog import MODEL_DEFAULTS

    model = {**MODEL_DEFAULTS, **(model_config or {})}
    return {key: model[key] for key in ATARI_MODEL_KEYS}


def wrap_deepmind(
    env: gym.Env,
    dim: int = 84,
    framestack: bool | int = True,
    grayscale: bool = True,
    zero_mean: bool = False,
    noop_max: int = 30,
) -> gym.Env:
    """Observations ``(dim, dim, C * k)`` channels-last, the newest frame last, with C = 1 (grayscale) or 3 (RGB)
    and k = ``framestack`` frames (True: 4; False / 0 / 1: one frame); uint8 in [0, 255], or float32
    ``(x - 128) / 128`` in [-1, 1) with ``zero_mean`` (RLlib 2019's zero_mean scaling)."""
    # Ids with a built-in frame skip ("Deterministic", "ALE/...-v5") must not be skipped twice.
    built_in_skip = (env.spec.kwargs or {}).get("frameskip", 1) if env.spec else 1
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=noop_max,
        frame_skip=4 if built_in_skip == 1 else 1,
        screen_size=dim,
        grayscale_obs=grayscale,
        grayscale_newaxis=True,
    )
    channels = 1 if grayscale else 3
    frames = _DEFAULT_STACK if framestack is True else int(framestack or 1)
    if frames > 1:
        env = gym.wrappers.FrameStackObservation(env, frames)
        shape = (dim, dim, channels * frames)
        # [k, dim, dim, C] -> [dim, dim, k * C]: frame i's channels at i * C ... (i + 1) * C - 1.
        env = gym.wrappers.TransformObservation(
            env, lambda obs: np.moveaxis(np.asarray(obs), 0, 2).reshape(shape), gym.spaces.Box(0, 255, shape, np.uint8)
        )
    if zero_mean:
        shape = env.observation_space.shape
        space = gym.spaces.Box(-1.0, 127.0 / 128.0, shape, np.float32)
        env = gym.wrappers.TransformObservation(
            env, lambda obs: (np.asarray(obs, np.float32) - 128.0) * (1.0 / 128.0), space
        )
    return env
