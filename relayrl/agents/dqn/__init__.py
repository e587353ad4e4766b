from relayrl.agents.dqn.apex import APEX_DEFAULT_CONFIG, ApexTrainer
from relayrl.agents.dqn.dqn import DEFAULT_CONFIG, DQNTrainer
from relayrl.agents.dqn.dqn_torch_policy import DQNTorchPolicy

DQNAgent = DQNTrainer  # RLlib 0.7 (2019) name
ApexAgent = ApexTrainer  # RLlib 0.7 (2019) name

__all__ = [
    "DQNTrainer",
    "DQNAgent",
    "ApexTrainer",
    "ApexAgent",
    "DQNTorchPolicy",
    "DEFAULT_CONFIG",
    "APEX_DEFAULT_CONFIG",
]
