"""relayrl benchmarks: one command, one table.

    python benchmarks/run.py            # the core table (about 2 minutes on 2 cores)
    python benchmarks/run.py --quick    # fewer repeats
    python benchmarks/run.py --all      # plus the off-policy and async families' tables, where present

Every figure is measured in this run on this machine; throughput is set next to the raw environment's rate
measured in the same run, and repeated measurements report the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from multi_agent import multi_agent_sampling  # noqa: E402
from serving import serving_rows  # noqa: E402

TUNED_PPO_CARTPOLE = "ppo/cartpole-ppo.yaml"  # time-to-solve runs the tuned example's settings


def raw_env_rate(num_envs: int = 8, steps: int = 10_000, space_sample: bool = False) -> float:
    """Env steps/s of ``num_envs`` CartPole-v1 envs stepped in a Python loop with random actions: pre-drawn
    (the strict reference, only the env's own cost) or drawn by ``action_space.sample()`` at every step."""
    import gymnasium as gym
    import numpy as np

    envs = [gym.make("CartPole-v1") for _ in range(num_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        env.action_space.seed(i)
    actions = np.random.default_rng(0).integers(0, 2, size=(steps, num_envs)).tolist()
    start = time.perf_counter()
    for row in actions:
        for env, a in zip(envs, row):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample() if space_sample else a)
            if terminated or truncated:
                env.reset()
    return steps * num_envs / (time.perf_counter() - start)


def gym_vector_rate(num_envs: int = 8, steps: int = 6_000) -> float:
    """Env steps/s of Gymnasium's own ``SyncVectorEnv`` of ``num_envs`` CartPole-v1 stepped with
    ``action_space.sample()`` (its autoreset included)."""
    import gymnasium as gym

    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(num_envs)])
    envs.reset(seed=0)
    envs.action_space.seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    return steps * num_envs / (time.perf_counter() - start)


def sampling_rate(rounds: int = 15, seconds: float = 0.2) -> dict:
    """One RolloutWorker, 8 sub-envs, PPO's default config and model, next to the raw rates measured in the same
    rounds. Each short round measures all of them back to back, and the ratios are medians of the per-round
    ratios: a shared machine's load drifts between rounds, much less within one."""
    from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTorchPolicy
    from relayrl.env.registry import get_env_creator
    from relayrl.evaluation import RolloutWorker

    worker = RolloutWorker(
        get_env_creator("CartPole-v1"), PPOTorchPolicy, policy_config=dict(DEFAULT_CONFIG, num_envs_per_worker=8)
    )
    worker.sample()
    raw_steps = 2_000  # per env: about as long as one sampler measurement
    raws, raws_sampled, raws_vector, rates = [], [], [], []
    for _ in range(rounds):
        raws.append(raw_env_rate(steps=raw_steps))
        raws_sampled.append(raw_env_rate(steps=raw_steps, space_sample=True))
        raws_vector.append(gym_vector_rate(steps=raw_steps))
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            n += worker.sample().count
        rates.append(n / (time.perf_counter() - start))
    med = statistics.median
    return {
        "raw_steps_per_s": med(raws),
        "raw_sampled_steps_per_s": med(raws_sampled),
        "sample_steps_per_s": med(rates),
        "ratio": med(r / w for r, w in zip(rates, raws)),
        "ratio_sampled": med(r / w for r, w in zip(rates, raws_sampled)),
        "raw_vector_steps_per_s": med(raws_vector),
        "ratio_vector": med(r / w for r, w in zip(rates, raws_vector)),
        "breakdown_us": {
            k.removeprefix("mean_").removesuffix("_ms"): 1000 * v for k, v in worker.sampler_perf().items()
        },
    }


def _python_work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def parallel_ceiling(pool, n: int = 2_000_000) -> float:
    """How much faster two processes of pure-Python work finish two units than one process does one after the
    other (2.0 on two idle, independent cores): the most any multi-process vector env can gain here."""
    start = time.perf_counter()
    pool.map(_python_work, [n])
    one = time.perf_counter() - start
    start = time.perf_counter()
    pool.map(_python_work, [n, n], chunksize=1)
    return 2 * one / (time.perf_counter() - start)


