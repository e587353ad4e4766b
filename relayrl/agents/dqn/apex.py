"""Ape-X DQN (Horgan et al. 2018, "Distributed Prioritized Experience Replay", https://arxiv.org/abs/1803.00933).

DQN's policy and loss (double, dueling, 3-step by default) trained by the AsyncReplayOptimizer: many actors with
per-worker epsilons that prioritize their own experience, sharded replay actors and one learner thread.
"""

from __future__ import annotations

from relayrl.agents.apex_config import apex_config
from relayrl.agents.dqn.dqn import DEFAULT_CONFIG as DQN_CONFIG
from relayrl.agents.dqn.dqn import policy_optimizer, validate_config
from relayrl.agents.dqn.dqn_torch_policy import DQNTorchPolicy
from relayrl.agents.trainer_template import build_trainer

# DQN's config (all of its options are supported) with the Ape-X settings (relayrl/agents/apex_config.py).
APEX_DEFAULT_CONFIG = apex_config(DQN_CONFIG)


def validate_apex_config(config: dict) -> None:
    validate_config(config, name="APEX")
    if config["num_workers"] < 1:
        raise ValueError("APEX config: 'num_workers' must be >= 1 (Ape-X samples on remote actors)")


_ApexBase = build_trainer(
    name="APEX",
    default_policy=DQNTorchPolicy,
    default_config=APEX_DEFAULT_CONFIG,
    policy_optimizer=policy_optimizer,
    validate_config=validate_apex_config,
    asynchronous=True,
)


class ApexTrainer(_ApexBase):
    """The Ape-X DQN trainer. Its iteration is build_trainer's with ``asynchronous=True``: filters are synchronised
    once per iteration, and ``timesteps_total`` follows the optimizer's ``num_steps_sampled``."""


ApexTrainer.__module__ = __name__
