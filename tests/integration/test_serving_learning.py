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


def served(server_args: list[str], client_args: list[str], servers: int = 1, timeout: float = 240) -> dict:
    server = Server(*server_args, servers=servers)
    try:
        summary = run_client(server.addresses(), *client_args, timeout=timeout)
    except BaseException:
        print("server output:\n" + "".join(server.lines[-40:]))
        raise
    finally:
        server.stop()
    summary["server_output"] = "".join(line for line in server.lines if "cartpole_server:" in line)
    return summary


IN_PROCESS = """
import json, sys, threading, time
import gymnasium as gym
from relayrl.agents.ppo import PPOTrainer
from relayrl.env.external_env import ExternalEnv
from relayrl.examples.serving.cartpole_server import CONFIGS


class Simulators(ExternalEnv):  # 8 CartPole simulators in threads of this process, as the client's 8 threads
    def __init__(self, ctx=None):
        space = gym.make("CartPole-v1")
        super().__init__(space.action_space, space.observation_space)

    def run(self):
        def play(i):
            env, seed = gym.make("CartPole-v1"), 1000 * i
            while True:
                eid = self.start_episode()
                obs, _ = env.reset(seed=seed)
                seed += 1
                while True:
                    obs, reward, terminated, truncated, _ = env.step(self.get_action(eid, obs))
                    self.log_returns(eid, reward)
                    if terminated or truncated:
                        self.end_episode(eid, obs, truncated=truncated and not terminated)
                        break
        for i in range(8):
            threading.Thread(target=play, args=(i,), daemon=True).start()
        threading.Event().wait()


config = {**CONFIGS["PPO"], "num_workers": 0, "seed": 0, "metrics_smoothing_episodes": 20}
if sys.argv[1] == "external":
    trainer = PPOTrainer(env=Simulators, config=config)
else:
    trainer = PPOTrainer(env="CartPole-v1", config={**config, "num_envs_per_worker": 8})
start = time.perf_counter()
while True:
    result = trainer.train()
    if result["episode_reward_mean"] >= 450 or result["timesteps_total"] >= 150_000:
        break
print(json.dumps({"steps": result["timesteps_total"], "reward": result["episode_reward_mean"],
                  "seconds": time.perf_counter() - start}))
"""


def in_process_ppo(kind: str) -> dict:
    """The example's PPO config trained to a mean of 450 (last 20 episodes) in one process: ``external``, the
    simulators in threads of the trainer's process driving an ExternalEnv (the same sampler path as the server's);
    ``vector``, CartPole-v1 as 8 sub-envs of the vectorised sampler."""
    out = subprocess.run([sys.executable, "-c", IN_PROCESS, kind], capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"in-process PPO ({kind}): {result}")
    return result


PPO_CLIENT = ["--num-envs", "8", "--stop-reward", "450", "--max-steps", "150000", "--encoding", "msgpack"]
LOCAL = ["--inference-mode", "local", "--update-interval", "0.02"]
STATELESS_PPO = {  # stateless_cartpole.PPO_SETTINGS in short, with no observation filter
    "sample_batch_size": 250,
    "train_batch_size": 2000,
    "sgd_minibatch_size": 500,
    "num_sgd_iter": 10,
    "lr": 3e-3,
    "lambda": 0.95,
    "kl_coeff": 0.0,
    "vf_loss_coeff": 0.01,
    "vf_clip_param": 100.0,
    "observation_filter": "NoFilter",
    "model": {"use_lstm": True, "lstm_cell_size": 64, "fcnet_hiddens": [64], "max_seq_len": 20},
}


@pytest.mark.timeout(300)
def test_ppo_remote_inference_reaches_450_within_150k_client_steps():
    # Measured (8 client episodes): 450 at 20k and 58k client steps, 21 s and 29 s of client time.
    summary = served(["--run", "PPO"], PPO_CLIENT + ["--coalesce-rewards"])
    assert summary["reached"] and summary["mean_at_reach"] >= 450, summary
    assert summary["steps_at_reach"] <= 150_000


