"""VectorEnv: several sub-environments stepped together so a policy can act on all of them in one call.

    env = VectorEnv.wrap(make_env, num_envs=8)
    obs_list = env.vector_reset(seeds)
    obs_list, rewards, terminateds, truncateds, infos = env.vector_step(actions)
    obs, info = env.reset_at(i)          # the sampler resets each finished sub-env itself
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import gymnasium as gym


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


class _VectorizedGymEnv(VectorEnv):
    def __init__(self, make_env: Callable[[int], gym.Env], existing_envs: list[gym.Env], num_envs: int):
        self.envs = list(existing_envs)
        while len(self.envs) < num_envs:
            self.envs.append(make_env(len(self.envs)))
        first = self.envs[0]
        super().__init__(first.observation_space, first.action_space, num_envs)

    def vector_reset(self, seeds: list[int | None] | None = None) -> list[Any]:
        seeds = seeds or [None] * self.num_envs
        return [env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)]

    def reset_at(self, index: int, seed: int | None = None) -> tuple[Any, dict]:
        return self.envs[index].reset(seed=seed)

    def vector_step(self, actions: Any) -> tuple[Sequence, Sequence, Sequence, Sequence, Sequence]:
        return tuple(zip(*[env.step(a) for env, a in zip(self.envs, actions)]))

    def get_sub_environments(self) -> list:
        return self.envs
