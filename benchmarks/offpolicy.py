"""Off-policy benchmarks (CPU): DQN time-to-solve, learner updates/s, replay buffer costs.

    python benchmarks/offpolicy.py                 # the table (1 seed of the CartPole run)
    python benchmarks/offpolicy.py --seeds 0 1 2   # the issue's 3-seed median
    python benchmarks/offpolicy.py --skip-solve    # only the micro-benchmarks

- DQN CartPole-v1: wall seconds until the 100-episode mean reaches 475 (the tests' DQN config), median of seeds.
- Learner updates/s: ``policy.learn_on_batch`` calls per second on one replayed train batch (DQN: 32 rows,
  DDPG: 256 rows), the nets of the learning tests and of the defaults.
- Replay at 1M capacity: microseconds per add (4 rows), per prioritized sample of 32 and per priority update of 32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np

DQN_SOLVE_CONFIG = {
    "compress_observations": False,
    "model": {"fcnet_hiddens": [64], "fcnet_activation": "relu"},
    "hiddens": [64],
    "lr": 1e-3,
    "n_step": 3,
    "train_batch_size": 64,
    "target_network_update_freq": 500,
    "exploration_fraction": 0.1,
    "schedule_max_timesteps": 100000,
    "timesteps_per_iteration": 1000,
    "min_iter_time_s": 0,
}


def dqn_cartpole_time_to_solve(
    seeds: tuple[int, ...] = (0,), threshold: float = 475.0, max_steps: int = 300_000
) -> dict:
    """Wall seconds (and env steps) until DQN's 100-episode mean on CartPole-v1 reaches ``threshold``."""
    from relayrl.agents.dqn import DQNTrainer

    runs = []
    for seed in seeds:
        trainer = DQNTrainer(env="CartPole-v1", config={**DQN_SOLVE_CONFIG, "seed": seed})
        start = time.perf_counter()
        solved = False
        while True:
            result = trainer.train()
            if result["episode_reward_mean"] >= threshold:
                solved = True
                break
            if result["timesteps_total"] >= max_steps:
                break
        runs.append(
            {
                "seed": seed,
                "wall_s": time.perf_counter() - start,
                "steps": result["timesteps_total"],
                "solved": solved,
                "final_mean": result["episode_reward_mean"],
            }
        )
        trainer.stop()
    # An unsolved run counts as infinitely slow, so the median is that of every seed.
    times = [r["wall_s"] if r["solved"] else float("inf") for r in runs]
    return {
        "runs": runs,
        "median_wall_s": statistics.median(times),
        "num_solved": sum(r["solved"] for r in runs),
        "threshold": threshold,
    }


def _random_batch(obs_dim: int, act, n: int, seed: int = 0):
    from relayrl.policy.sample_batch import SampleBatch

    rng = np.random.default_rng(seed)
    actions = (
        rng.integers(0, act.n, n)
        if isinstance(act, gym.spaces.Discrete)
        else rng.uniform(act.low, act.high, (n,) + act.shape).astype(np.float32)
    )
    return SampleBatch(
        {
            "obs": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "new_obs": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": actions,
            "rewards": rng.normal(size=n).astype(np.float32),
            "terminateds": np.zeros(n, np.float32),
            "n_step_discount": np.full(n, 0.99, np.float32),
            "weights": np.ones(n, np.float32),
        }
    )


