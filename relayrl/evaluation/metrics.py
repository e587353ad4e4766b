"""Episode metrics: workers report finished episodes; the driver summarises a sliding window of them."""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

import numpy as np


class RolloutMetrics(NamedTuple):
    episode_length: int
    episode_reward: float
    agent_rewards: dict
    custom_metrics: dict
    perf_stats: dict


def summarize_episodes(episodes: list[RolloutMetrics], new_episodes: list[RolloutMetrics] | None = None) -> dict:
    """The result's episode statistics over ``episodes`` (the smoothing window);
    ``episodes_this_iter`` counts ``new_episodes``."""
    new_episodes = episodes if new_episodes is None else new_episodes
    rewards = [e.episode_reward for e in episodes]
    lengths = [e.episode_length for e in episodes]
    policy_rewards: dict[Any, list[float]] = collections.defaultdict(list)
    custom: dict[str, list[float]] = collections.defaultdict(list)
    for e in episodes:
        for (_, policy_id), r in e.agent_rewards.items():
            policy_rewards[policy_id].append(r)
        for k, v in e.custom_metrics.items():
            custom[k].append(v)
    custom_metrics = {}
    for k, vals in custom.items():
        vals = [v for v in vals if np.isfinite(v)]
        if vals:
            custom_metrics[k + "_mean"] = float(np.mean(vals))
            custom_metrics[k + "_min"] = float(np.min(vals))
            custom_metrics[k + "_max"] = float(np.max(vals))
    return {
        "episode_reward_max": float(np.max(rewards)) if rewards else float("nan"),
        "episode_reward_min": float(np.min(rewards)) if rewards else float("nan"),
        "episode_reward_mean": float(np.mean(rewards)) if rewards else float("nan"),
        "episode_len_mean": float(np.mean(lengths)) if lengths else float("nan"),
        "episodes_this_iter": len(new_episodes),
        # Per policy, over the returns of every agent mapped to it (a shared policy: each of its agents' own).
        "policy_reward_mean": {pid: float(np.mean(r)) for pid, r in policy_rewards.items()},
        "policy_reward_min": {pid: float(np.min(r)) for pid, r in policy_rewards.items()},
        "policy_reward_max": {pid: float(np.max(r)) for pid, r in policy_rewards.items()},
        "custom_metrics": custom_metrics,
    }


def collect_metrics(local_worker: Any, remote_workers: Any = (), timeout_seconds: float = 180) -> dict:
    """RLlib 0.7's helper: ``summarize_episodes`` of the episodes the workers finished since they were last asked
    (``get_metrics``); remote workers that do not answer within ``timeout_seconds`` are left out."""
    episodes = list(local_worker.get_metrics()) if local_worker is not None else []
    if remote_workers:
        import ray

        pending = [w.get_metrics.remote() for w in remote_workers]
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=timeout_seconds)
        for metrics in ray.get(ready):
            episodes.extend(metrics)
    return summarize_episodes(episodes)


class MetricsWindow:
    """Keeps the last ``size`` finished episodes across iterations (``metrics_smoothing_episodes``)."""

    def __init__(self, size: int = 100):
        self.episodes: collections.deque[RolloutMetrics] = collections.deque(maxlen=size)
        self.episodes_total = 0

    def add(self, new_episodes: list[RolloutMetrics]) -> dict:
        self.episodes.extend(new_episodes)
        self.episodes_total += len(new_episodes)
        summary = summarize_episodes(list(self.episodes), new_episodes)
        summary["episodes_total"] = self.episodes_total
        return summary
