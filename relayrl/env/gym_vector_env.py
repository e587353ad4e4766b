"""Gymnasium's vector envs (``gym.make_vec``, ``SyncVectorEnv``, ``AsyncVectorEnv``) as a worker's sub-envs.

An env creator may return one: its ``num_envs`` sub-envs become the worker's, the policy is built on its
``single_observation_space`` / ``single_action_space``, and an ``AsyncVectorEnv`` steps them in subprocesses
(closed by ``RolloutWorker.stop()``):

    register_env("cartpole8", lambda ctx: gym.vector.AsyncVectorEnv(
        [lambda: gym.make("CartPole-v1")] * 8, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP))
    PPOTrainer(env="cartpole8", config={"num_envs_per_worker": 1})   # 8 sub-envs per worker

relayrl's sampler resets each finished sub-env itself, at the step its episode ends (``reset_at(i)``), and keeps
the last observation of the episode (``new_obs``, used to bootstrap values at a truncation). How each
Gymnasium autoreset mode (https://farama.org/Vector-Autoreset-Mode) maps onto that:

- ``SAME_STEP`` (the fastest): the vector env resets a finished sub-env inside ``step()`` (in the subprocess
  for ``AsyncVectorEnv``) and puts the final observation and info into ``infos``; here they take the reset
  observation's place, which ``reset_at(i)`` then hands over without another call.
- ``NEXT_STEP`` (Gymnasium's default) and ``DISABLED``: ``step()`` returns the final observation;
  ``reset_at(i)`` resets sub-env ``i`` alone with ``reset(options={"reset_mask": mask})``, one more round trip
  per finished episode. A vector env that resets one step late and cannot reset one sub-env alone (e.g. what
  ``gym.make_vec("CartPole-v1")`` returns by default, CartPole's own ``CartPoleVectorEnv``) is rejected with a
  ValueError that says how to make a ``SyncVectorEnv`` / ``AsyncVectorEnv`` of the same id instead.

``num_envs_per_worker`` must stay 1 with such an env: the vector env decides the number of sub-envs.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import concatenate, create_empty_array, iterate

from relayrl.env.vector_env import VectorEnv

logger = logging.getLogger(__name__)

_ARRAY_SPACES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)
_FIX = (
    "gym.make_vec(id, num_envs=N, vectorization_mode='async' (or 'sync'), "
    "vector_kwargs={'autoreset_mode': gym.vector.AutoresetMode.SAME_STEP})"
)


class GymVectorEnvAdapter(VectorEnv):
    """A ``gymnasium.vector.VectorEnv`` in relayrl's VectorEnv API (see the module docstring)."""

    def __init__(self, env: gym.vector.VectorEnv, num_envs_per_worker: int = 1):
        try:
            env = _steppable(env)
            self._mode = _autoreset_mode(env)
            base = env.unwrapped
            # Gymnasium's own vector envs reset one sub-env alone in every mode; others promise it in DISABLED mode.
            self._masked_reset = (
                isinstance(base, (SyncVectorEnv, AsyncVectorEnv)) or self._mode is AutoresetMode.DISABLED
            )
            _validate(env, base, self._mode, self._masked_reset, num_envs_per_worker)
        except Exception:
            env.close()  # an AsyncVectorEnv's subprocesses must not outlive the failed worker
            raise
        super().__init__(env.single_observation_space, env.single_action_space, env.num_envs)
        self.vector_env = env
        self._same_step = self._mode is AutoresetMode.SAME_STEP
        self._pending: dict[int, tuple[Any, dict]] = {}  # SAME_STEP: reset (obs, info) of the sub-envs that ended
        self._obs_is_array = isinstance(self.observation_space, _ARRAY_SPACES)
        self._act_is_array = isinstance(self.action_space, _ARRAY_SPACES)
        self._act_dtype = self.action_space.dtype if self._act_is_array else None
        self._act_buffer = None if self._act_is_array else create_empty_array(self.action_space, self.num_envs)

    # --- the VectorEnv API --------------------------------------------------------------------------------------
    def vector_reset(self, seeds: list[int | None] | None = None) -> Sequence:
        self._pending.clear()
        obs, _ = self.vector_env.reset(seed=_gym_seed(seeds, self.num_envs))
        return self._unbatch_obs(obs)

    def reset_at(self, index: int, seed: int | None = None) -> tuple[Any, dict]:
        pending = self._pending.pop(index, None)
        if pending is not None and seed is None:
            return pending
        if not self._masked_reset:  # SAME_STEP env asked to cut an episode it did not end (config key horizon)
            raise ValueError(
                f"{type(self.vector_env.unwrapped).__name__} cannot reset sub-env {index} alone, which"
                f" the sampler needs to end an episode at the config's horizon; use {_FIX}, or a"
                " TimeLimit wrapper (max_episode_steps) instead of horizon"
            )
        mask = np.zeros(self.num_envs, dtype=np.bool_)
        mask[index] = True
        seeds = [None] * self.num_envs
        seeds[index] = seed
        obs, infos = self.vector_env.reset(seed=seeds, options={"reset_mask": mask})
        row = obs[index].copy() if self._obs_is_array else self._unbatch_obs(obs)[index]
        return row, unbatch_infos(infos, self.num_envs)[index]

    def vector_step(self, actions: Any) -> tuple[Sequence, Sequence, Sequence, Sequence, Sequence]:
        """One step of every sub-env: the observations (an array for Box/Discrete spaces), rewards, terminateds
        and truncateds as arrays, and one info dict per sub-env."""
        if self._pending:  # reset observations the sampler did not take are stale now
            self._pending.clear()
        if self._act_is_array:
            actions = np.asarray(actions, dtype=self._act_dtype)
        else:
            actions = concatenate(self.action_space, actions, self._act_buffer)
        obs, rewards, terms, truncs, infos = self.vector_env.step(actions)
        obs = self._unbatch_obs(obs)
        infos = unbatch_infos(infos, self.num_envs) if infos else [{} for _ in range(self.num_envs)]
        if self._same_step and (terms.any() or truncs.any()):
            obs = obs.copy() if self._obs_is_array else obs  # never write into the env's own buffer
            for i in np.flatnonzero(terms | truncs).tolist():
                reset_info = infos[i]
                if "final_obs" not in reset_info:
                    raise ValueError(
                        f"{type(self.vector_env.unwrapped).__name__} (autoreset_mode SAME_STEP) ended"
                        f" sub-env {i}'s episode without infos['final_obs']; use {_FIX}"
                    )
                infos[i] = reset_info.pop("final_info", {})
                final = reset_info.pop("final_obs")
                self._pending[i] = (obs[i].copy() if self._obs_is_array else obs[i], reset_info)
                obs[i] = final
        return obs, rewards, terms, truncs, infos

    # --- the rest ---------------------------------------------------------------------------------------------
    def _unbatch_obs(self, obs: Any) -> Sequence:
        """Box/Discrete observations stay one array (the preprocessors take its rows); Dict/Tuple ones become
        one structure per sub-env, as the sampler expects."""
        return obs if self._obs_is_array else list(iterate(self.vector_env.observation_space, obs))

    def get_sub_environments(self) -> list:
        """A ``SyncVectorEnv``'s envs; ``[]`` for an ``AsyncVectorEnv``, whose envs live in its subprocesses."""
        return list(getattr(self.vector_env.unwrapped, "envs", None) or [])

    get_unwrapped = get_sub_environments

    @property
    def unwrapped(self) -> Any:  # how the env checks' messages name the env
        return self.vector_env.unwrapped

    @property
    def spec(self) -> Any:
        return getattr(self.vector_env, "spec", None)

    def close(self) -> None:
        """Closes the vector env (an ``AsyncVectorEnv`` ends its subprocesses)."""
        self.vector_env.close()


