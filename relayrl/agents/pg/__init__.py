from relayrl.agents.pg.pg import DEFAULT_CONFIG, PGTorchPolicy, PGTrainer

PGAgent = PGTrainer  # RLlib 0.7 (2019) name

__all__ = ["PGTrainer", "PGAgent", "PGTorchPolicy", "DEFAULT_CONFIG"]
