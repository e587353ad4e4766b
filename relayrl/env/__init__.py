"""Environments: names, vectorised envs and the multi-agent interface."""

from relayrl.env.env_checks import EnvCheckError
from relayrl.env.external_env import ExternalEnv, ExternalMultiAgentEnv
from relayrl.env.multi_agent_env import MultiAgentEnv, MultiAgentEpisodeChecker, make_multi_agent
from relayrl.env.pettingzoo_env import ParallelPettingZooEnv, PettingZooEnv  # imports pettingzoo only when used
from relayrl.env.registry import EnvContext, get_env_creator, register_env
from relayrl.env.vector_env import VectorEnv

__all__ = [
    "MultiAgentEnv",
    "ExternalEnv",
    "ExternalMultiAgentEnv",
    "MultiAgentEpisodeChecker",
    "make_multi_agent",
    "PettingZooEnv",
    "ParallelPettingZooEnv",
    "VectorEnv",
    "EnvContext",
    "EnvCheckError",
    "register_env",
    "get_env_creator",
]
