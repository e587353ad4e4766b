"""Regression runner for the tuned examples: runs each YAML's experiments through Tune and checks ``expected``.

    python -m relayrl.tuned_examples.regression                       # every YAML in this directory
    python -m relayrl.tuned_examples.regression ppo/cartpole-ppo.yaml  # some of them

Each experiment carries ``expected: {episode_reward_mean: R, timesteps_total: T}``: the run must reach a mean
reward of at least R within T timesteps (the iteration that crosses T may finish); a multi-agent one may add
``policy_reward_mean`` (each policy's mean, a number for all or one per policy id). ``expected`` is stripped
before the spec goes to Tune. Also used by ``tests/learning/test_tuned_examples.py`` (``-m learning``).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

from relayrl.experiments import (
    load_experiment_file,
    normalize_experiments,
    resources_needed,
    run_experiments,
    start_ray,
    trial_error,
    validate_experiments,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def tuned_example_files() -> list[str]:
    return sorted(glob.glob(os.path.join(HERE, "*", "*.yaml")))


def tuned_config(relpath: str) -> dict:
    """The ``config`` of the single experiment in a tuned example file, e.g. ``"ppo/cartpole-ppo.yaml"``."""
    experiments = load_experiment_file(os.path.join(HERE, relpath))
    if len(experiments) != 1:
        raise ValueError(f"{relpath}: expected one experiment, found {sorted(experiments)}")
    return dict(next(iter(experiments.values())).get("config", {}))


def check(expected: dict, result: dict) -> tuple[bool, str]:
    """Whether ``result`` (a trial's last result) meets ``expected``; and why not. Multi-agent examples may also
    expect ``policy_reward_mean``: a number every policy must reach, or ``{policy id: number}`` (then
    ``episode_reward_mean`` may be left out: in a zero-sum game it is always 0)."""
    reward, target = result.get("episode_reward_mean", float("-inf")), expected.get("episode_reward_mean")
    budget = expected.get("timesteps_total")
    before_last = result.get("timesteps_total", 0) - result.get("timesteps_this_iter", 0)
    if target is not None and not reward >= target:
        return False, f"episode_reward_mean {reward:.1f} < {target}"
    per_policy = expected.get("policy_reward_mean")
    if per_policy is not None:
        got = result.get("policy_reward_mean") or {}
        targets = per_policy if isinstance(per_policy, dict) else {pid: per_policy for pid in got or ["<none>"]}
        for pid, want in targets.items():
            if not got.get(pid, float("-inf")) >= want:
                return False, f"policy_reward_mean[{pid!r}] {got.get(pid)} < {want}"
    if budget is not None and before_last >= budget:
        return False, f"reached {reward:.1f} only after {result['timesteps_total']} > {budget} timesteps"
    return True, "ok"


def ray_is_too_small(cpus: int) -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("CPU", 0) < cpus


def run_tuned_example(
    path: str, local_dir: str | None = None, ray_num_cpus: int | None = None, quiet: bool = True
) -> list[dict]:
    """Runs every experiment of one YAML file; returns one summary dict per trial (``passed`` included)."""
    experiments = load_experiment_file(path)
    expected = {name: spec.get("expected") for name, spec in experiments.items()}
    for name, exp in expected.items():
        if not exp or not ("episode_reward_mean" in exp or "policy_reward_mean" in exp):
            raise ValueError(
                f"{path}: experiment {name!r} has no `expected: {{episode_reward_mean: ...}}` (or policy_reward_mean)"
            )
    cpus = validate_experiments(experiments)
    local_dir = local_dir or tempfile.mkdtemp(prefix="relayrl-regression-")
    specs = normalize_experiments(experiments, local_dir)
    if ray_is_too_small(cpus):
        import ray

        ray.shutdown()  # started earlier in this process (by a trainer or another file) with fewer CPUs
    start_ray(num_cpus=max(ray_num_cpus or 0, cpus, os.cpu_count() or 1), need=cpus)
    start = time.time()
    summaries = []
    for name, spec in specs.items():
        for trial in run_experiments({name: spec}, quiet=quiet):
            result = trial.last_result or {}
            if trial.status != "TERMINATED":
                passed, why = False, f"trial {trial.status}: {trial_error(trial)}"
            else:
                passed, why = check(expected[name], result)
            summaries.append(
                {
                    "file": os.path.relpath(path, HERE),
                    "experiment": name,
                    "passed": passed,
                    "why": why,
                    "episode_reward_mean": result.get("episode_reward_mean"),
                    "policy_reward_mean": result.get("policy_reward_mean"),
                    "timesteps_total": result.get("timesteps_total"),
                    "time_total_s": result.get("time_total_s"),
                    "wall_s": time.time() - start,
                    "expected": expected[name],
                    "path": trial.path,
                }
            )
    return summaries


def runnable(path: str) -> tuple[int, str]:
    """``(cpus, "")`` when the file can run here, else ``(0, why not)``: an env whose package is missing
    (ale-py for Atari, mujoco) or a config that asks for GPUs on a machine without CUDA."""
    try:
        experiments = load_experiment_file(path)
        validate_experiments(experiments)
    except Exception as e:  # noqa: BLE001 - reported as the reason to skip
        return 0, str(e)
    cpus, gpus = resources_needed(experiments)
    if gpus > 0:
        import torch

        if not torch.cuda.is_available():
            return 0, f"needs {gpus:g} GPU(s)"
    return cpus, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="tuned-example YAML files (default: all of them)")
    parser.add_argument("--local-dir", default=None, help="results directory (default: a temporary one)")
    parser.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    args = parser.parse_args(argv)
    rows, skipped, plan = [], [], []
    for path in args.files or tuned_example_files():
        cpus, why = runnable(path)
        if why:
            skipped.append((os.path.relpath(path, HERE), why))
        else:
            plan.append((path, cpus))
    # One Ray instance for all files, big enough for the largest trial.
    if plan:
        start_ray(
            num_cpus=max([args.ray_num_cpus or 0, os.cpu_count() or 1] + [c for _, c in plan]),
            need=max(c for _, c in plan),
        )
    for path, _ in plan:
        rows += run_tuned_example(path, args.local_dir, args.ray_num_cpus, quiet=False)
    print(f"\n{'example':40s} {'reward':>9s} {'timesteps':>10s} {'train s':>8s}  result")
    for r in rows:
        reward = r["episode_reward_mean"]
        print(
            f"{r['file'] + ':' + r['experiment']:40s} {reward if reward is not None else float('nan'):9.1f}"
            f" {r['timesteps_total'] or 0:10d} {r['time_total_s'] or 0:8.1f}  "
            f"{'PASS' if r['passed'] else 'FAIL: ' + r['why']}"
        )
    for file, why in skipped:
        print(f"{file:40s} {'':9s} {'':10s} {'':8s}  SKIP: {why.splitlines()[0][:100]}")
    return 0 if rows and all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
