"""Memory stays flat during long training runs (issue 10, "Memory"). Marked ``learning``: minutes each.

    python -m pytest -q -m learning tests/learning/test_memory.py -s      # -s prints the RSS series

- PPO CartPole-v1, 1M steps, and DQN CartPole-v1, 300k steps, in one process (``num_workers: 0``): the RSS
  every 50k steps; after warm-up (the samples in the first 30% of the steps: imports settle, allocator pools
  fill, DQN's replay buffer fills its 50k rows) the least-squares slope must be <= 1 MiB per 100k steps.
- IMPALA CartPole-v1 with 2 remote workers for ``RELAYRL_MEMORY_SECONDS`` (default 600): the RSS of the driver
  and of each worker process (psutil on this machine), every 30 s (every seconds/6 for short runs); after the
  first 25% of the time the slope must be <= 2 MiB/min and the last sample at most 8 MiB above the first one
  after warm-up, for every process.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import psutil
import pytest
import torch

from relayrl.agents.registry import get_trainer_class
from relayrl.tuned_examples.regression import tuned_config

MIB = 2**20
WARMUP_FRACTION_STEPS = 0.3
WARMUP_FRACTION_TIME = 0.25


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread_and_ray_cleanup():
    # Small networks: one intra-op thread is faster on the shared cores (and the same as the other learning tests).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    import ray

    started_here = not ray.is_initialized()
    yield
    torch.set_num_threads(before)
    if started_here and ray.is_initialized():
        ray.shutdown()


def rss(pid: int | None = None) -> int:
    """Resident set size in bytes, after a garbage collection when it is this process."""
    if pid is None:
        gc.collect()
    return psutil.Process(pid).memory_info().rss


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys over xs."""
    return float(np.polyfit(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64), 1)[0])


def rss_every(algo: str, config: dict, total_steps: int, every: int = 50_000) -> list[tuple[int, int]]:
    """Trains ``algo`` on CartPole-v1 in this process for ``total_steps``; (timesteps_total, RSS) each time the
    step count passes a multiple of ``every``."""
    trainer = get_trainer_class(algo)(env="CartPole-v1", config=config)
    series: list[tuple[int, int]] = []
    try:
        next_mark = every
        while next_mark <= total_steps:
            steps = trainer.train()["timesteps_total"]
            if steps >= next_mark:
                series.append((steps, rss()))
                while next_mark <= steps:
                    next_mark += every
    finally:
        trainer.stop()
    return series


def check_flat_per_steps(
    name: str, series: list[tuple[int, int]], total_steps: int, bound_mib_per_100k: float = 1.0
) -> None:
    print(f"\n{name} RSS (MiB) by timesteps_total:")
    for steps, b in series:
        print(f"  {steps:>9,d}  {b / MIB:8.1f}")
    window = [(s, b) for s, b in series if s > WARMUP_FRACTION_STEPS * total_steps]
    assert len(window) >= 4, f"too few samples after warm-up: {window}"
    per_100k = slope([s for s, _ in window], [b for _, b in window]) * 100_000 / MIB
    growth = (window[-1][1] - window[0][1]) / MIB
    print(
        f"{name}: slope after {WARMUP_FRACTION_STEPS:.0%} warm-up {per_100k:+.3f} MiB per 100k steps "
        f"(bound {bound_mib_per_100k}); {growth:+.1f} MiB from {window[0][0]:,d} to {window[-1][0]:,d} steps"
    )
    assert per_100k <= bound_mib_per_100k, f"{name}: RSS grows {per_100k:.2f} MiB per 100k steps"


@pytest.mark.learning
def test_ppo_cartpole_memory_is_flat_over_1m_steps():
    config = tuned_config("ppo/cartpole-ppo.yaml")  # num_workers 0; no reward stop: it trains all 1M steps
    assert config["num_workers"] == 0
    total = 1_000_000
    check_flat_per_steps("PPO CartPole-v1", rss_every("PPO", config, total), total)


@pytest.mark.learning
def test_dqn_cartpole_memory_is_flat_over_300k_steps():
    config = tuned_config("dqn/cartpole-dqn.yaml")
    config["num_workers"] = 0
    # The replay buffer (50k rows by default) fills by 50k steps, well before the window after warm-up (90k).
    assert config.get("buffer_size", 50_000) <= 50_000
    total = 300_000
    check_flat_per_steps("DQN CartPole-v1", rss_every("DQN", config, total), total)


@pytest.mark.learning
def test_impala_memory_is_flat_with_two_workers():
    import ray

    seconds = float(os.environ.get("RELAYRL_MEMORY_SECONDS", 600))
    interval = min(30.0, seconds / 6)
    config = {**tuned_config("impala/cartpole-impala.yaml"), "num_workers": 2}
    trainer = get_trainer_class("IMPALA")(env="CartPole-v1", config=config)
    try:
        pids = {"driver": os.getpid()}
        for i, w in enumerate(trainer.workers.remote_workers(), 1):
            pids[f"worker {i}"] = ray.get(w.apply.remote(lambda worker: os.getpid()))
        assert len(pids) == 3
        trainer.train()
        start = time.monotonic()
        times: list[float] = []
        series: dict[str, list[int]] = {name: [] for name in pids}
        steps: list[int] = []
        next_sample = 0.0
        while True:
            now = time.monotonic() - start
            if now >= next_sample:
                times.append(now)
                for name, pid in pids.items():
                    series[name].append(rss(None if pid == os.getpid() else pid))
                steps.append(trainer.optimizer.num_steps_sampled)
                next_sample += interval
                if now >= seconds:
                    break
            trainer.train()
    finally:
        trainer.stop()

    print(f"\nIMPALA (2 workers) RSS (MiB) every {interval:.0f} s for {seconds:.0f} s:")
    print("  " + f"{'t (s)':>7} {'steps':>10} " + " ".join(f"{name:>9}" for name in series))
    for j, t in enumerate(times):
        print("  " + f"{t:7.0f} {steps[j]:10,d} " + " ".join(f"{series[n][j] / MIB:9.1f}" for n in series))
    window = [j for j, t in enumerate(times) if t >= WARMUP_FRACTION_TIME * seconds]
    assert len(window) >= 3, f"too few samples after warm-up: {times}"
    failures = []
    for name, values in series.items():
        per_min = slope([times[j] / 60 for j in window], [values[j] for j in window]) / MIB
        growth = (values[window[-1]] - values[window[0]]) / MIB
        print(
            f"{name}: {per_min:+.2f} MiB/min after {WARMUP_FRACTION_TIME:.0%} warm-up (bound 2); "
            f"{growth:+.1f} MiB from {times[window[0]]:.0f} s to the end (bound 8)"
        )
        if per_min > 2.0 or growth > 8.0:
            failures.append(f"{name}: {per_min:+.2f} MiB/min, {growth:+.1f} MiB")
    assert not failures, "RSS grows: " + "; ".join(failures)
