from relayrl.agents.ars.ars import DEFAULT_CONFIG, ARSTrainer

ARSAgent = ARSTrainer  # RLlib 0.7 (2019) name

__all__ = ["ARSTrainer", "ARSAgent", "DEFAULT_CONFIG"]
