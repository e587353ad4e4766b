"""Trainer names -> trainer classes, imported lazily so that ``import relayrl`` stays fast."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
from typing import Any

logger = logging.getLogger(__name__)

# name -> (module, class)
ALGORITHMS: dict[str, tuple[str, str]] = {
    "PG": ("relayrl.agents.pg", "PGTrainer"),
    "PPO": ("relayrl.agents.ppo", "PPOTrainer"),
    "A2C": ("relayrl.agents.a3c", "A2CTrainer"),
    "A3C": ("relayrl.agents.a3c", "A3CTrainer"),
    "IMPALA": ("relayrl.agents.impala", "ImpalaTrainer"),
    "ES": ("relayrl.agents.es", "ESTrainer"),
    "ARS": ("relayrl.agents.ars", "ARSTrainer"),
    "DDPG": ("relayrl.agents.ddpg", "DDPGTrainer"),
    "TD3": ("relayrl.agents.ddpg", "TD3Trainer"),
    "APEX_DDPG": ("relayrl.agents.ddpg", "ApexDDPGTrainer"),
    "DQN": ("relayrl.agents.dqn", "DQNTrainer"),
    "APEX": ("relayrl.agents.dqn", "ApexTrainer"),
}


def available_algorithms() -> list[str]:
    """Names whose trainer can be imported in this installation."""
    names = []
    for name in ALGORITHMS:
        try:
            get_trainer_class(name)
        except ValueError:
            continue
        except Exception as e:  # noqa: BLE001 - a broken algorithm module must not break the others
            logger.warning("algorithm %s cannot be imported: %s", name, e)
            continue
        names.append(name)
    return names


def get_trainer_class(name: str) -> Any:
    """The trainer class registered under ``name`` (e.g. "PPO")."""
    if name not in ALGORITHMS:
        close = difflib.get_close_matches(name.upper(), list(ALGORITHMS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown algorithm {name!r}{hint}; known: {', '.join(available_algorithms())}")
    module, cls = ALGORITHMS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
    except AttributeError:
        pass
    raise ValueError(f"algorithm {name!r} is not implemented in this version of relayrl")


def algorithm_of_policy(policy_cls: type) -> str | None:
    """The registry name of the first algorithm whose default policy class is ``policy_cls`` (None: none is)."""
    for name in ALGORITHMS:
        try:
            trainer = get_trainer_class(name)
        except ImportError:
            continue
        if getattr(trainer, "_policy", None) is policy_cls:
            return name
    return None
