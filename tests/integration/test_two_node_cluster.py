"""Acceptance test of issue 10, item 2: PPO with ``recreate_failed_workers`` on a two-node Ray cluster survives the
loss of the node its remote workers run on, and finishes its iterations with replacements on the head.

    pytest -m learning tests/integration/test_two_node_cluster.py

Both nodes are ``ray start`` processes on this machine (2 CPUs each). The remote workers are put on the second
node deterministically: while the trainer is built, another driver holds the head's CPUs (its actors started
before the second node existed, so they can only be on the head); it then exits and frees them. After two
iterations the second node's raylet is SIGKILLed; the trainer must replace both workers on the head and train
on. The trainer runs in its own driver process, so this test process never joins the cluster.
"""

import json
import os
import subprocess
import sys
import time

import psutil
import pytest
from ray_cluster import HOLDER, LocalCluster, cluster_env

pytestmark = pytest.mark.learning

ITERS_BEFORE, ITERS_AFTER = 2, 4

DRIVER = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
from relayrl.agents.ppo import PPOTrainer
before, after = int(sys.argv[2]), int(sys.argv[3])

def say(**kw):
    print(json.dumps(kw), flush=True)

trainer = PPOTrainer(env="CartPole-v1", config={
    "num_workers": 2, "recreate_failed_workers": True, "worker_start_timeout_s": 120, "seed": 0,
    "train_batch_size": 400, "sample_batch_size": 100, "sgd_minibatch_size": 100, "num_sgd_iter": 2,
    "model": {"fcnet_hiddens": [32, 32]}})
nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
say(event="built", workers=dict(trainer.workers._nodes),
    head=[i for i, n in nodes.items() if "node:__internal_head__" in n["Resources"]][0],
    second=[i for i, n in nodes.items() if "node2" in n["Resources"]][0])
sys.stdin.readline()  # the holder is gone: the head's CPUs are free
results = []
for i in range(before + after):
    if i == before:
        say(event="kill")
        sys.stdin.readline()  # the second node's raylet is dead
    start = time.time()
    r = trainer.train()
    results.append({"iter": r["training_iteration"], "seconds": time.time() - start,
                    "timesteps": r["timesteps_this_iter"], "reward": r["episode_reward_mean"],
                    "healthy": r["num_healthy_workers"], "recreated": r["num_recreated_workers"]})
    say(event="iteration", **results[-1])
nodes_after = ray.get([w.node.remote() for w in trainer.workers.remote_workers()])
say(event="done", workers=nodes_after, recreated=trainer.workers.num_recreated)
trainer.stop()
"""

# Node death is noticed by the GCS's health checks: every second, dead after 3 misses (Ray's default: ~30 s).
FAST_HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def read_event(proc: subprocess.Popen, event: str, deadline: float, seen: list) -> dict:
    """The driver's next message ``event``; the ones before it are appended to ``seen``."""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the driver ended (rc {proc.wait()}) before {event!r}: {proc.stderr.read()}")
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line Ray printed
        if msg.get("event") == event:
            return msg
        seen.append(msg)
    raise AssertionError(f"no {event!r} within the time allowed")


def test_ppo_survives_losing_the_second_node():
    cluster = LocalCluster()
    holder = driver = None
    try:
        address = cluster.add_node(num_cpus=2, env=FAST_HEALTH_CHECKS)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, address, "2"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cluster_env(),
        )
        assert holder.stdout.readline().strip() == "holding"
        cluster.add_node(num_cpus=2, resources={"node2": 1}, env=FAST_HEALTH_CHECKS)
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, address, str(ITERS_BEFORE), str(ITERS_AFTER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cluster_env(),
            cwd=os.getcwd(),
        )
        deadline = time.time() + 900
        seen: list[dict] = []
        built = read_event(driver, "built", deadline, seen)
        second = built["second"][:12]
        assert sorted(built["workers"]) == ["1", "2"], built
        assert all(second in where for where in built["workers"].values()), built  # both on the second node
        holder.kill()
        holder.wait(timeout=30)
        driver.stdin.write("go\n")
        driver.stdin.flush()
        read_event(driver, "kill", deadline, seen)
        cluster.remember_processes()  # the second node's workers too, so that stop() ends them whatever happens
        raylet = psutil.Process(cluster.raylet_pid(1))
        raylet.kill()  # SIGKILL, by PID
        raylet.wait(timeout=30)
        killed_at = time.time()
        driver.stdin.write("killed\n")
        driver.stdin.flush()
        done = read_event(driver, "done", deadline, seen)
        assert driver.wait(timeout=120) == 0, driver.stderr.read()
    finally:
        for proc in (driver, holder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        cluster.stop()
    iterations = [m for m in seen if m["event"] == "iteration"]
    print(json.dumps(iterations, indent=1), f"\nfinished {time.time() - killed_at:.0f} s after the kill", done)
    assert [it["iter"] for it in iterations] == list(range(1, ITERS_BEFORE + ITERS_AFTER + 1))
    assert all(it["timesteps"] >= 400 for it in iterations)
    after = iterations[ITERS_BEFORE:]
    assert after[0]["recreated"] == 2 and all(it["healthy"] == 2 for it in after), after
    head = built["head"][:12]
    assert len(done["workers"]) == 2 and all(head in where for where in done["workers"]), done
