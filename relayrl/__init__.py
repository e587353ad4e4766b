"""relayrl: scalable reinforcement learning on PyTorch, Gymnasium, Ray core and Ray Tune.

from relayrl.agents.ppo import PPOTrainer
trainer = PPOTrainer(env="CartPole-v1")
print(trainer.train()["episode_reward_mean"])
"""

__version__ = "0.1.0"

from relayrl import _tune_hook
from relayrl.agents.registry import get_trainer_class
from relayrl.env import MultiAgentEnv, VectorEnv, register_env
from relayrl.evaluation import PolicyEvaluator, RolloutWorker, WorkerSet
from relayrl.policy import MultiAgentBatch, Policy, SampleBatch, TorchPolicy, build_torch_policy

_tune_hook.install()

__all__ = [
    "__version__",
    "Policy",
    "TorchPolicy",
    "build_torch_policy",
    "SampleBatch",
    "MultiAgentBatch",
    "RolloutWorker",
    "PolicyEvaluator",
    "WorkerSet",
    "register_env",
    "get_trainer_class",
    "MultiAgentEnv",
    "VectorEnv",
]
