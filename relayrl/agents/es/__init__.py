from relayrl.agents.es.es import DEFAULT_CONFIG, ESTrainer

ESAgent = ESTrainer  # seed-era name

__all__ = ["ESTrainer", "ESAgent", "DEFAULT_CONFIG"]
