"""VectorEnv: several sub-environments stepped together so a policy can act on all of them in one call.

env = VectorEnv.wrap(make_env, num_envs=8)
obs_list = env.vector_reset(seeds)
obs_list, rewards, terminateds, truncateds, infos = env.vector_step(actions)
obs, info = env.reset_at(i)          # the sampler resets each finished sub-env itself
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import gymnasium as gym

from relayrl.env.env_checks import RESET_URL, STEP_API, EnvChecker
from relayrl.env.old_gym import gymnasium_api


class VectorEnv:
    def __init__(self, observation_space: gym.Space, action_space: gym.Space, num_envs: int):
        self.observation_space = observation_space
        self.action_space = action_space
        self.num_envs = num_envs

    @staticmethod
    def wrap(
        make_env: Callable[[int], gym.Env], num_envs: int, existing_envs: list[gym.Env] | None = None
    ) -> "VectorEnv":
        return _VectorizedGymEnv(make_env, existing_envs or [], num_envs)

    def vector_reset(self, seeds: list[int | None] | None = None) -> list[Any]:
        raise NotImplementedError

    def reset_at(self, index: int, seed: int | None = None) -> tuple[Any, dict]:
        raise NotImplementedError

    def vector_step(self, actions: Any) -> tuple[Sequence, Sequence, Sequence, Sequence, Sequence]:
        """One step of every sub-env: sequences (one entry per sub-env) of observations, rewards,
        terminateds, truncateds and infos."""
        raise NotImplementedError

    def get_sub_environments(self) -> list:
        return []

    get_unwrapped = get_sub_environments

    def close(self) -> None:
        for env in self.get_sub_environments():
            env.close()


def check_vector_api(env: VectorEnv) -> VectorEnv:
    """``env`` when its methods take what the sampler passes (``vector_reset(seeds)``, ``reset_at(i, seed)``);
    else a TypeError naming the method (RLlib 0.7's ``vector_reset(self)`` / ``reset_at(self, index)`` returned
    observations without infos and stepped with ``dones``: the Gymnasium-era API is another one)."""
    for name, args in (("vector_reset", ([None] * env.num_envs,)), ("reset_at", (0, None))):
        try:
            inspect.signature(getattr(env, name)).bind(*args)
        except TypeError:
            raise TypeError(
                f"{type(env).__name__}.{name}{inspect.signature(getattr(env, name))} cannot take what the sampler"
                " passes; a VectorEnv implements vector_reset(seeds=None) -> [obs], reset_at(index, seed=None) ->"
                " (obs, info) and vector_step(actions) -> (obs, rewards, terminateds, truncateds, infos)"
            ) from None
        except ValueError:  # no signature to read (a builtin): trusted
            pass
    return env


class _VectorizedGymEnv(VectorEnv):
    def __init__(self, make_env: Callable[[int], gym.Env], existing_envs: list[gym.Env], num_envs: int):
        self.envs = [gymnasium_api(env) for env in existing_envs]
        while len(self.envs) < num_envs:
            self.envs.append(gymnasium_api(make_env(len(self.envs))))
        first = self.envs[0]
        super().__init__(first.observation_space, first.action_space, num_envs)

    @property
    def vector_env(self) -> VectorEnv:
        """This env: RLlib 0.7's ``worker.async_env.vector_env.envs`` (its async env wrapped the VectorEnv)."""
        return self

    def vector_reset(self, seeds: list[int | None] | None = None) -> list[Any]:
        seeds = seeds or [None] * self.num_envs
        return [env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)]

    def reset_at(self, index: int, seed: int | None = None) -> tuple[Any, dict]:
        return self.envs[index].reset(seed=seed)

    def vector_step(self, actions: Any) -> tuple[Sequence, Sequence, Sequence, Sequence, Sequence]:
        return tuple(zip(*[env.step(a) for env, a in zip(self.envs, actions)]))

    def get_sub_environments(self) -> list:
        return self.envs


