"""StatelessCartPole: CartPole-v1 with the velocities removed, a memory test for recurrent policies.

The observation is (cart position, pole angle): the velocities must be inferred from successive observations, so a
feed-forward policy balances the pole only briefly while a recurrent one (``model.use_lstm``) can learn the task
(RLlib's test bar: PPO + LSTM reaches 350; issue 13: >= 150 within 150k steps while a feed-forward policy stays
below). Usage::

    from relayrl.examples.stateless_cartpole import StatelessCartPole, register
    trainer = PPOTrainer(env=StatelessCartPole, config={"model": {"use_lstm": True}})
    register()   # or by name: env="StatelessCartPole-v1" (also for the CLI and Tune, after this call)
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

NAME = "StatelessCartPole-v1"
# Indices of CartPole-v1's observation that stay: x and theta (the velocities x_dot, theta_dot go).
KEPT = [0, 2]


class StatelessCartPole(gym.ObservationWrapper):
    """CartPole-v1 observing only (x, theta). ``config``: an EnvContext or dict of ``gym.make`` keyword arguments
    (``render_mode`` included), so the class itself is a valid ``env`` of a trainer config."""

    def __init__(self, config: dict | None = None):
        kwargs = dict(config or {})
        render_mode = getattr(config, "render_mode", None)
        if render_mode is not None:
            kwargs.setdefault("render_mode", render_mode)
        super().__init__(gym.make("CartPole-v1", **kwargs))
        full = self.env.observation_space
        self.observation_space = gym.spaces.Box(full.low[KEPT], full.high[KEPT], dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)[KEPT]


def register(name: str = NAME) -> str:
    """Registers the env under ``name`` with ``relayrl.register_env``; returns the name."""
    from relayrl.env.registry import register_env

    register_env(name, StatelessCartPole)
    return name
