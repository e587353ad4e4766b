"""Sampling: rollout workers, the sampler loop, postprocessing, episode metrics, worker sets."""

from relayrl.evaluation.episode import Episode
from relayrl.evaluation.metrics import RolloutMetrics, collect_metrics, summarize_episodes
from relayrl.evaluation.postprocessing import Postprocessing, compute_advantages, discount_cumsum
from relayrl.evaluation.rollout_worker import PolicyEvaluator, RolloutWorker
from relayrl.evaluation.worker_set import WorkerSet

__all__ = [
    "Episode",
    "RolloutMetrics",
    "summarize_episodes",
    "collect_metrics",
    "Postprocessing",
    "compute_advantages",
    "discount_cumsum",
    "RolloutWorker",
    "PolicyEvaluator",
    "WorkerSet",
]
