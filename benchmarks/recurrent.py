"""Recurrent policies' cost next to the same feed-forward config (issue 13's benchmark row), on StatelessCartPole.

    python benchmarks/recurrent.py                   # [64] torso, 64-unit LSTM / GRU
    python benchmarks/recurrent.py --hiddens 256,256 --cell 256

- Sampling: wall time per env step of ``RolloutWorker.sample()`` (PPO policy), 1 and 8 sub-envs, for the
  feed-forward model (``fcnet_hiddens``), the same torso under an LSTM and a GRU (acting in numpy,
  ``RecurrentNetwork.numpy_step``), and the LSTM acting through torch (the path before the numpy one). Alternating
  rounds; medians; the ratios are to the feed-forward figure of the same round.
- Training: PPO iterations (8 sub-envs, 2000-step batches, 10 epochs of 500-step minibatches; the LSTM's sequences
  of 20 steps) split into sampling and learning, per env step, alternating feed-forward and LSTM iterations.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _worker(model: dict, num_envs: int, numpy_path: bool = True):
    from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTorchPolicy
    from relayrl.config import merge_dicts
    from relayrl.evaluation import RolloutWorker
    from relayrl.examples.stateless_cartpole import StatelessCartPole

    worker = RolloutWorker(
        StatelessCartPole,
        PPOTorchPolicy,
        policy_config=merge_dicts(DEFAULT_CONFIG, {"model": model}),
        num_envs_per_worker=num_envs,
        sample_batch_size=400 // num_envs,
        seed=0,
    )
    worker.policy_map["default_policy"]._fast_path &= numpy_path
    for _ in range(3):  # past the env checker's first steps
        worker.sample()
    return worker


def sampling_cost(hiddens: list[int], cell: int, num_envs: int, rounds: int) -> dict:
    """Median microseconds per env step of each model, and its ratio to the feed-forward one."""
    rnn = {"fcnet_hiddens": hiddens, "use_lstm": True, "lstm_cell_size": cell}
    workers = {
        "feed-forward": _worker({"fcnet_hiddens": hiddens}, num_envs),
        "LSTM": _worker(rnn, num_envs),
        "GRU": _worker({**rnn, "rnn_type": "gru"}, num_envs),
        "LSTM, torch acting": _worker(rnn, num_envs, numpy_path=False),
    }
    us: dict[str, list[float]] = {k: [] for k in workers}
    for _ in range(rounds):
        for name, worker in workers.items():
            start = time.perf_counter()
            batch = worker.sample()
            us[name].append(1e6 * (time.perf_counter() - start) / batch.count)
    ff = us["feed-forward"]
    return {k: (statistics.median(v), statistics.median(a / b for a, b in zip(v, ff))) for k, v in us.items()}


def training_cost(hiddens: list[int], cell: int, iterations: int) -> dict:
    """Median microseconds per env step of a PPO iteration's sampling and learning, feed-forward and LSTM."""
    from relayrl.agents.ppo import PPOTrainer
    from relayrl.examples.stateless_cartpole import StatelessCartPole

    config = {
        "num_workers": 0,
        "seed": 0,
        "num_envs_per_worker": 8,
        "sample_batch_size": 250,
        "train_batch_size": 2000,
        "sgd_minibatch_size": 500,
        "num_sgd_iter": 10,
    }
    models = {
        "feed-forward": {"fcnet_hiddens": hiddens},
        "LSTM": {"fcnet_hiddens": hiddens, "use_lstm": True, "lstm_cell_size": cell, "max_seq_len": 20},
    }
    trainers = {k: PPOTrainer(env=StatelessCartPole, config={**config, "model": m}) for k, m in models.items()}
    figures: dict[str, dict[str, list[float]]] = {k: {"sample": [], "learn": []} for k in trainers}
    try:
        for _ in range(iterations):
            for name, trainer in trainers.items():
                result = trainer.train()
                info, steps = result["info"], result["timesteps_this_iter"]
                figures[name]["sample"].append(1e3 * info["sample_time_ms"] / steps)
                figures[name]["learn"].append(1e3 * (info["load_time_ms"] + info["grad_time_ms"]) / steps)
    finally:
        for trainer in trainers.values():
            trainer.stop()
    return {k: {part: statistics.median(v) for part, v in f.items()} for k, f in figures.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hiddens", default="64", help="fcnet_hiddens of every model, comma-separated")
    parser.add_argument("--cell", type=int, default=64, help="lstm_cell_size")
    parser.add_argument("--rounds", type=int, default=25, help="sampling rounds of 400 steps per model")
    parser.add_argument("--iterations", type=int, default=6, help="PPO iterations per model")
    args, _ = parser.parse_known_args(argv)
    torch.set_num_threads(1)  # small networks: one intra-op thread avoids oversubscribing the cores
    hiddens = [int(h) for h in args.hiddens.split(",") if h]
    print(f"\nrecurrent policies: fcnet_hiddens {hiddens}, cell {args.cell}, StatelessCartPole (target: <= 1.3x)")
    for num_envs in (1, 8):
        for name, (us, ratio) in sampling_cost(hiddens, args.cell, num_envs, args.rounds).items():
            print(f"sampling, {num_envs} sub-env(s), {name:<20} {us:8.1f} us/env step  {ratio:5.2f}x")
    train = training_cost(hiddens, args.cell, args.iterations)
    for name, parts in train.items():
        total = parts["sample"] + parts["learn"]
        ratio = total / (train["feed-forward"]["sample"] + train["feed-forward"]["learn"])
        print(
            f"PPO iteration, {name:<14} sample {parts['sample']:6.1f} + learn {parts['learn']:6.1f}"
            f" = {total:6.1f} us/env step  {ratio:5.2f}x"
        )


if __name__ == "__main__":
    main()
