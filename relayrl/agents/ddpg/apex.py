"""Ape-X DDPG (Horgan et al. 2018, https://arxiv.org/abs/1803.00933, section 4.2): DDPG's policy trained by the
AsyncReplayOptimizer (distributed prioritized replay), each actor with its own noise multiplier."""

from __future__ import annotations

from relayrl.agents.apex_config import apex_config
from relayrl.agents.ddpg.ddpg import DEFAULT_CONFIG as DDPG_CONFIG
from relayrl.agents.ddpg.ddpg import policy_optimizer, validate_config
from relayrl.agents.ddpg.ddpg_torch_policy import DDPGTorchPolicy
from relayrl.agents.trainer_template import build_trainer

# DDPG's config (all of its options are supported) with the Ape-X settings (relayrl/agents/apex_config.py).
APEX_DDPG_DEFAULT_CONFIG = apex_config(DDPG_CONFIG)


def validate_apex_ddpg_config(config: dict) -> None:
    validate_config(config, name="APEX_DDPG")
    if config["num_workers"] < 1:
        raise ValueError("APEX_DDPG config: 'num_workers' must be >= 1 (Ape-X samples on remote actors)")


_ApexDDPGBase = build_trainer(
    name="APEX_DDPG",
    default_policy=DDPGTorchPolicy,
    default_config=APEX_DDPG_DEFAULT_CONFIG,
    policy_optimizer=policy_optimizer,
    validate_config=validate_apex_ddpg_config,
    asynchronous=True,
)


class ApexDDPGTrainer(_ApexDDPGBase):
    """The Ape-X DDPG trainer. Its iteration is build_trainer's with ``asynchronous=True``: filters are
    synchronised once per iteration, and ``timesteps_total`` follows the optimizer's ``num_steps_sampled``."""


ApexDDPGTrainer.__module__ = __name__