RESET_SAMPLE = 100  # after the check_env window, one reset in this many is checked


class CheckedVectorEnv(VectorEnv):
    """A VectorEnv whose results are checked (``relayrl.env.env_checks``, config key ``check_env``): every reset
    inside the window and one in RESET_SAMPLE after it,
    and each sub-env's first ``steps`` steps (None: every step). Then ``vector_step`` becomes the wrapped env's
    own bound method, so the sampler's per-step loop pays nothing once the window has passed."""

    def __init__(self, env: VectorEnv, checker: EnvChecker, steps: int | None):
        super().__init__(env.observation_space, env.action_space, env.num_envs)
        self.env, self.checker, self._limit = env, checker, steps
        self._steps = 0  # step() calls of each sub-env so far (they step together)
        self._resets = 0
        self._episode_steps = [0] * env.num_envs
        # A wrapped Gymnasium env's sub-envs are stepped here one by one, so each result is checked before the
        # zip that would hide a 4-tuple.
        self._subs = env.envs if isinstance(env, _VectorizedGymEnv) else None
        if steps is not None and steps <= 0:
            self.vector_step = env.vector_step  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:  # the wrapped env's own extras
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def _reset(self, index: int, seed: int | None) -> Any:
        if self._subs is None:
            return self.env.reset_at(index, seed)
        try:
            return self._subs[index].reset(seed=seed)
        except TypeError as e:
            if "seed" not in str(e):
                raise
            raise self.checker.error(
                index,
                self._steps,
                None,
                f"reset(seed={seed!r}) failed ({e}); Gymnasium's API is "
                f"reset(*, seed=None, options=None) -> (obs, info) — see {RESET_URL}",
            ) from e

    def vector_reset(self, seeds: list[int | None] | None = None) -> list[Any]:
        seeds = seeds or [None] * self.num_envs
        if self._subs is None:
            obs = self.env.vector_reset(seeds)
            for i, o in enumerate(obs):
                self.checker.observation(i, 0, None, o, "vector_reset()")
            return obs
        return [self.checker.reset_result(i, 0, self._reset(i, s)) for i, s in enumerate(seeds)]

    def reset_at(self, index: int, seed: int | None = None) -> tuple[Any, dict]:
        result = self._reset(index, seed)
        self._resets += 1
        # Every reset inside the window, then one in RESET_SAMPLE (a full check of a reset costs about as much as
        # a CartPole step; NaN in reset observations is still found by the sampler's per-fragment scan).
        if self._limit is None or self._steps < self._limit or self._resets % RESET_SAMPLE == 0:
            self.checker.reset_result(index, self._steps, result)
        self._episode_steps[index] = 0
        return result

    def vector_step(self, actions: Any) -> tuple[Sequence, Sequence, Sequence, Sequence, Sequence]:
        self._steps += 1
        step, eps, check = self._steps, self._episode_steps, self.checker.step_result
        for i in range(self.num_envs):
            eps[i] += 1
        if self._subs is not None:
            results = [env.step(a) for env, a in zip(self._subs, actions)]
            for i, result in enumerate(results):
                check(i, step, eps[i], result)
            out = tuple(zip(*results))
        else:
            out = self.env.vector_step(actions)
            if not isinstance(out, (tuple, list)) or len(out) != 5 or any(len(c) != self.num_envs for c in out):
                raise self.checker.error(
                    0,
                    step,
                    eps[0],
                    f"vector_step() of {type(self.env).__name__} returned "
                    f"{type(out).__name__}, not 5 sequences of {self.num_envs}; {STEP_API}",
                )
            for i in range(self.num_envs):
                check(i, step, eps[i], tuple(c[i] for c in out))
        if self._limit is not None and step >= self._limit:
            self.vector_step = self.env.vector_step  # type: ignore[method-assign]
        return out

    def get_sub_environments(self) -> list:
        return self.env.get_sub_environments()

    get_unwrapped = get_sub_environments

    def close(self) -> None:
        self.env.close()
