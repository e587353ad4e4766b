"""Throughput of the asynchronous family on CartPole-v1 (CPU).

    python benchmarks/async_family.py            # prints a table
    python benchmarks/async_family.py --seconds 30

- IMPALA end-to-end env steps/s with 2 remote workers, next to the sampling-only rate of the same workers
  (the same trainer's workers, each with max_sample_requests_in_flight_per_worker sample() calls in flight and no
  learner): how much of the workers' sampling speed the whole pipeline keeps.
- A3C gradients applied per second by the driver (AsyncGradientsOptimizer, 2 workers), with the env steps/s.
"""

from __future__ import annotations

import argparse
import time

import torch

IMPALA_CONFIG = {
    "num_workers": 2,
    "num_gpus": 0,
    "sample_batch_size": 50,
    "train_batch_size": 500,
    "min_iter_time_s": 1,
    "model": {"fcnet_hiddens": [64, 64]},
    "seed": 0,
}
A3C_CONFIG = {
    "num_workers": 2,
    "sample_batch_size": 50,
    "lr": 5e-4,
    "min_iter_time_s": 1,
    "model": {"fcnet_hiddens": [64, 64]},
    "seed": 0,
}


def impala_throughput(seconds: float = 20.0, env: str = "CartPole-v1", config: dict | None = None) -> dict:
    """IMPALA env steps/s end to end, then the sampling-only env steps/s of the same workers."""
    import ray

    from relayrl.agents.impala import ImpalaTrainer

    trainer = ImpalaTrainer(env=env, config={**IMPALA_CONFIG, **(config or {})})
    try:
        trainer.train()  # warm-up: actors started, first weights broadcast
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            result = trainer.train()
            steps += result["timesteps_this_iter"]
        elapsed = time.perf_counter() - start
        info = result["info"]
        end_to_end = steps / elapsed
        # Sampling only: the learner is left idle; the same actors keep the same number of requests in flight.
        remotes = trainer.workers.remote_workers()
        in_flight = trainer.config["max_sample_requests_in_flight_per_worker"]
        ray.get([f for f in list(trainer.optimizer._pending)])  # drain what the pipeline left in flight
        trainer.optimizer._pending.clear()
        pending = {w.sample.remote(): w for w in remotes for _ in range(in_flight)}
        sampled, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            ready, _ = ray.wait(list(pending), num_returns=1)
            worker = pending.pop(ready[0])
            sampled += ray.get(ready[0]).count
            pending[worker.sample.remote()] = worker
        sampling_only = sampled / (time.perf_counter() - start)
        ray.get(list(pending))
        return {
            "impala_env_steps_per_s": round(end_to_end, 1),
            "sampling_only_env_steps_per_s": round(sampling_only, 1),
            "fraction_of_sampling_rate": round(end_to_end / sampling_only, 3),
            "learner_steps_per_s": round(info["learner_throughput"], 1),
            "weight_lag_mean": info["weight_lag_mean"],
            "episode_reward_mean": round(result["episode_reward_mean"], 1),
        }
    finally:
        trainer.stop()


def a3c_gradients_per_second(seconds: float = 20.0, env: str = "CartPole-v1", config: dict | None = None) -> dict:
    """Gradients applied per second by the A3C driver, and the env steps/s they came from."""
    from relayrl.agents.a3c import A3CTrainer

    trainer = A3CTrainer(env=env, config={**A3C_CONFIG, **(config or {})})
    try:
        trainer.train()
        applied0 = trainer.optimizer.num_gradients_applied
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            result = trainer.train()
            steps += result["timesteps_this_iter"]
        elapsed = time.perf_counter() - start
        info = result["info"]
        return {
            "a3c_gradients_applied_per_s": round((trainer.optimizer.num_gradients_applied - applied0) / elapsed, 1),
            "a3c_env_steps_per_s": round(steps / elapsed, 1),
            "apply_time_ms": info["apply_time_ms"],
            "wait_time_ms": info["wait_time_ms"],
            "episode_reward_mean": round(result["episode_reward_mean"], 1),
        }
    finally:
        trainer.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small networks: one intra-op thread avoids oversubscribing the cores
    rows = [
        ("IMPALA (2 workers)", impala_throughput(args.seconds)),
        ("A3C (2 workers)", a3c_gradients_per_second(args.seconds)),
    ]
    print(f"{'benchmark':<22} {'metric':<32} {'value':>12}")
    for name, figures in rows:
        for metric, value in figures.items():
            print(f"{name:<22} {metric:<32} {value:>12}")


if __name__ == "__main__":
    main()
