"""Recurrent policies' cost next to the same feed-forward config (issue 13's benchmark row).

    python benchmarks/recurrent.py                   # [64] torso, 64-unit LSTM / GRU; then the 84x84x4 row
    python benchmarks/recurrent.py --hiddens 256,256 --cell 256 --no-atari
    python benchmarks/recurrent.py --quick           # fewer rounds (benchmarks/run.py --all --quick)

- Sampling (StatelessCartPole): wall time per env step of ``RolloutWorker.sample()`` (PPO policy), 1 and 8
  sub-envs, for the feed-forward model (``fcnet_hiddens``), the same torso under an LSTM and a GRU (acting in numpy,
  ``RecurrentNetwork.numpy_step``), and the LSTM acting through torch (the path before the numpy one). Alternating
  rounds; medians; the ratios are to the feed-forward figure of the same round.
- Training, StatelessCartPole: PPO iterations (8 sub-envs, 2000-step batches, 10 epochs of 500-step minibatches;
  the LSTM's sequences of 20 steps) split into sampling and learning, per env step. The worst case for the ratio:
  the 64-unit LSTM is most of the arithmetic (about 60 times the [64] MLP's per step).
- Training, Atari-sized (what CleanRL's 1.13-1.45x compares): PongNoFrameskip-v4 through DeepMind's preprocessing
  ((84, 84, 4) uint8 frames; a synthetic env of such frames where ale_py has no ROMs), the default VisionNetwork
  against the same conv stack + ``use_lstm`` (256 cells, max_seq_len 20), 8 sub-envs x 64 steps, 4 epochs of
  128-step minibatches.
Both training rows alternate the two models' iterations after one untimed iteration each (start-up, first kernels);
the ratios are the medians over rounds of each round's ratio (total, and learning alone). Torch runs one thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
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


def _atari_env() -> tuple[object, str]:
    """``(env, description)``: Pong through DeepMind's preprocessing when ale_py has its ROMs, else a synthetic
    env with the same (84, 84, 4) uint8 frames (random, a 500-step episode, 6 actions: a cheap step)."""
    try:
        import ale_py

        gym.register_envs(ale_py)
        gym.make("PongNoFrameskip-v4").close()
        return "PongNoFrameskip-v4", "PongNoFrameskip-v4, DeepMind preprocessing"
    except Exception:  # noqa: BLE001 - no ale_py, or no ROMs: the synthetic frames
        return SyntheticFrames, "synthetic 84x84x4 uint8 frames (no Atari ROMs here)"


class SyntheticFrames(gym.Env):
    """An env of random (84, 84, 4) uint8 frames, 6 actions, reward 0 or 1, episodes of 500 steps."""

    observation_space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
    action_space = gym.spaces.Discrete(6)

    def __init__(self, config=None):
        rng = np.random.default_rng(getattr(config, "worker_index", 0))
        self._frames = rng.integers(0, 256, (64, 84, 84, 4), dtype=np.uint8)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._frames[0], {}

    def step(self, action):
        self._t += 1
        return self._frames[self._t % 64], float(self._t % 7 == 0), False, self._t >= 500, {}


# PPO iterations of each training row: (env, models, config). Atari-sized: CleanRL's ppo_atari(_lstm) settings
# halved (8 envs x 64 steps, 4 epochs of 4 minibatches), the model defaults (VisionNetwork; + use_lstm: 256 cells,
# max_seq_len 20).
CARTPOLE_CONFIG = {
    "num_envs_per_worker": 8,
    "sample_batch_size": 250,
    "train_batch_size": 2000,
    "sgd_minibatch_size": 500,
    "num_sgd_iter": 10,
}
ATARI_CONFIG = {
    "num_envs_per_worker": 8,
    "sample_batch_size": 64,
    "train_batch_size": 512,
    "sgd_minibatch_size": 128,
    "num_sgd_iter": 4,
}


def training_cost(env, models: dict[str, dict], config: dict, iterations: int) -> dict:
    """Per env step, the median microseconds of a PPO iteration's sampling and learning of each model, and the
    median over rounds of the ratio of its total to the first model's (the rounds alternate the models; each
    trainer's first iteration, start-up included, is not counted)."""
    from relayrl.agents.ppo import PPOTrainer

    base = {"num_workers": 0, "seed": 0, **config}
    trainers = {k: PPOTrainer(env=env, config={**base, "model": m}) for k, m in models.items()}
    figures: dict[str, dict[str, list[float]]] = {k: {"sample": [], "learn": []} for k in trainers}
    try:
        for trainer in trainers.values():
            trainer.train()
        for _ in range(iterations):
            for name, trainer in trainers.items():
                result = trainer.train()
                info, steps = result["info"], result["timesteps_this_iter"]
                figures[name]["sample"].append(1e3 * info["sample_time_ms"] / steps)
                figures[name]["learn"].append(1e3 * (info["load_time_ms"] + info["grad_time_ms"]) / steps)
    finally:
        for trainer in trainers.values():
            trainer.stop()
    first = next(iter(figures.values()))
    first_total = [s + lr for s, lr in zip(first["sample"], first["learn"])]
    out = {}
    for name, f in figures.items():
        total = [s + lr for s, lr in zip(f["sample"], f["learn"])]
        out[name] = {
            "sample": statistics.median(f["sample"]),
            "learn": statistics.median(f["learn"]),
            "total": statistics.median(total),
            "ratio": statistics.median(t / b for t, b in zip(total, first_total)),
            "learn_ratio": statistics.median(a / b for a, b in zip(f["learn"], first["learn"])),
        }
    return out


