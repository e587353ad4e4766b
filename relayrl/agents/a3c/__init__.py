from relayrl.agents.a3c.a2c import A2C_DEFAULT_CONFIG, A2CTrainer
from relayrl.agents.a3c.a3c import DEFAULT_CONFIG, A3CTrainer
from relayrl.agents.a3c.a3c_torch_policy import A3CTorchPolicy

A3CAgent = A3CTrainer  # RLlib 0.7 (2019) name
A2CAgent = A2CTrainer  # RLlib 0.7 (2019) name

__all__ = ["A3CTrainer", "A2CTrainer", "A3CAgent", "A2CAgent", "A3CTorchPolicy", "DEFAULT_CONFIG", "A2C_DEFAULT_CONFIG"]