def async_vector_sampling(rounds: int = 7, seconds: float = 1.0, step_cpu_ms: float = 1.0, num_envs: int = 8) -> dict:
    """Sampling env-steps/s of one RolloutWorker with a small PPO policy (fcnet [32, 32]) on ``num_envs`` CartPole-v1
    envs whose ``step()`` costs ``step_cpu_ms`` of CPU (a busy loop on ``time.thread_time``: a sleep, or a spin on the
    wall clock, would finish on time on a crowded CPU and overstate the gain): a Gymnasium ``AsyncVectorEnv`` of
    ``num_envs`` (SAME_STEP autoreset, one subprocess per env) returned by the env creator, against relayrl's
    in-process vectorisation (``num_envs_per_worker`` = ``num_envs``). The two alternate round by round; the ratio is
    the median of the per-round ratios. Each round also measures Gymnasium's AsyncVectorEnv alone and the machine's
    ``parallel_ceiling``."""
    import multiprocessing as mp

    import gymnasium as gym

    from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTorchPolicy
    from relayrl.evaluation import RolloutWorker

    class CpuCostlyCartPole(gym.Wrapper):
        def step(self, action):
            end = time.thread_time() + step_cpu_ms / 1000
            while time.thread_time() < end:
                pass
            return self.env.step(action)

    def make():
        return CpuCostlyCartPole(gym.make("CartPole-v1"))

    config = dict(DEFAULT_CONFIG, sample_batch_size=25, model={"fcnet_hiddens": [32, 32]}, seed=0)
    async_worker = RolloutWorker(
        lambda ctx: gym.vector.AsyncVectorEnv([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP),
        PPOTorchPolicy,
        policy_config=config,
    )
    local_worker = RolloutWorker(
        lambda ctx: make(), PPOTorchPolicy, policy_config=dict(config, num_envs_per_worker=num_envs)
    )

    def rate(worker: RolloutWorker) -> float:
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            n += worker.sample().count
        return n / (time.perf_counter() - start)

    # The reference: Gymnasium's own AsyncVectorEnv against the same envs stepped one by one, random actions, no
    # relayrl code at all (the most an AsyncVectorEnv gains on this machine).
    gym_async = gym.vector.AsyncVectorEnv([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    gym_envs = [make() for _ in range(num_envs)]
    pool = mp.get_context("fork").Pool(2)

    def gym_rates() -> tuple[float, float]:
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            gym_async.step(gym_async.action_space.sample())
            n += num_envs
        a = n / (time.perf_counter() - start)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            for env in gym_envs:
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                if terminated or truncated:
                    env.reset()
            n += num_envs
        return a, n / (time.perf_counter() - start)

    try:
        gym_async.reset(seed=0)
        for i, env in enumerate(gym_envs):
            env.reset(seed=i)
        async_worker.sample(), local_worker.sample()
        pairs, gym_pairs, ceilings = [], [], []
        for _ in range(rounds):
            pairs.append((rate(async_worker), rate(local_worker)))
            gym_pairs.append(gym_rates())
            ceilings.append(parallel_ceiling(pool))
    finally:
        async_worker.stop()
        local_worker.stop()
        gym_async.close()
        pool.terminate()
    med = statistics.median
    return {
        "async_steps_per_s": med(a for a, _ in pairs),
        "local_steps_per_s": med(b for _, b in pairs),
        "ratio": med(a / b for a, b in pairs),
        "gym_ratio": med(a / b for a, b in gym_pairs),
        "parallel_ceiling": med(ceilings),
        "cpus": os.cpu_count(),
    }


def learner_rate() -> dict:
    """PPO's SGD throughput (samples through the loss per second) on its default config, and PG's."""
    from relayrl.agents.pg import PGTrainer
    from relayrl.agents.ppo import PPOTrainer

    ppo = PPOTrainer(env="CartPole-v1", config={"seed": 0})
    ppo.train()
    ppo.train()
    info = ppo.train()["info"]
    pg = PGTrainer(env="CartPole-v1", config={"seed": 0, "train_batch_size": 4000})
    pg.train()
    pg_info = pg.train()["info"]
    return {
        "ppo_learner_samples_per_s": info["learner_throughput"],
        "pg_learner_samples_per_s": pg_info["opt_peak_throughput"],
    }


_SOLVE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from relayrl.agents.ppo import PPOTrainer
config = json.loads(sys.argv[1])
t1 = time.perf_counter()
trainer = PPOTrainer(env="CartPole-v1", config=config)
while True:
    r = trainer.train()
    if r["episode_reward_mean"] >= 475 or r["timesteps_total"] >= 500_000:
        break
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"solved": r["episode_reward_mean"] >= 475, "train_s": t2 - t1, "process_s": t2 - t0,
                  "steps": r["timesteps_total"], "peak_rss_mb": rss}))
