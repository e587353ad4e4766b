"""Checks of what an environment hands the sampler: Gymnasium's reset/step API, observations against the
observation space, and NaN/inf in observations and rewards.

    checker = EnvChecker(observation_space, "'MyEnv-v0' (MyEnv)", worker_index=1, check_nan=True)
    obs = checker.reset_result(i, steps, env.reset(seed=seed))      # -> the observation
    checker.step_result(i, steps, episode_step, env.step(action))  # raises EnvCheckError
    checker.fragment(...)                                           # NaN/inf scan of a whole fragment (numpy)

Every message is one line (``relayrl train`` and Tune show the last line of a trial's traceback) and names the
env, the worker, the sub-env, the step and the problem, and points to the Gymnasium API where that is the cause.
``RolloutWorker`` runs these checks through ``CheckedVectorEnv`` (relayrl/env/vector_env.py) for the first
``check_env`` steps of each sub-env; the fragment scan (``check_nan``) runs on every fragment.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

logger = logging.getLogger(__name__)

STEP_API = (
    "Gymnasium's API returns 5: (obs, reward, terminated, truncated, info) — see "
    "https://gymnasium.farama.org/api/env/#gymnasium.Env.step"
)
RESET_URL = "https://gymnasium.farama.org/api/env/#gymnasium.Env.reset"
RESET_API = f"Gymnasium's API returns (obs, info) — see {RESET_URL}"
SPACES_DOC = "see https://gymnasium.farama.org/api/spaces/"


class EnvCheckError(ValueError):
    """An environment broke Gymnasium's API, returned an observation that does not fit its observation space, or
    a NaN/inf observation or reward. The message names the env, the worker, the sub-env index, the step and the
    problem. Checks: config keys ``check_env`` and ``check_nan``."""


EnvCheckError.__module__ = "relayrl.env"  # where users import it from (and how tracebacks name it)


def describe_env(env: Any, name: Any = None) -> str:
    """``'CartPole-v1' (CartPoleEnv)``: the config's env name (or the Gymnasium id) and the env's class."""
    inner = getattr(env, "unwrapped", env)
    cls = type(inner).__name__
    spec = getattr(env, "spec", None)
    label = name if isinstance(name, str) else getattr(spec, "id", None)
    return f"{label!r} ({cls})" if label and label != cls else cls


def _kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an ndarray of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, (str, bytes)):
        return f"a {type(value).__name__} {value[:40]!r}"
    return f"a {type(value).__name__}"


class EnvChecker:
    """The checks of one worker's sub-envs (their observation space, the env's name for the messages)."""

    def __init__(self, observation_space: gym.Space, env_name: str, worker_index: int = 0, check_nan: bool = True):
        self.space = observation_space
        self.env_name = env_name
        self.worker_index = worker_index
        self.check_nan = check_nan
        self._warned_bounds = False

    def error(self, index: int, step: int, episode_step: int | None, problem: str) -> EnvCheckError:
        """``step``: the sub-env's step() calls since the worker started (1-based); ``episode_step`` None: a reset
        after ``step`` steps."""
        if episode_step is None:
            when = "first reset" if step == 0 else f"reset after step {step}"
        else:
            when = f"step {step} (step {episode_step} of its episode)"
        return EnvCheckError(f"env {self.env_name}, worker {self.worker_index}, sub-env {index}, {when}: {problem}")

    # --- reset and step results --------------------------------------------------------------------------------
    def reset_result(self, index: int, step: int, result: Any) -> Any:
        """Checks a ``reset()`` result and returns its observation. ``step``: the sub-env's steps so far."""
        if not isinstance(result, (tuple, list)) or len(result) != 2 or not isinstance(result[1], dict):
            if isinstance(result, (tuple, list)) and len(result) == 2:
                got = f"2 values whose second is {_kind(result[1])}, not the info dict"
            elif isinstance(result, (tuple, list)):
                got = f"{len(result)} values"
            else:
                got = f"only {_kind(result)} (the observation without the info dict?)"
            raise self.error(index, step, None, f"reset() returned {got}; {RESET_API}")
        self.observation(index, step, None, result[0], "reset()")
        return result[0]

    def step_result(self, index: int, step: int, episode_step: int, result: Any) -> None:
        """Checks one sub-env's ``step()`` result (a 5-tuple)."""
        if not isinstance(result, (tuple, list)):
            raise self.error(index, step, episode_step, f"step() returned {_kind(result)}, not a tuple; {STEP_API}")
        if len(result) != 5:
            old = " (the old gym API's (obs, reward, done, info))" if len(result) == 4 else ""
            raise self.error(index, step, episode_step, f"step() returned {len(result)} values{old}; {STEP_API}")
        obs, reward, terminated, truncated, info = result
        self.observation(index, step, episode_step, obs, "step()")
        self.reward(index, step, episode_step, reward)
        for name, flag in (("terminated", terminated), ("truncated", truncated)):
            if not isinstance(flag, (bool, np.bool_)) and not (isinstance(flag, (int, np.integer)) and flag in (0, 1)):
                raise self.error(
                    index, step, episode_step, f"step() returned {_kind(flag)} as {name}, not a bool; {STEP_API}"
                )
        if not isinstance(info, dict):
            raise self.error(
                index, step, episode_step, f"step() returned {_kind(info)} as info, not a dict; {STEP_API}"
            )

    def reward(self, index: int, step: int, episode_step: int, reward: Any) -> None:
        if isinstance(reward, np.ndarray) and reward.shape == ():
            reward = reward[()]
        if not isinstance(reward, (int, float, np.integer, np.floating, np.bool_)):
            raise self.error(
                index, step, episode_step, f"step() returned {_kind(reward)} as the reward, not a number; {STEP_API}"
            )
        if self.check_nan and not np.isfinite(reward):
            raise self.error(index, step, episode_step, f"the reward is {float(reward)}; rewards must be finite")

    # --- observations ------------------------------------------------------------------------------------------
    def observation(self, index: int, step: int, episode_step: int | None, obs: Any, source: str) -> None:
        problem = self._obs_problem(self.space, obs, "")
        if problem is not None:
            raise self.error(
                index,
                step,
                episode_step,
                f"{source} returned an observation that {problem}; observation_space is {self.space}",
            )

    def _obs_problem(self, space: gym.Space, obs: Any, path: str) -> str | None:
        """Why ``obs`` does not fit ``space`` (None when it does). ``path`` names the part of a Dict/Tuple."""
        at = f" at {path}" if path else ""
        if isinstance(space, gym.spaces.Dict):
            if not isinstance(obs, Mapping):
                return f"is {_kind(obs)}{at}, not a dict"
            missing = [k for k in space.spaces if k not in obs]
            if missing:
                return f"lacks the key(s) {missing}{at}"
            return next(
                (p for k, s in space.spaces.items() if (p := self._obs_problem(s, obs[k], f"{path}[{k!r}]"))), None
            )
        if isinstance(space, gym.spaces.Tuple):
            if not isinstance(obs, Sequence) or isinstance(obs, (str, bytes)) or len(obs) != len(space.spaces):
                return f"is {_kind(obs)}{at}, not a tuple of {len(space.spaces)}"
            return next(
                (p for j, s in enumerate(space.spaces) if (p := self._obs_problem(s, obs[j], f"{path}[{j}]"))), None
            )
        if not isinstance(
            space, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)
        ):
            return None if space.contains(obs) else f"is not in its space{at} ({SPACES_DOC})"
        if isinstance(obs, (str, bytes)) or (isinstance(obs, np.ndarray) and obs.dtype.kind in "USO"):
            return f"is {_kind(obs)}{at}, not numbers ({SPACES_DOC})"
        try:
            arr = np.asarray(obs)
        except ValueError as e:  # a ragged list
            return f"is not an array{at} ({e})"
        if arr.dtype.kind not in "biuf":
            return f"is {_kind(arr)}{at}, not numbers ({SPACES_DOC})"
        if arr.shape != space.shape:
            return f"has shape {arr.shape}{at}, not the space's {space.shape}"
        if not np.can_cast(arr.dtype, space.dtype, casting="same_kind"):
            return f"has dtype {arr.dtype}{at}, which does not cast to the space's {space.dtype}"
        if arr.dtype.kind == "f" and self.check_nan and not np.isfinite(arr).all():
            bad = tuple(int(j) for j in np.argwhere(~np.isfinite(arr))[0])
            value = arr[bad] if bad else arr[()]
            return f"contains {value}{at}" + (f" (first at index {list(bad)})" if bad else "")
        if isinstance(space, gym.spaces.Discrete):
            if not space.start <= int(arr) < space.start + space.n:
                return f"is {int(arr)}{at}, outside Discrete({space.n}, start={space.start})"
        elif isinstance(space, gym.spaces.MultiDiscrete):
            if ((arr < space.start) | (arr >= space.start + space.nvec)).any():
                return f"is {arr.tolist()}{at}, outside MultiDiscrete({space.nvec.tolist()})"
        elif isinstance(space, gym.spaces.Box) and not self._warned_bounds:
            if (arr < space.low).any() or (arr > space.high).any():
                self._warned_bounds = True  # out of bounds is often harmless (velocities): warned once, not raised
                logger.warning(
                    "env %s, worker %d: an observation%s is outside observation_space %s (warned once)",
                    self.env_name,
                    self.worker_index,
                    at,
                    space,
                )
        return None

    # --- one fragment at a time (numpy, after the per-step window) -----------------------------------------------
    def fragment(self, column: str, values: np.ndarray, first_step: int, episode_steps: np.ndarray) -> None:
        """Raises for the first NaN/inf of a ``[T, num_envs, ...]`` array of one fragment: ``column`` is "reward",
        "observation" (those step() returned) or "reset observation". ``first_step``: the sub-envs' steps before
        this fragment; ``episode_steps[t, i]``: sub-env i's steps in its episode before row t."""
        if values.dtype.kind != "f" or np.isfinite(values.sum()):
            return  # one pass for the common case; the sum is only inf by overflow, which the search below skips
        hits = np.argwhere((~np.isfinite(values.reshape(values.shape[:2] + (-1,)))).any(axis=2))
        if not len(hits):
            return
        t, i = (int(x) for x in hits[0])
        value = values[t, i]
        shown = value if np.ndim(value) == 0 else value[~np.isfinite(value)][0]
        if column == "reward":
            raise self.error(
                i,
                first_step + t + 1,
                int(episode_steps[t, i]) + 1,
                f"the reward is {float(shown)}; rewards must be finite",
            )
        source = "reset()" if column == "reset observation" else "step()"
        problem = (
            f"{source} returned an observation that contains {shown} (as the policy sees it, after the "
            f"preprocessor and the observation filter); observation_space is {self.space}"
        )
        if source == "reset()":
            raise self.error(i, first_step + t, None, problem)
        raise self.error(i, first_step + t + 1, int(episode_steps[t, i]) + 1, problem)
