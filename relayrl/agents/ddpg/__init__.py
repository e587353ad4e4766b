from relayrl.agents.ddpg.apex import APEX_DDPG_DEFAULT_CONFIG, ApexDDPGTrainer
from relayrl.agents.ddpg.ddpg import DEFAULT_CONFIG, DDPGTrainer
from relayrl.agents.ddpg.ddpg_torch_policy import DDPGTorchPolicy
from relayrl.agents.ddpg.td3 import TD3_DEFAULT_CONFIG, TD3Trainer

DDPGAgent = DDPGTrainer  # RLlib 0.7 (2019) name

__all__ = [
    "DDPGTrainer",
    "DDPGAgent",
    "TD3Trainer",
    "ApexDDPGTrainer",
    "DDPGTorchPolicy",
    "DEFAULT_CONFIG",
    "TD3_DEFAULT_CONFIG",
    "APEX_DDPG_DEFAULT_CONFIG",
]
