"""Learning through the policy server: the example server (relayrl/examples/serving/cartpole_server.py) trains in one
process while the example client (cartpole_client.py) steps Gymnasium CartPole in another, over loopback HTTP.

Every server binds 127.0.0.1 on a free port (``--port 0``; the port is read from its output) and is stopped by its
PID at the end. The figure is the client's: the mean return of its last 20 episodes (exploring actions), and the
client steps it took to get there. Both processes run with one BLAS / torch thread (2 shared cores).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

SERVER = "relayrl.examples.serving.cartpole_server"
CLIENT = "relayrl.examples.serving.cartpole_client"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
URL = re.compile(r"serving on http://(127\.0\.0\.1:\d+)")


class Server:
    """The example server in a subprocess; ``addresses`` once its ``servers`` PolicyServers are up."""

    def __init__(self, *args: str, servers: int = 1):
        cmd = [sys.executable, "-m", SERVER, "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 180
        while len(self.addresses()) < servers:
            assert self.proc.poll() is None, "the server exited:\n" + "".join(self.lines[-30:])
            assert time.monotonic() < deadline, "the server did not start serving:\n" + "".join(self.lines[-30:])
            time.sleep(0.1)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def addresses(self) -> list[str]:
        return [m.group(1) for line in list(self.lines) for m in [URL.search(line)] if m]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # by PID
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.reader.join(5)


def run_client(addresses: list[str], *args: str, timeout: float) -> dict:
    cmd = [sys.executable, "-m", CLIENT, *(a for addr in addresses for a in ("--address", addr)), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the client printed no summary (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    summary = json.loads(lines[-1])
    print(f"client {' '.join(args)}: {summary}")
    return summary


def served(server_args: list[str], client_args: list[str], servers: int = 1, timeout: float = 600) -> dict:
    server = Server(*server_args, servers=servers)
    try:
        summary = run_client(server.addresses(), *client_args, timeout=timeout)
    finally:
        server.stop()
    summary["server_output"] = "".join(server.lines[-5:])
    return summary


IN_PROCESS = """
import json, time
from relayrl.agents.ppo import PPOTrainer
from relayrl.examples.serving.cartpole_server import CONFIGS
config = {**CONFIGS["PPO"], "num_workers": 0, "num_envs_per_worker": 8, "seed": 0, "metrics_smoothing_episodes": 20}
trainer = PPOTrainer(env="CartPole-v1", config=config)
start = time.perf_counter()
while True:
    result = trainer.train()
    if result["episode_reward_mean"] >= 450 or result["timesteps_total"] >= 150_000:
        break
print(json.dumps({"steps": result["timesteps_total"], "reward": result["episode_reward_mean"],
                  "seconds": time.perf_counter() - start}))
"""


def in_process_ppo() -> dict:
    """The same PPO config on CartPole-v1 in one process (8 envs: the client's 8 concurrent episodes)."""
    out = subprocess.run([sys.executable, "-c", IN_PROCESS], capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"in-process PPO: {result}")
    return result


PPO_CLIENT = ["--num-envs", "8", "--stop-reward", "450", "--max-steps", "150000"]
LOCAL = ["--inference-mode", "local", "--update-interval", "0.02", "--encoding", "msgpack"]


@pytest.mark.timeout(300)
def test_ppo_remote_inference_reaches_450_within_150k_client_steps():
    summary = served(["--run", "PPO"], PPO_CLIENT)
    assert summary["reached"] and summary["last20_mean"] >= 450, summary
    assert summary["steps_at_reach"] <= 150_000


@pytest.mark.timeout(300)
def test_ppo_local_inference_reaches_450_within_150k_and_1_5x_the_in_process_time():
    reference = in_process_ppo()
    summary = served(["--run", "PPO", "--max-backlog-steps", "64"], PPO_CLIENT + LOCAL)
    assert summary["reached"] and summary["last20_mean"] >= 450, summary
    assert summary["steps_at_reach"] <= 150_000
    assert summary["seconds"] <= 1.5 * reference["seconds"], (summary, reference)
