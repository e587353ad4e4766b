from relayrl.agents.es.es import DEFAULT_CONFIG, ESTrainer

ESAgent = ESTrainer  # RLlib 0.7 (2019) name

__all__ = ["ESTrainer", "ESAgent", "DEFAULT_CONFIG"]