def learner_updates_per_s(algo: str = "DQN", seconds: float = 3.0, config: dict | None = None) -> dict:
    """``learn_on_batch`` calls per second of a DQN (CartPole-shaped) or DDPG (Pendulum-shaped) policy."""
    if algo == "DQN":
        from relayrl.agents.dqn import DEFAULT_CONFIG, DQNTorchPolicy

        cfg = {**DEFAULT_CONFIG, **(config or {})}
        obs_dim, act, cls = 4, gym.spaces.Discrete(2), DQNTorchPolicy
    else:
        from relayrl.agents.ddpg import TD3_DEFAULT_CONFIG, DDPGTorchPolicy

        cfg = {**TD3_DEFAULT_CONFIG, "train_batch_size": 256, **(config or {})}
        obs_dim, act, cls = 3, gym.spaces.Box(-2.0, 2.0, (1,), np.float32), DDPGTorchPolicy
    policy = cls(gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32), act, cfg)
    batch = _random_batch(obs_dim, act, cfg["train_batch_size"])
    for _ in range(20):
        policy.learn_on_batch(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        policy.learn_on_batch(batch)
        n += 1
    elapsed = time.perf_counter() - start
    return {
        "algo": algo,
        "train_batch_size": cfg["train_batch_size"],
        "updates_per_s": n / elapsed,
        "ms_per_update": 1000 * elapsed / n,
    }


def replay_microseconds(
    capacity: int = 1_000_000, batch_size: int = 32, add_rows: int = 4, obs_dim: int = 4, repeats: int = 2000
) -> dict:
    """Microseconds per add / prioritized sample / priority update on a full buffer of ``capacity`` rows."""
    from relayrl.optimizers.replay_buffer import PrioritizedReplayBuffer

    buffer = PrioritizedReplayBuffer(capacity, alpha=0.6, seed=0)
    rng = np.random.default_rng(0)

    def rows(n):
        return {
            "obs": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "new_obs": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": rng.integers(0, 2, n),
            "rewards": rng.normal(size=n).astype(np.float32),
            "terminateds": np.zeros(n, np.float32),
        }

    chunk = rows(100_000)
    for _ in range(capacity // 100_000):
        buffer.add_batch(chunk)
    small = rows(add_rows)
    timings = {"add": 0.0, "sample": 0.0, "update": 0.0}
    for _ in range(repeats):
        t0 = time.perf_counter()
        buffer.add_batch(small)
        t1 = time.perf_counter()
        out = buffer.sample(batch_size, beta=0.4)
        t2 = time.perf_counter()
        buffer.update_priorities(out["batch_indexes"], rng.random(batch_size))
        t3 = time.perf_counter()
        timings["add"] += t1 - t0
        timings["sample"] += t2 - t1
        timings["update"] += t3 - t2
    us = {k: 1e6 * v / repeats for k, v in timings.items()}
    return {
        "capacity": capacity,
        "add_us": us["add"],
        "sample_us": us["sample"],
        "update_us": us["update"],
        "total_us": sum(us.values()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--skip-solve", action="store_true")
    args, _ = parser.parse_known_args(argv if argv is not None else [])
    rows = []
    r = replay_microseconds()
    rows.append(
        (
            "replay add (4 rows) / sample (32) / update (32), 1M",
            "us",
            f"{r['add_us']:.0f} / {r['sample_us']:.0f} / {r['update_us']:.0f}",
        )
    )
    for algo, config in (
        ("DQN", {"hiddens": [64], "model": {"fcnet_hiddens": [64], "fcnet_activation": "relu"}}),
        ("DQN", {}),
        ("DDPG", {"actor_hiddens": [64, 64], "critic_hiddens": [64, 64]}),
        ("DDPG", {}),
    ):
        u = learner_updates_per_s(algo, config=config)
        label = f"{algo} ({'small nets' if config else 'default nets'}) learner, batch {u['train_batch_size']}"
        rows.append((label, "updates/s", f"{u['updates_per_s']:.0f} ({u['ms_per_update']:.2f} ms)"))
    if not args.skip_solve:
        s = dqn_cartpole_time_to_solve(tuple(args.seeds))
        runs = ", ".join(f"{x['wall_s']:.0f}s/{x['steps']}" + ("" if x["solved"] else " (unsolved)") for x in s["runs"])
        rows.append(
            (
                f"DQN CartPole-v1 to 100-ep mean >= 475 ({len(args.seeds)} seed(s))",
                "s",
                f"median {s['median_wall_s']:.0f} [{runs}]",
            )
        )
    width = max(len(r[0]) for r in rows)
    print("\nrelayrl off-policy benchmarks")
    for name, unit, value in rows:
        print(f"  {name:<{width}}  {value} {unit}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