"""


def time_to_solve(seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """PPO CartPole-v1 wall seconds until the 100-episode mean return >= 475, each seed in a fresh process."""
    from relayrl.tuned_examples.regression import tuned_config

    config = tuned_config(TUNED_PPO_CARTPOLE)
    runs = []
    for seed in seeds:
        out = subprocess.run(
            [sys.executable, "-c", _SOLVE, json.dumps({**config, "seed": seed})],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "solved": all(r["solved"] for r in runs),
        "train_s_median": statistics.median(r["train_s"] for r in runs),
        "process_s_median": statistics.median(r["process_s"] for r in runs),
        "steps_median": statistics.median(r["steps"] for r in runs),
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
        "runs": runs,
    }


_STARTUP = r"""
import time
t = time.perf_counter()
import relayrl
from relayrl.agents.ppo import PPOTrainer
PPOTrainer(env="CartPole-v1", config={"num_workers": 0})
print(time.perf_counter() - t)
"""


def startup(repeats: int = 3) -> dict:
    """``import relayrl`` plus building a PPO trainer (num_workers 0), in a fresh process."""
    times = [
        float(
            subprocess.run([sys.executable, "-c", _STARTUP], capture_output=True, text=True, check=True).stdout.strip()
        )
        for _ in range(repeats)
    ]
    return {"startup_s_median": statistics.median(times)}


def readme_command(tune: bool = False) -> dict:
    """Wall seconds of the README's first command, ``relayrl train -f .../cartpole-ppo.yaml``, from the start of
    the process to its TERMINATED line (in this process's default mode, or ``--tune``), and its reported steps."""
    import re
    import tempfile

    cmd = [sys.executable, "-m", "relayrl", "train", "-f", TUNED_PPO_CARTPOLE, "--local-dir", tempfile.mkdtemp()]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd + (["--tune"] if tune else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seconds, steps = float("nan"), 0
    for line in proc.stdout:
        if "TERMINATED" in line:
            seconds = time.perf_counter() - start
            steps = int(re.search(r"(\d+) timesteps", line).group(1))
    proc.wait()
    return {"seconds": seconds, "total_s": time.perf_counter() - start, "steps": steps}


def core_rows(quick: bool = False) -> list[tuple[str, str, str]]:
    s = sampling_rate(rounds=5 if quick else 15)
    solve = time_to_solve((0,) if quick else (0, 1, 2))
    st = startup(1 if quick else 3)
    lr = learner_rate()
    av = async_vector_sampling(rounds=3 if quick else 7)
    ma = multi_agent_sampling(rounds=5 if quick else 9)
    readme = [readme_command() for _ in range(1 if quick else 3)]
    readme_tune = readme_command(tune=True)
    readme_s = statistics.median(r["seconds"] for r in readme)
    return [
        (
            "raw CartPole-v1, 8 envs, pre-drawn random actions",
            f"{s['raw_steps_per_s']:,.0f} steps/s",
            "the envs' own cost only",
        ),
        (
            "raw CartPole-v1, 8 envs, action_space.sample()",
            f"{s['raw_sampled_steps_per_s']:,.0f} steps/s",
            "a random agent",
        ),
        (
            "gymnasium SyncVectorEnv, 8 envs, random actions",
            f"{s['raw_vector_steps_per_s']:,.0f} steps/s",
            "Gymnasium's own vector env",
        ),
        (
            "sampling, 1 worker, 8 sub-envs, PPO default model",
            f"{s['sample_steps_per_s']:,.0f} steps/s",
            f"{100 * s['ratio']:.0f}% / {100 * s['ratio_sampled']:.0f}% / {100 * s['ratio_vector']:.0f}% of the three"
            " raw rates (target: >= 50% of the random agent's)",
        ),
        (
            "  per vector step: env / policy / sampler / postprocess",
            " / ".join(f"{s['breakdown_us'][k]:.0f}" for k in ("env_wait", "inference", "processing", "postprocessing"))
            + " us",
            "postprocess includes the value pass over the fragment",
        ),
        (
            "AsyncVectorEnv of 8 in 1 worker / 8 in-process sub-envs",
            f"{av['ratio']:.2f}x",
            f"{av['async_steps_per_s']:,.0f} vs {av['local_steps_per_s']:,.0f} steps/s, small PPO policy, CartPole"
            f" step() busy-loops 1 ms of CPU (not sleep), {av['cpus']} CPUs (target >= 1.6x on 2); Gymnasium's"
            f" AsyncVectorEnv alone gains {av['gym_ratio']:.2f}x here; two processes of pure-Python work finish"
            f" {av['parallel_ceiling']:.2f}x faster than one (the machine's ceiling)",
        ),
        (
            "multi-agent: 2-agent CartPole, 1 shared PPO policy",
            f"{ma['shared_agent_steps_per_s']:,.0f} agent-steps/s",
            f"{ma['ratio']:.2f}x the single-agent sampler on 2 sub-envs ({ma['single_env_steps_per_s']:,.0f} steps/s;"
            f" target >= 0.8x); {ma['agents_per_env_step']:.2f} agents act per env step (a copy that ends waits)",
        ),
        (
            "  same, 2 policies (one per agent)",
            f"{ma['two_policies_agent_steps_per_s']:,.0f} agent-steps/s",
            f"{ma['ratio_two_policies']:.2f}x; two policy calls of one row per step instead of one of two",
        ),
        ("PPO learner (default config: 4000 x 30 epochs)", f"{lr['ppo_learner_samples_per_s']:,.0f} samples/s", ""),
        ("PG learner (train_batch_size 4000)", f"{lr['pg_learner_samples_per_s']:,.0f} samples/s", ""),
        (
            "PPO CartPole-v1 time to mean 475 (train)",
            f"{solve['train_s_median']:.1f} s",
            f"median of {len(solve['runs'])} seeds, {solve['steps_median']:,.0f} steps (target <= 10 s)",
        ),
        ("  same, whole process incl. imports", f"{solve['process_s_median']:.1f} s", ""),
        (
            "README command: relayrl train -f cartpole-ppo.yaml",
            f"{readme_s:.1f} s",
            f"command to TERMINATED line, median of {len(readme)} (in this process: num_workers 0), target <= 10 s;"
            f" {readme[0]['steps']:,} steps",
        ),
        (
            "  same with --tune (Ray + Tune)",
            f"{readme_tune['seconds']:.1f} s",
            f"the in-process run's time is {readme_s / readme_tune['seconds']:.0%} of this;"
            f" {readme_tune['steps']:,} steps",
        ),
        ("start-up: import + PPO trainer", f"{st['startup_s_median']:.2f} s", "target <= 2 s"),
        ("peak RSS of the PPO CartPole run", f"{solve['peak_rss_mb_max']:.0f} MB", "one process, no Ray"),
    ]


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"\n{title}\n" + "-" * (w0 + w1 + 40))
    for name, value, note in rows:
        print(f"{name:<{w0}}  {value:>{w1}}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat / one seed instead of three")
    parser.add_argument("--all", action="store_true", help="also run the other families' benchmark tables")
    args = parser.parse_args()
    print_table("relayrl core benchmarks", core_rows(args.quick))
    print_table("policy servers (benchmarks/serving.py; about 45 s)", serving_rows(args.quick))
    if args.all:
        for module in ("offpolicy", "async_family", "recurrent"):
            if os.path.exists(os.path.join(HERE, module + ".py")):
                __import__(module).main()


if __name__ == "__main__":
    main()
