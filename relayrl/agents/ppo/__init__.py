from relayrl.agents.ppo.ppo import DEFAULT_CONFIG, PPOTrainer
from relayrl.agents.ppo.ppo_torch_policy import PPOTorchPolicy

PPOAgent = PPOTrainer  # RLlib 0.7 (2019) name

__all__ = ["PPOTrainer", "PPOAgent", "PPOTorchPolicy", "DEFAULT_CONFIG"]
