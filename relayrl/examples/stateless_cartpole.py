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
# PPO settings that learn it with ``LSTM_MODEL`` (tests/unit/test_recurrent.py: >= 150 within 150k steps;
# tests/learning/test_recurrent_learning.py: >= 450 within 500k), and with which a feed-forward model stays below 100.
PPO_SETTINGS = {
    "num_workers": 0,
    "seed": 0,
    "num_envs_per_worker": 8,
    "sample_batch_size": 250,
    "train_batch_size": 2000,
    "sgd_minibatch_size": 500,
    "num_sgd_iter": 10,
    "lr": 3e-3,
    "gamma": 0.99,
    "lambda": 0.95,
    "clip_param": 0.2,
    "kl_coeff": 0.0,
    "entropy_coeff": 0.0,
    "vf_loss_coeff": 0.01,  # the value head shares the LSTM: returns of 100+ would drown the policy's gradient
    "vf_clip_param": 100.0,
}
LSTM_MODEL = {"use_lstm": True, "lstm_cell_size": 64, "fcnet_hiddens": [64], "max_seq_len": 20}
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
