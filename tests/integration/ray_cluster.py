"""A Ray cluster of ``ray start --block`` processes on loopback ports, for tests that need a real one (busy CPUs,
a second node that dies).

    cluster = LocalCluster()
    try:
        address = cluster.add_node(num_cpus=2)                  # the head; then cluster.add_node(num_cpus=2)
        ...                                                     # ray.init(address=address) in some process
    finally:
        cluster.stop()

Each node runs in its own ``--temp-dir`` (so that a plain ``ray.init()`` elsewhere on this shared machine never
finds and joins it) and on ports of its own. ``stop()`` ends exactly the processes these nodes started, by PID
(never the CLI's global stop command, which would end other people's Ray too).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A driver that holds ``argv[2]`` CPUs of the cluster at ``argv[1]`` with idle actors (class CPUHolder, 1 CPU each)
# until its stdin closes or it is killed; it prints "holding" once they are placed.
HOLDER = """
import os, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")

@ray.remote(num_cpus=1)
class CPUHolder:
    def ping(self):
        return os.getpid()

holders = [CPUHolder.remote() for _ in range(int(sys.argv[2]))]
ray.get([h.ping.remote() for h in holders])
print("holding", flush=True)
sys.stdin.read()  # until the test closes stdin or ends this process
"""


def cluster_env() -> dict:
    """The environment of the nodes and of the drivers that join them: no RAY_ADDRESS from outside, and no token
    authentication (``ray start`` turns it on, drivers that join by address do not send the token)."""
    return {
        **os.environ,
        "RAY_ADDRESS": "",
        "RAY_AUTH_MODE": "disabled",
        "RAY_DEDUP_LOGS": "0",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    }


class LocalCluster:
    def __init__(self) -> None:
        self.address: str | None = None
        self.nodes: list[subprocess.Popen] = []
        self._temp_dirs: list[str] = []
        self._known: dict[int, psutil.Process] = {}  # every process seen under a node, by PID
        self._cpus: list[int] = []

    def add_node(
        self, num_cpus: int, resources: dict | None = None, env: dict | None = None, timeout: float = 180.0
    ) -> str:
        """Starts a node (the head first) and waits until the cluster counts its CPUs; returns the address.
        ``env``: extra environment variables of its processes (e.g. Ray system config as RAY_<name>)."""
        temp_dir = tempfile.mkdtemp(prefix="rrl", dir="/tmp")  # short: Ray's socket paths have a length limit
        self._temp_dirs.append(temp_dir)
        head = self.address is None
        port = free_port()
        cmd = [
            os.path.join(os.path.dirname(sys.executable), "ray"),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            f"--temp-dir={temp_dir}",
            "--object-store-memory=150000000",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        if head:
            cmd += ["--head", f"--port={port}", "--include-dashboard=false", f"--ray-client-server-port={free_port()}"]
        else:
            cmd += [f"--address={self.address}"]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**cluster_env(), **(env or {})},
            start_new_session=True,
        )
        self.nodes.append(proc)
        if head:
            self.address = f"127.0.0.1:{port}"
        self._wait_for_cpus(sum(self._cpus) + num_cpus, proc, timeout)
        self._cpus.append(num_cpus)
        return self.address

    def _wait_for_cpus(self, cpus: int, proc: subprocess.Popen, timeout: float) -> None:
        """Polls (in a subprocess, so that this process never connects) until the cluster has ``cpus`` CPUs."""
        code = (
            "import ray, sys, time\n"
            f"ray.init(address={self.address!r}, log_to_driver=False, logging_level='ERROR')\n"
            f"while ray.cluster_resources().get('CPU', 0) < {cpus}: time.sleep(0.5)\n"
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.remember_processes()
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}")
            try:
                subprocess.run(
                    [sys.executable, "-c", code],
                    timeout=max(5.0, deadline - time.time()),
                    check=True,
                    capture_output=True,
                    env=cluster_env(),
                )
                self.remember_processes()
                return
            except subprocess.CalledProcessError:
                time.sleep(1.0)  # the head is not answering yet
        raise TimeoutError(f"the Ray node did not join within {timeout:g} s")

    def remember_processes(self) -> None:
        """Records every process under the nodes (raylet, GCS, workers), so that stop() finds them even after
        their parent died."""
        for node in self.nodes:
            try:
                root = psutil.Process(node.pid)
                for p in [root, *root.children(recursive=True)]:
                    self._known.setdefault(p.pid, p)
            except psutil.NoSuchProcess:
                pass

    def node_processes(self, index: int) -> list[psutil.Process]:
        """The live processes of node ``index`` (0: the head): its ``ray start`` and everything under it."""
        root = psutil.Process(self.nodes[index].pid)
        return [root, *root.children(recursive=True)]

    def raylet_pid(self, index: int) -> int:
        (raylet,) = [p for p in self.node_processes(index) if p.name() == "raylet"]
        return raylet.pid

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to every process these nodes started (by PID), SIGKILL to those alive after ``grace_s``."""
        self.remember_processes()
        procs = [p for p in self._known.values() if _same_process(p)]
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for node in self.nodes:
            try:
                node.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for d in self._temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


def _same_process(p: psutil.Process) -> bool:
    """The PID still names the process recorded (not a new one that reused the number)."""
    try:
        return p.is_running()
    except psutil.Error:
        return False