def unbatch_infos(infos: dict, num_envs: int) -> list[dict]:
    """Gymnasium's batched ``infos`` (``infos[k][i]`` valid where the mask ``infos["_" + k][i]``, nested dicts
    alike) as one info dict per sub-env. A key without a mask goes to every sub-env (split when it is an array
    of one row per sub-env)."""
    out: list[dict] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        mask = infos.get(f"_{key}")
        if mask is None and key.startswith("_") and key[1:] in infos:
            continue  # the mask of key[1:]
        if isinstance(value, dict):
            rows = unbatch_infos(value, num_envs)
            for i in range(num_envs) if mask is None else np.flatnonzero(mask).tolist():
                out[i][key] = rows[i]
        elif mask is not None:
            for i in np.flatnonzero(mask).tolist():
                out[i][key] = value[i]
        elif isinstance(value, np.ndarray) and value.shape[:1] == (num_envs,):
            for i in range(num_envs):
                out[i][key] = value[i]
        else:
            for i in range(num_envs):
                out[i][key] = value
    return out


def _steppable(env: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """``gym.make_vec(id)`` of an env with its own vectorised implementation (CartPole's CartPoleVectorEnv) resets
    finished sub-envs one step late and only all together; such an env is rebuilt from its spec as a SyncVectorEnv
    that resets each sub-env in the step it ends (the sub-envs are the same Gymnasium env, stepped one by one)."""
    spec = getattr(env, "spec", None)
    base = env.unwrapped
    if (
        isinstance(base, (SyncVectorEnv, AsyncVectorEnv))
        or _autoreset_mode(env) is not AutoresetMode.NEXT_STEP
        or spec is None
        or not getattr(spec, "id", None)
    ):
        return env
    kwargs = {k: v for k, v in (spec.kwargs or {}).items() if k not in ("num_envs", "vectorization_mode")}
    try:
        rebuilt = gym.make_vec(
            spec.id,
            num_envs=env.num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            **kwargs,
        )
    except Exception:  # noqa: BLE001 - not rebuildable: _validate explains what to do instead
        return env
    logger.warning(
        "%s resets finished sub-envs one step late and all together; stepping its %d sub-envs as a"
        " SyncVectorEnv of %s instead (%s for subprocesses)",
        type(base).__name__,
        env.num_envs,
        spec.id,
        _FIX,
    )
    env.close()
    return rebuilt


def _autoreset_mode(env: gym.vector.VectorEnv) -> AutoresetMode:
    mode = env.metadata.get("autoreset_mode", getattr(env.unwrapped, "autoreset_mode", AutoresetMode.NEXT_STEP))
    return mode if isinstance(mode, AutoresetMode) else AutoresetMode(mode)


def _validate(env: Any, base: Any, mode: AutoresetMode, masked_reset: bool, num_envs_per_worker: int) -> None:
    name = type(base).__name__
    if num_envs_per_worker != 1:
        raise ValueError(
            f"the env creator returned a {name} of {env.num_envs} sub-envs, which are the worker's"
            f" sub-envs; num_envs_per_worker must stay 1 (got {num_envs_per_worker}): set num_envs in the"
            " vector env instead"
        )
    if mode is AutoresetMode.NEXT_STEP and not masked_reset:
        raise ValueError(
            f"{name} resets a finished sub-env one step late (autoreset_mode NEXT_STEP) and cannot"
            " reset one sub-env alone, but relayrl's sampler resets each finished sub-env at once; use"
            f" {_FIX}"
        )
    if mode is AutoresetMode.NEXT_STEP and isinstance(base, AsyncVectorEnv) and not base.shared_memory:
        # Gymnasium 1.x's subprocess forgets a masked reset without shared memory and resets again at the next step.
        raise ValueError(
            "an AsyncVectorEnv with shared_memory=False and autoreset_mode NEXT_STEP would reset a"
            " finished sub-env twice; use autoreset_mode=gym.vector.AutoresetMode.SAME_STEP"
        )


def _gym_seed(seeds: list[int | None] | None, num_envs: int) -> int | list[int | None] | None:
    """The sampler's seeds (``seed + i`` for sub-env i, or all None) as Gymnasium takes them: one int means the
    same ``seed + i`` to Gymnasium's vector envs and is all that custom ones (CartPoleVectorEnv) accept."""
    if not seeds or all(s is None for s in seeds):
        return None
    first = seeds[0]
    if isinstance(first, (int, np.integer)) and list(seeds) == list(range(first, first + num_envs)):
        return int(first)
    return list(seeds)
