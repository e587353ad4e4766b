from relayrl.agents.ars.ars import DEFAULT_CONFIG, ARSTrainer

ARSAgent = ARSTrainer  # seed-era name

__all__ = ["ARSTrainer", "ARSAgent", "DEFAULT_CONFIG"]
