"""Exploration helpers of the off-policy algorithms: epsilon schedules and action noise (numpy, per sub-env).

    eps = epsilon_schedule(config, worker_index).value(timestep)      # DQN's epsilon, DDPG's noise multiplier
    ou = OUNoise(action_dim, theta=0.15, sigma=0.2); ou.sample(num_envs)   # temporally correlated noise
    GaussianNoise(sigma=0.1).sample((num_envs, action_dim))

Per-worker epsilons follow Ape-X (Horgan et al. 2018, "Distributed Prioritized Experience Replay",
https://arxiv.org/abs/1803.00933, section 4.1): actor i of N explores with eps_i = 0.4 ** (1 + 7 * i / (N - 1)).
"""

from __future__ import annotations

import numpy as np

from relayrl.utils.schedules import ConstantSchedule, LinearSchedule, Schedule


def per_worker_epsilon(i: int, num_workers: int, base: float = 0.4, alpha: float = 7.0) -> float:
    """Ape-X's fixed epsilon of actor ``i`` in ``0..num_workers-1`` (a single actor gets ``base``)."""
    if num_workers <= 1:
        return base
    return base ** (1.0 + alpha * i / (num_workers - 1))


def epsilon_schedule(config: dict, worker_index: int) -> Schedule:
    """The exploration schedule of the policy on worker ``worker_index`` (0 is the driver's local worker).

    With ``per_worker_exploration`` remote worker k (1-based) is actor i = k - 1 of ``num_workers`` and keeps
    a constant Ape-X epsilon; the local worker then only learns (and evaluates) and gets 0. Otherwise epsilon
    falls linearly from 1 to ``exploration_final_eps`` over ``exploration_fraction * schedule_max_timesteps``.
    """
    if config.get("per_worker_exploration"):
        if worker_index <= 0:
            return ConstantSchedule(0.0)
        return ConstantSchedule(per_worker_epsilon(worker_index - 1, max(1, config["num_workers"])))
    steps = int(config["exploration_fraction"] * config["schedule_max_timesteps"])
    return LinearSchedule(steps, final_p=config["exploration_final_eps"], initial_p=1.0)


class OUNoise:
    """Ornstein-Uhlenbeck process dx = theta * (0 - x) dt + sigma dW (dt = 1), one state row per sub-env
    (Lillicrap et al. 2016, "Continuous control with deep reinforcement learning", section 7)."""

    def __init__(
        self, action_dim: int, theta: float = 0.15, sigma: float = 0.2, rng: np.random.Generator | None = None
    ):
        self.action_dim = action_dim
        self.theta, self.sigma = theta, sigma
        self.rng = rng or np.random.default_rng()
        self.state = np.zeros((0, action_dim), dtype=np.float32)

    def reset(self, rows: np.ndarray | slice | None = None) -> None:
        """Zeroes the state of the given rows (all when None), e.g. at an episode's start."""
        if rows is None:
            self.state[:] = 0.0
        else:
            self.state[rows] = 0.0

    def sample(self, n: int) -> np.ndarray:
        if self.state.shape[0] != n:
            self.state = np.zeros((n, self.action_dim), dtype=np.float32)
        self.state += -self.theta * self.state + self.sigma * self.rng.standard_normal(self.state.shape)
        return self.state.copy()


class GaussianNoise:
    """Independent N(0, sigma^2) noise (TD3, Fujimoto et al. 2018, section 6.1)."""

    def __init__(self, sigma: float = 0.1, rng: np.random.Generator | None = None):
        self.sigma = sigma
        self.rng = rng or np.random.default_rng()

    def reset(self, rows=None) -> None:
        pass

    def sample(self, shape: tuple[int, ...]) -> np.ndarray:
        return (self.sigma * self.rng.standard_normal(shape)).astype(np.float32)
