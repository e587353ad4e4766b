from relayrl.agents.impala.impala import DEFAULT_CONFIG, ImpalaTrainer
from relayrl.agents.impala.vtrace_torch_policy import ImpalaA3CTorchPolicy, VTraceTorchPolicy

ImpalaAgent = ImpalaTrainer  # seed-era name

__all__ = ["ImpalaTrainer", "ImpalaAgent", "VTraceTorchPolicy", "ImpalaA3CTorchPolicy", "DEFAULT_CONFIG"]
