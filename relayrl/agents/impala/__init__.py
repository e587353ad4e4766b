from relayrl.agents.impala.impala import DEFAULT_CONFIG, ImpalaTrainer
from relayrl.agents.impala.vtrace_torch_policy import ImpalaA3CTorchPolicy, VTraceTorchPolicy

ImpalaAgent = ImpalaTrainer  # RLlib 0.7 (2019) name

__all__ = ["ImpalaTrainer", "ImpalaAgent", "VTraceTorchPolicy", "ImpalaA3CTorchPolicy", "DEFAULT_CONFIG"]
