"""A Ray cluster whose CPUs another job holds: training fails within worker_start_timeout_s with an error naming
what is missing and who holds it, instead of waiting silently forever (issue 10, item 3).

The cluster is a real ``ray start`` head (3 CPUs) on this machine; a second driver process holds all 3 CPUs with
sleeping actors. The trainer and the CLI run in their own processes, so this test process never joins it.
"""

import json
import os
import subprocess
import sys
import time

import pytest
from ray_cluster import HOLDER, LocalCluster, cluster_env

pytestmark = pytest.mark.slow


TRAINER = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
from relayrl.agents.ppo import PPOTrainer
start = time.time()
try:
    PPOTrainer(env="CartPole-v1", config={"num_workers": 2, "worker_start_timeout_s": 5})
    error = None
except Exception as e:
    error = f"{type(e).__name__}: {e}"
print(json.dumps({"error": error, "seconds": time.time() - start}), flush=True)
"""


@pytest.fixture(scope="module")
def busy_cluster():
    cluster = LocalCluster()
    holder = None
    try:
        address = cluster.add_node(num_cpus=3)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, address, "3"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cluster_env(),
        )
        line = holder.stdout.readline()  # blocks until the actors hold the CPUs (or the holder died)
        assert line.strip() == "holding", holder.stderr.read() if holder.poll() is not None else line
        yield address
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(timeout=30)
        cluster.stop()


def test_trainer_on_a_busy_cluster_names_the_missing_cpus(busy_cluster):
    proc = subprocess.run(
        [sys.executable, "-c", TRAINER, busy_cluster], capture_output=True, text=True, timeout=240, env=cluster_env()
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    error = out["error"] or ""
    assert error.startswith(
        "WorkerStartTimeout: remote worker(s) [1, 2] did not start within worker_start_timeout_s=5 s"
    ), error
    assert "each needs 1 CPU (2 waiting)" in error and "0 of 3 CPU free" in error, error
    assert "CPUHolder x 3 (job " in error and "driver pid" in error, error  # who holds them
    assert out["seconds"] < 20, out


def test_cli_train_on_a_busy_cluster_fails_with_one_line(busy_cluster, tmp_path):
    start = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "relayrl",
            "train",
            "--run",
            "PPO",
            "--env",
            "CartPole-v1",
            "--ray-address",
            busy_cluster,
            "--config",
            json.dumps({"num_workers": 2, "worker_start_timeout_s": 5}),
            "--stop",
            '{"training_iteration": 1}',
            "--local-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=cluster_env(),
        cwd=os.getcwd(),
    )
    elapsed = time.time() - start
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("relayrl: error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "could not start within worker_start_timeout_s=5 s: it needs 3 CPU" in errors[0], errors[0]
    assert "0 of 3 CPU free" in errors[0] and "CPUHolder x 3" in errors[0], errors[0]
    assert any(ln.startswith("relayrl: hint: ") for ln in lines), proc.stderr
    # The warning when Ray is joined, then the error about 5 s later: start-up (imports, joining, Tune) is the rest.
    assert any(ln.startswith("relayrl: warning: a trial needs 3 CPUs") for ln in lines), proc.stderr
    assert elapsed < 120, (elapsed, proc.stderr)
