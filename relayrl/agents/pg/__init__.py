from relayrl.agents.pg.pg import DEFAULT_CONFIG, PGTorchPolicy, PGTrainer

PGAgent = PGTrainer  # seed-era name

__all__ = ["PGTrainer", "PGAgent", "PGTorchPolicy", "DEFAULT_CONFIG"]
