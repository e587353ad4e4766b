"""Learning curves: ``episode_reward_mean`` against ``timesteps_total`` from Tune's progress.csv files.

    plot_learning_curve("~/ray_results/default/PPO_CartPole-v1_...")   # one trial
    plot_learning_curve("~/ray_results/default")                       # every trial below, one curve each

Needs matplotlib (``pip install 'relayrl[plot]'``); rendering uses the Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import math
import os

X_KEY, Y_KEY = "timesteps_total", "episode_reward_mean"


def read_progress(path: str) -> tuple[list[float], list[float]]:
    """(timesteps, mean rewards) of one progress.csv; rows without a reward yet are skipped."""
    xs, ys = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                x, y = float(row[X_KEY]), float(row[Y_KEY])
            except (KeyError, TypeError, ValueError):
                continue
            if not math.isnan(y):
                xs.append(x)
                ys.append(y)
    return xs, ys


def find_progress_files(result_dir: str) -> list[str]:
    found = []
    for root, _, files in os.walk(result_dir):
        if "progress.csv" in files:
            found.append(os.path.join(root, "progress.csv"))
    return sorted(found)


def plot_learning_curve(result_dir: str, out: str | None = None) -> str:
    """Writes the learning-curve PNG (default ``result_dir/learning_curve.png``) and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result_dir = os.path.abspath(os.path.expanduser(result_dir))
    files = find_progress_files(result_dir)
    if not files:
        raise FileNotFoundError(f"no progress.csv under {result_dir}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in files:
        xs, ys = read_progress(path)
        label = os.path.basename(os.path.dirname(path))[:60]
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=label)
    ax.set_xlabel(X_KEY)
    ax.set_ylabel(Y_KEY)
    ax.set_title(os.path.basename(result_dir)[:80])
    ax.grid(alpha=0.3)
    if len(files) <= 10:
        ax.legend(fontsize="small")
    fig.tight_layout()
    out = out or os.path.join(result_dir, "learning_curve.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