def print_training(title: str, rows: dict) -> None:
    for name, r in rows.items():
        print(
            f"PPO iteration, {title}, {name:<13} sample {r['sample']:7.1f} + learn {r['learn']:7.1f}"
            f" = {r['total']:7.1f} us/env step  {r['ratio']:5.2f}x (learning {r['learn_ratio']:4.2f}x)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hiddens", default="64", help="fcnet_hiddens of every model, comma-separated")
    parser.add_argument("--cell", type=int, default=64, help="lstm_cell_size")
    parser.add_argument("--rounds", type=int, default=25, help="sampling rounds of 400 steps per model")
    parser.add_argument("--iterations", type=int, default=6, help="PPO iterations per model (StatelessCartPole)")
    parser.add_argument("--atari-iterations", type=int, default=4, help="PPO iterations per model, 84x84x4 row")
    parser.add_argument("--no-atari", action="store_true", help="leave out the Atari-sized row")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and iterations")
    args, _ = parser.parse_known_args(argv)
    if args.quick:
        args.rounds, args.iterations, args.atari_iterations = 8, 3, 2
    torch.set_num_threads(1)  # small networks: one intra-op thread avoids oversubscribing the cores
    hiddens = [int(h) for h in args.hiddens.split(",") if h]
    print(f"\nrecurrent policies: fcnet_hiddens {hiddens}, cell {args.cell}, StatelessCartPole (target: <= 1.3x)")
    for num_envs in (1, 8):
        for name, (us, ratio) in sampling_cost(hiddens, args.cell, num_envs, args.rounds).items():
            print(f"sampling, {num_envs} sub-env(s), {name:<20} {us:8.1f} us/env step  {ratio:5.2f}x")
    from relayrl.examples.stateless_cartpole import StatelessCartPole

    models = {
        "feed-forward": {"fcnet_hiddens": hiddens},
        "LSTM": {"fcnet_hiddens": hiddens, "use_lstm": True, "lstm_cell_size": args.cell, "max_seq_len": 20},
    }
    print_training("CartPole", training_cost(StatelessCartPole, models, CARTPOLE_CONFIG, args.iterations))
    if not args.no_atari:
        env, what = _atari_env()
        print(f"Atari-sized: {what}; VisionNetwork vs the same + use_lstm (256 cells), model defaults")
        models = {"conv": {}, "conv + LSTM": {"use_lstm": True}}
        print_training("84x84x4", training_cost(env, models, ATARI_CONFIG, args.atari_iterations))


if __name__ == "__main__":
    main()
