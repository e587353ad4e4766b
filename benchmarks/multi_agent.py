"""Multi-agent sampling cost: a 2-agent CartPole (two independent copies) against the single-agent sampler on 2
CartPole sub-envs, in alternating rounds of the same run. With one shared policy both sample with one policy call per
step of 2 rows, so the ratio is the cost of the multi-agent bookkeeping; with two policies (one per agent) each step
makes two calls of one row."""

from __future__ import annotations

import statistics
import time


def multi_agent_sampling(rounds: int = 9, seconds: float = 0.3) -> dict:
    from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTorchPolicy
    from relayrl.env import make_multi_agent
    from relayrl.env.registry import get_env_creator
    from relayrl.evaluation import RolloutWorker

    single = RolloutWorker(
        get_env_creator("CartPole-v1"), PPOTorchPolicy, policy_config=dict(DEFAULT_CONFIG, num_envs_per_worker=2)
    )
    shared = RolloutWorker(make_multi_agent("CartPole-v1", 2), PPOTorchPolicy, policy_config=dict(DEFAULT_CONFIG))
    policies = {"p0": (PPOTorchPolicy, None, None, {}), "p1": (PPOTorchPolicy, None, None, {})}
    multi = RolloutWorker(
        make_multi_agent("CartPole-v1", 2),
        policies,
        policy_mapping_fn=lambda agent_id: f"p{agent_id}",
        policy_config=dict(DEFAULT_CONFIG),
    )
    for w in (single, shared, multi):
        for _ in range(6):  # past the env checker's first 1000 steps
            w.sample()

    rows_seen = {"agent_steps": 0, "env_steps": 0}

    def rate(worker, rows) -> float:
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            batch = worker.sample()
            n += rows(batch)
            if worker is shared:
                rows_seen["agent_steps"] += batch.total()
                rows_seen["env_steps"] += batch.count
        return n / (time.perf_counter() - start)

    singles, shareds, multis = [], [], []
    for _ in range(rounds):
        singles.append(rate(single, lambda b: b.count))
        shareds.append(rate(shared, lambda b: b.total()))
        multis.append(rate(multi, lambda b: b.total()))
    med = statistics.median
    return {
        "single_env_steps_per_s": med(singles),
        "shared_agent_steps_per_s": med(shareds),
        "ratio": med(m / s for m, s in zip(shareds, singles)),
        "two_policies_agent_steps_per_s": med(multis),
        "ratio_two_policies": med(m / s for m, s in zip(multis, singles)),
        "agents_per_env_step": rows_seen["agent_steps"] / max(1, rows_seen["env_steps"]),
        "breakdown_us": {
            k.removeprefix("mean_").removesuffix("_ms"): 1000 * v for k, v in shared.sampler_perf().items()
        },
    }


if __name__ == "__main__":
    print(multi_agent_sampling())
