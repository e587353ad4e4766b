"""Environments: names, vectorised envs and the multi-agent interface."""

from relayrl.env.env_checks import EnvCheckError
from relayrl.env.multi_agent_env import MultiAgentEnv
from relayrl.env.registry import EnvContext, get_env_creator, register_env
from relayrl.env.vector_env import VectorEnv

__all__ = ["MultiAgentEnv", "VectorEnv", "EnvContext", "EnvCheckError", "register_env", "get_env_creator"]
