"""MultiAgentVectorEnv: N MultiAgentEnv sub-envs behind the PollingEnv interface, each under its episode checker.

    env = MultiAgentVectorEnv([make(0), make(1)], env_name="multi_cartpole", seeds=[0, 1])
    obs, rewards, terminateds, truncateds, infos, _ = env.poll()    # first poll: every sub-env's reset
    env.send_actions({0: {"a": 1}, 1: {"a": 0, "b": 2}})            # steps the sub-envs that got actions
    obs, ... = env.poll()                                           # their results

Sub-env ``i`` is slot ``i``. The checkers (``MultiAgentEpisodeChecker``) always run their structural checks, which
the sampler's bookkeeping relies on (who acts, who left, the ``"__all__"`` flags); the space and mask checks run for
each sub-env's first ``check_steps`` steps (None: always; 0: never).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Callable

from relayrl.env.base_env import PollingEnv
from relayrl.env.multi_agent_env import MultiAgentEpisodeChecker, _space
from relayrl.env.old_gym import multi_agent_api


class MultiAgentVectorEnv(PollingEnv):
    """``envs``: MultiAgentEnv instances (one per slot). ``seeds``: the first reset's seed per sub-env (later
    resets continue the env's own generator). ``worker_index`` / ``env_name``: for error messages."""

    def __init__(
        self,
        envs: list,
        *,
        env_name: str | None = None,
        worker_index: int = 0,
        seeds: list[int | None] | None = None,
        check_steps: int | None = 1000,
        check_nan: bool = False,
        action_mask_key: str | None = "action_mask",
    ):
        self.envs = [multi_agent_api(env) for env in envs]  # RLlib 0.7's API adapted, with a warning
        self.num_envs = len(self.envs)
        self.checkers = [
            MultiAgentEpisodeChecker(
                env,
                env_name,
                worker_index,
                i,
                check_nan=check_nan,
                action_mask_key=action_mask_key,
                check_spaces=check_steps != 0,
            )
            for i, env in enumerate(self.envs)
        ]
        self._check_steps = check_steps
        self._seeds = list(seeds) if seeds is not None else [None] * self.num_envs
        self._ready: dict[int, tuple] = {}  # slot -> (obs, rewards, terminateds, truncateds, infos) not yet polled
        self._started = False

    @classmethod
    def from_creator(cls, make_env: Callable[[int], Any], num_envs: int, existing: list | None = None, **kwargs: Any):
        envs = list(existing or [])
        envs += [make_env(i) for i in range(len(envs), num_envs)]
        return cls(envs, **kwargs)

    # --- PollingEnv -------------------------------------------------------------------------------------------
    def poll(self):
        if not self._started:
            self._started = True
            for i in range(self.num_envs):
                self._ready[i] = self._reset(i, self._seeds[i])
        ready, self._ready = self._ready, {}
        if len(ready) == 1:
            for i, (o, r, te, tr, inf) in ready.items():
                return {i: o}, {i: r}, {i: te}, {i: tr}, {i: inf}, {}
        obs, rewards, terms, truncs, infos = {}, {}, {}, {}, {}
        for i, (o, r, te, tr, inf) in ready.items():
            obs[i], rewards[i], terms[i], truncs[i], infos[i] = o, r, te, tr, inf
        return obs, rewards, terms, truncs, infos, {}

    def send_actions(self, actions: dict) -> None:
        checkers, envs, ready = self.checkers, self.envs, self._ready
        for i, action_dict in actions.items():
            checker = checkers[i]
            checker.actions(action_dict)
            ready[i] = checker.step(envs[i].step(action_dict))
            if checker.check_spaces and self._check_steps and checker.steps >= self._check_steps:
                checker.check_spaces = False

    def try_reset(self, env_id: Hashable) -> tuple[dict, dict]:
        obs, _, _, _, infos = self._reset(env_id, None)
        return obs, infos

    def get_sub_environments(self) -> list:
        return self.envs

    def observation_space_of(self, agent_id: Hashable):
        return _space(self.envs[0], agent_id, "observation")

    def action_space_of(self, agent_id: Hashable):
        return _space(self.envs[0], agent_id, "action")

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # --- parts ------------------------------------------------------------------------------------------------
    def _reset(self, i: int, seed: int | None) -> tuple:
        try:
            result = self.envs[i].reset(seed=seed)
        except TypeError as e:  # the old gym API's reset(self): a clear error, as for single-agent envs
            if "seed" not in str(e):
                raise
            raise self.checkers[i].error(
                f"reset(seed={seed!r}) failed ({e}); MultiAgentEnv.reset(*, seed=None, options=None) returns"
                " (obs_dict, info_dict)"
            ) from e
        obs, infos = self.checkers[i].reset(result)
        return obs, {}, {"__all__": False}, {"__all__": False}, infos