# Marked: the 1.5x wall-time claim holds under load (1.20x, 1.23x) but not on a quiet machine (1.68x twice), where
# the in-process reference runs faster; the default run must not depend on the machine's load. With the client
# reporting while it acts (policy_client.py): 1.26, 1.40, 1.05, 1.75, 1.73, 1.22 (load 4-8, other runs on the box).
@pytest.mark.learning
@pytest.mark.timeout(400)
def test_ppo_local_inference_reaches_450_within_150k_at_most_1_5x_the_in_process_time():
    """Per step of learning: the wall seconds per client step to 450 against the in-process ExternalEnv's seconds
    per env step to 450 (both runs' step counts vary with their seeds and thread timing, the rate does not).
    Measured: 1.20x and 1.23x (the vectorised sampler on 8 CartPoles: 1.4x and 2.5x less per step than local
    inference)."""
    reference = in_process_ppo("external")
    vector = in_process_ppo("vector")
    summary = served(["--run", "PPO", "--max-backlog-steps", "64"], PPO_CLIENT + LOCAL)
    assert summary["reached"] and summary["mean_at_reach"] >= 450, summary
    assert summary["steps_at_reach"] <= 150_000
    rate, reference_rate = summary["seconds"] / summary["steps"], reference["seconds"] / reference["steps"]
    print(f"local / in-process seconds per step: {rate / reference_rate:.2f} (vectorised sampler:"
          f" {rate / (vector['seconds'] / vector['steps']):.2f}); to 450: {summary['seconds']:.1f} s local,"
          f" {reference['seconds']:.1f} s in-process, {vector['seconds']:.1f} s vectorised")  # fmt: skip
    assert rate <= 1.5 * reference_rate, (summary, reference)


@pytest.mark.timeout(300)
def test_multi_agent_external_env_two_agents_two_policies_trains():
    """ExternalMultiAgentEnv: agents a0, a1 each drive a CartPole of the episode with their own policy (p0, p1); the
    episode ends when either falls, so its return is what the weaker policy achieves. Measured: 300 at 17k and 23k
    client steps."""
    summary = served(["--run", "PPO", "--agents", "2"], ["--agents", "2", *PPO_CLIENT[:2], "--stop-reward", "300",
                     "--max-steps", "150000", "--coalesce-rewards", "--encoding", "msgpack"])  # fmt: skip
    assert summary["reached"] and summary["mean_at_reach"] >= 300, summary
    assert '"p0"' in summary["server_output"] and '"p1"' in summary["server_output"]


@pytest.mark.timeout(300)
def test_a_recurrent_policy_served_remotely_trains_on_stateless_cartpole():
    """PPO + LSTM behind the server on StatelessCartPole (no velocities): the server keeps each episode's state. A
    feed-forward policy stays near 45 here (tests/unit/test_recurrent.py: 44.9 at 150k steps, best 52.9).
    Measured: 100 at 48k and 37k client steps."""
    server = ["--run", "PPO", "--env", "StatelessCartPole-v1", "--config", json.dumps(STATELESS_PPO)]
    client = ["--env", "StatelessCartPole-v1", "--num-envs", "8", "--stop-reward", "100", "--max-steps", "150000",
              "--coalesce-rewards", "--encoding", "msgpack"]  # fmt: skip
    summary = served(server, client)
    assert summary["reached"] and summary["mean_at_reach"] >= 100, summary


@pytest.mark.timeout(300)
def test_two_rollout_workers_serve_on_port_plus_worker_index_and_a_client_uses_both():
    summary = served(["--run", "PPO", "--num-workers", "2"],
                     ["--num-envs", "4", "--max-steps", "3000", "--coalesce-rewards"], servers=2)  # fmt: skip
    assert summary["steps"] >= 3000
    assert "iteration" in summary["server_output"]


@pytest.mark.timeout(300)
def test_a_worker_without_clients_does_not_stall_the_lock_step_trainer():
    """Two workers serve and the client drives only the first. PPO samples its workers in lock step; the idle
    worker's sample() hands back nothing after its ExternalEnv's idle_s (1 s) instead of waiting for a client, so the
    trainer keeps iterating and the first worker's client is answered (before, both waited for ever)."""
    server = Server("--run", "PPO", "--num-workers", "2", servers=2)
    try:
        summary = run_client(server.addresses()[:1], "--num-envs", "4", "--max-steps", "3000", "--coalesce-rewards",
                             timeout=120)  # fmt: skip
    finally:
        server.stop()
    iterations = [line for line in server.lines if "cartpole_server: iteration" in line]
    assert summary["steps"] >= 3000 and len(iterations) >= 4, "".join(server.lines[-20:])


@pytest.mark.learning
@pytest.mark.timeout(900)
def test_dqn_with_logged_random_actions_reaches_400_within_150k_client_steps():
    """The client acts randomly in 20% of the steps and reports those actions with log_action. Measured (4 client
    episodes, 2 shared cores, load 4-14) with the example's 16-step fragments: 400 at 41k, 44k, 53k, 59k, 64k, 66k
    and 71k client steps (105-140 s); one run of eight ended at 221 after 150k steps (the server's thread timing
    makes runs differ). With 4-step fragments: 428 at 78k (302 s), 447 at 90k (170 s), 406 at 77k; one of three
    ended at 68."""
    client = ["--num-envs", "4", "--off-policy", "0.2", "--stop-reward", "400", "--max-steps", "150000",
              "--coalesce-rewards", "--encoding", "msgpack"]  # fmt: skip
    summary = served(["--run", "DQN"], client, timeout=850)
    assert summary["reached"] and summary["mean_at_reach"] >= 400, summary
    assert summary["steps_at_reach"] <= 150_000
