"""Policy server latency and throughput on loopback, CartPole-sized observations (remote inference).

    python benchmarks/serving.py                 # prints a table (about three minutes)
    python benchmarks/serving.py --calls 5000 --rounds 1

Two servers, each in its own process, and the client process times ``get_action`` calls of one episode, one at a
time on one keep-alive connection:

- "training server": a PolicyServer whose ExternalEnv is driven by a fake sampler thread that answers every poll
  with a real PPO policy (CartPole spaces, the default model, one batched compute_actions per poll), as the
  trainer's sampler does: every get_action is handed to that thread and its action handed back to the event loop;
- "relayrl serve (inference only)": ``relayrl serve CHECKPOINT`` itself (a subprocess) on a PPO CartPole
  checkpoint of the same model, trained for one iteration when the benchmark starts; its actions are computed on
  the server's event loop thread (``relayrl/serving/inference.py``), one batched forward pass per loop iteration.

Both with relayrl's stack: the PolicyServer (aiohttp) and PolicyClient (a socket and the httptools parser,
``relayrl/serving/http_transport.py``), JSON and msgpack; batched: 64 episodes' get_action in one ``/v1/batch``
request (msgpack), agent-steps/s. Then the training server with the standard library's ``http.client`` and with
``requests`` as the client, and the stacks' floors: a handler that answers at once (no policy, no hand-off) under
aiohttp and under uvicorn, with PolicyClient's connection and with ``http.client``: what the HTTP layers cost on
their own.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing as mp
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

OBS = [0.0123, -0.0456, 0.0312, 0.0178]


def _serve(port_out: mp.Queue, polled: Any = None) -> None:
    """A PolicyServer whose fake sampler answers every poll with a real PPO policy (one batched compute_actions per
    poll), as the trainer's does; ``polled`` (a shared counter) counts the steps it polled, logged ones included;
    local-inference clients pull the same policy."""
    import gymnasium as gym

    from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTorchPolicy
    from relayrl.env.external_env import ExternalEnv
    from relayrl.serving import PolicyServer, ServedPolicy

    space = gym.make("CartPole-v1")
    env = ExternalEnv(space.action_space, space.observation_space, max_concurrent=1000)
    env.start = lambda: None  # episodes come over HTTP only
    config = {**DEFAULT_CONFIG, "seed": 0}
    policy = PPOTorchPolicy(space.observation_space, space.action_space, config)
    env.served_policy = ServedPolicy("PPO", policy, config)

    def sampler() -> None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # a 64-row forward pass: 0.8 ms on one BLAS thread, ~35 ms on two loaded cores
        while True:
            obs, _, terms, _, _, off = env.poll()
            if polled is not None:
                with polled.get_lock():
                    polled.value += len(obs)
            ids = [e for e in obs if not terms[e]["__all__"] and e not in off]
            if ids:
                actions, _, _ = policy.compute_actions(np.stack([obs[e]["agent0"] for e in ids]))
                env.send_actions({e: {"agent0": int(a)} for e, a in zip(ids, actions)})

    threading.Thread(target=sampler, daemon=True).start()
    server = PolicyServer(env, "127.0.0.1", 0, episode_timeout_s=None)
    port_out.put(server.port)
    server.serve_forever()


def _train_checkpoint(directory: str, path_out: mp.Queue) -> None:
    """Trains PPO on CartPole-v1 (the default model and observation filter) for one small iteration and saves it."""
    from relayrl.agents.ppo import PPOTrainer

    config = {"num_workers": 0, "train_batch_size": 256, "sgd_minibatch_size": 64, "num_sgd_iter": 1, "seed": 0}
    trainer = PPOTrainer(env="CartPole-v1", config=config)
    try:
        trainer.train()
        path_out.put(trainer.save(directory))
    finally:
        trainer.stop()


def train_checkpoint(directory: str) -> str:
    """The checkpoint ``relayrl serve`` rows serve (trained in a subprocess: the client process stays light)."""
    ctx = mp.get_context("spawn")
    path_out = ctx.Queue()
    proc = ctx.Process(target=_train_checkpoint, args=(directory, path_out))
    proc.start()
    try:
        return path_out.get(timeout=300)
    finally:
        proc.join(60)


class RelayrlServe:
    """``relayrl serve CHECKPOINT --port 0`` in a subprocess: ``pid`` and ``port`` once it serves; ``stop()``
    ends it (SIGTERM, by its PID)."""

    def __init__(self, checkpoint: str):
        cmd = [sys.executable, "-m", "relayrl", "serve", checkpoint, "--port", "0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.pid, lines = self.proc.pid, []
        for line in self.proc.stdout:
            lines.append(line)
            found = re.search(r" on http://127\.0\.0\.1:(\d+) ", line)
            if found:
                self.port = int(found.group(1))
                break
        else:
            raise RuntimeError("relayrl serve exited:\n" + "".join(lines))
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drains its later lines

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


ANSWER = b'{"action":1}'


def _serve_bare(backend: str, port_out: mp.Queue) -> None:
    """A handler that reads the body and answers ``{"action": 1}`` at once, under aiohttp or uvicorn/httptools."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port_out.put(sock.getsockname()[1])
    if backend == "uvicorn":
        import uvicorn

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            more = True
            while more:
                more = (await receive()).get("more_body", False)
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": ANSWER})

        config = uvicorn.Config(app, http="httptools", interface="asgi3", lifespan="off", log_config=None)
        asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
        return
    from aiohttp import web

    async def handle(request):
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        runner = web.ServerRunner(web.Server(handle), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def _time_calls(call, n: int, server_pid: int) -> dict:
    import psutil

    for _ in range(min(300, n)):
        call()
    server = psutil.Process(server_pid)
    latencies = np.empty(n)
    cpu0, server0, start = time.process_time(), sum(server.cpu_times()[:2]), time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        call()
        latencies[i] = time.perf_counter() - t
    wall = time.perf_counter() - start
    ms = latencies * 1e3
    return {
        "calls_per_s": n / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "server_cpu_us": (sum(server.cpu_times()[:2]) - server0) / n * 1e6,
        "client_cpu_us": (time.process_time() - cpu0) / n * 1e6,
    }


def _wait_for_port(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no server on port {port}")


def run_case(server: str, client_kind: str, encoding: str, n: int, batch: int = 0, checkpoint: str = "") -> dict:
    """Times ``n`` calls of one client against ``server`` ("relayrl": the training server, a PolicyServer with its
    fake sampler; "serve": ``relayrl serve checkpoint``; "aiohttp" / "uvicorn": a bare handler); ``client_kind``:
    "relayrl" (PolicyClient, or its connection for a bare server), "http.client" or "requests"."""
    if server == "serve":
        served = RelayrlServe(checkpoint)
        try:
            return _time_client(served.port, served.pid, "relayrl", client_kind, encoding, n, batch)
        finally:
            served.stop()
    ctx = mp.get_context("spawn")
    port_out = ctx.Queue()
    target, args = (_serve, (port_out,)) if server == "relayrl" else (_serve_bare, (server, port_out))
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    try:
        port = port_out.get(timeout=120)
        _wait_for_port(port)
        return _time_client(port, proc.pid, server, client_kind, encoding, n, batch)
    finally:
        proc.kill()
        proc.join(10)


def _time_client(port: int, pid: int, server: str, client_kind: str, encoding: str, n: int, batch: int) -> dict:
    from relayrl.serving import PolicyClient
    from relayrl.serving.http_transport import Connection

    obs = np.asarray(OBS, np.float32)
    if server == "relayrl" and client_kind == "relayrl":
        client = PolicyClient(f"127.0.0.1:{port}", encoding=encoding)
        if batch:
            ids = [client.start_episode() for _ in range(batch)]
            calls = [{"command": "get_action", "episode_id": e, "observation": obs} for e in ids]
            return _time_calls(lambda: client.batch(calls), n, pid)
        eid = client.start_episode()
        return _time_calls(lambda: client.get_action(eid, obs), n, pid)
    eid = "bench"
    if server == "relayrl":
        eid = PolicyClient(f"127.0.0.1:{port}").start_episode()
    body = json.dumps({"episode_id": eid, "observation": OBS}).encode()
    path, headers = "/v1/get_action", {"Content-Type": "application/json"}
    if client_kind == "relayrl":
        conn = Connection("127.0.0.1", port, 60.0)
        lines = b"Content-Type: application/json\r\n"
        return _time_calls(lambda: json.loads(conn.request("POST", path, body, lines)[2]), n, pid)
    if client_kind == "http.client":
        import http.client

        hc = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def call() -> Any:
            hc.request("POST", path, body, headers)
            return json.loads(hc.getresponse().read())

        return _time_calls(call, n, pid)
    import requests

    session, url = requests.Session(), f"http://127.0.0.1:{port}{path}"
    return _time_calls(lambda: session.post(url, data=body, headers=headers).json(), n, pid)


def _local_client(port: int, ready: Any, go: Any, seconds: float, seed: int) -> None:
    """A local-inference client stepping CartPole-v1 for ``seconds`` after ``go``: acts with its copy of the
    policy and reports every step (log_action + log_returns) in batches, pulling weights every 0.1 s."""
    import gymnasium as gym

    from relayrl.serving import PolicyClient

    client = PolicyClient(f"127.0.0.1:{port}", inference_mode="local", update_interval=0.1, encoding="msgpack")
    env = gym.make("CartPole-v1")
    ready.wait()  # every client built: the timed window starts for all at once
    go.wait()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        eid = client.start_episode()
        obs, _ = env.reset(seed=seed)
        seed += 1
        done = False
        while not done:
            action = client.get_action(eid, obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            client.log_returns(eid, reward)
            done = terminated or truncated
        client.end_episode(eid, obs, truncated=truncated and not terminated)
    client.close()


def serving_rows(quick: bool = False) -> list[tuple[str, str, str]]:
    """The policy server's rows of ``benchmarks/run.py`` (about 45 s): ``relayrl serve`` and the training server
    (one process each), remote get_action from one client over JSON and msgpack (calls/s, p50 / p99), batched
    requests of 64 agents (agent-steps/s), and local-mode experience ingested by the training server from 4 client
    processes (steps/s its sampler polled)."""
    from relayrl.serving import PolicyClient

    n = 1000 if quick else 2000
    ctx = mp.get_context("spawn")
    port_out, polled = ctx.Queue(), ctx.Value("q", 0)
    server = ctx.Process(target=_serve, args=(port_out, polled), daemon=True)
    server.start()
    clients = []
    try:
        port = port_out.get(timeout=120)
        _wait_for_port(port)
        obs = np.asarray(OBS, np.float32)
        rows = {}
        for encoding in ("json", "msgpack"):
            client = PolicyClient(f"127.0.0.1:{port}", encoding=encoding)
            eid = client.start_episode()
            rows[encoding] = _time_calls(lambda c=client, e=eid: c.get_action(e, obs), n, server.pid)
            client.close()
        client = PolicyClient(f"127.0.0.1:{port}", encoding="msgpack")
        calls = [{"command": "get_action", "episode_id": client.start_episode(), "observation": obs} for _ in range(64)]
        rows["batch"] = _time_calls(lambda: client.batch(calls), batch_calls(n), server.pid)
        ready, go, seconds = ctx.Barrier(5), ctx.Event(), 2.0 if quick else 4.0
        clients = [ctx.Process(target=_local_client, args=(port, ready, go, seconds, 1000 * i)) for i in range(4)]
        for c in clients:
            c.start()
        ready.wait(timeout=180)
        before, start = polled.value, time.perf_counter()
        go.set()
        for c in clients:
            c.join(seconds + 60)
        ingested = (polled.value - before) / (time.perf_counter() - start)
    finally:
        for proc in (*clients, server):
            if proc.is_alive():
                proc.kill()
            proc.join(10)
    serve = serve_rows(n)
    j, m, b = rows["json"], rows["msgpack"], rows["batch"]
    return [
        (
            "relayrl serve: remote get_action, JSON, 1 client",
            f"{serve['json']['calls_per_s']:,.0f} calls/s",
            f"p50 {serve['json']['p50_ms']:.2f} ms; inference only, actions computed on the event loop's thread",
        ),
        (
            "  same over msgpack",
            f"{serve['msgpack']['calls_per_s']:,.0f} calls/s",
            f"p50 {serve['msgpack']['p50_ms']:.2f} ms",
        ),
        (
            "  batched: 64 agents' get_action per request, msgpack",
            f"{64 * serve['batch']['calls_per_s']:,.0f} agent-steps/s",
            f"p50 {serve['batch']['p50_ms']:.2f} ms per request (target >= 50,000 agent-steps/s)",
        ),
        (
            "training server: remote get_action, JSON, 1 client",
            f"{j['calls_per_s']:,.0f} calls/s",
            f"p50 {j['p50_ms']:.2f} ms, p99 {j['p99_ms']:.2f} ms; keep-alive, loopback (targets >= 2,000, p50 <= 1 ms)",
        ),
        (
            "  same over msgpack",
            f"{m['calls_per_s']:,.0f} calls/s",
            f"p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms (target >= 5,000 calls/s)",
        ),
        (
            "  batched: 64 agents' get_action per request, msgpack",
            f"{64 * b['calls_per_s']:,.0f} agent-steps/s",
            f"p50 {b['p50_ms']:.2f} ms per request (target >= 50,000 agent-steps/s)",
        ),
        (
            "  local inference: experience ingested from 4 clients",
            f"{ingested:,.0f} steps/s",
            "4 client processes act on CartPole-v1 with their copy of the PPO policy and report every step",
        ),
    ]


def batch_calls(n: int) -> int:
    """How many batched requests a row times when single calls are timed ``n`` times: about half a second."""
    return max(200, n // 5)


def serve_rows(n: int) -> dict[str, dict]:
    """``relayrl serve`` on a one-iteration PPO CartPole checkpoint: JSON, msgpack and batch-of-64 timings."""
    with tempfile.TemporaryDirectory(prefix="relayrl-bench-") as directory:
        served = RelayrlServe(train_checkpoint(directory))
        try:
            return {
                "json": _time_client(served.port, served.pid, "relayrl", "relayrl", "json", n, 0),
                "msgpack": _time_client(served.port, served.pid, "relayrl", "relayrl", "msgpack", n, 0),
                "batch": _time_client(served.port, served.pid, "relayrl", "relayrl", "msgpack", batch_calls(n), 64),
            }
        finally:
            served.stop()


def batch_rounds(rounds: int, n: int) -> None:
    """``relayrl serve``'s batch-of-64 row alone: per round a fresh server, ``n`` batched requests timed 3 times."""
    with tempfile.TemporaryDirectory(prefix="relayrl-bench-") as directory:
        checkpoint = train_checkpoint(directory)
        for r in range(rounds):
            served = RelayrlServe(checkpoint)
            try:
                for _ in range(3):
                    m = _time_client(served.port, served.pid, "relayrl", "relayrl", "msgpack", n, 64)
                    print(
                        f"round {r}: {64 * m['calls_per_s']:8,.0f} agent-steps/s, p50 {m['p50_ms']:.2f} ms, server"
                        f" {m['server_cpu_us']:.0f} us, client {m['client_cpu_us']:.0f} us per request",
                        flush=True,
                    )
            finally:
                served.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="timed get_action calls per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all rows; the table shows medians")
    parser.add_argument(
        "--batch-only", action="store_true", help="only relayrl serve's batch-of-64 row, timed 3 times per round"
    )
    args = parser.parse_args()
    if args.batch_only:
        return batch_rounds(args.rounds, batch_calls(args.calls))
    rows = [
        ("training server + PolicyClient, JSON", "relayrl", "relayrl", "json", 0),
        ("relayrl serve (inference only) + PolicyClient, JSON", "serve", "relayrl", "json", 0),
        ("training server + PolicyClient, msgpack", "relayrl", "relayrl", "msgpack", 0),
        ("relayrl serve (inference only) + PolicyClient, msgpack", "serve", "relayrl", "msgpack", 0),
        ("training server + PolicyClient, msgpack, batch of 64", "relayrl", "relayrl", "msgpack", 64),
        ("relayrl serve (inference only), msgpack, batch of 64", "serve", "relayrl", "msgpack", 64),
        ("training server + http.client, JSON", "relayrl", "http.client", "json", 0),
        ("training server + requests, JSON", "relayrl", "requests", "json", 0),
        ("floor: bare uvicorn + relayrl's connection", "uvicorn", "relayrl", "json", 0),
        ("floor: bare uvicorn + http.client", "uvicorn", "http.client", "json", 0),
        ("floor: bare aiohttp + relayrl's connection", "aiohttp", "relayrl", "json", 0),
        ("floor: bare aiohttp + http.client", "aiohttp", "http.client", "json", 0),
    ]
    for module in ("uvicorn", "requests"):
        if importlib.util.find_spec(module) is None:
            print(f"{module} is not installed: its rows are skipped")
            rows = [r for r in rows if module not in r[1:3]]
    results: dict[str, list[dict]] = {r[0]: [] for r in rows}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="relayrl-bench-") as directory:
        checkpoint = train_checkpoint(directory)
        for _ in range(args.rounds):  # rows interleaved: a load change on a shared machine hits them all alike
            for name, server, client_kind, encoding, batch in rows:
                n = batch_calls(args.calls) if batch else args.calls
                results[name].append(run_case(server, client_kind, encoding, n, batch, checkpoint))
    print(
        f"policy servers, loopback, {args.calls} calls x {args.rounds} rounds (medians), {os.cpu_count()} CPUs,"
        f" load {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    head = ("calls/s", 8), ("p50 ms", 7), ("p99 ms", 7), ("server us", 9), ("client us", 9), ("agent-steps/s", 13)
    print(f"{'stack':56s} " + " ".join(f"{h:>{w}s}" for h, w in head))
    for (name, *_, batch), runs in zip(rows, results.values()):
        m = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        steps = m["calls_per_s"] * (batch or 1)
        print(
            f"{name:56s} {m['calls_per_s']:8.0f} {m['p50_ms']:7.3f} {m['p99_ms']:7.3f} {m['server_cpu_us']:9.0f}"
            f" {m['client_cpu_us']:9.0f} {steps:13.0f}"
        )
    print("server / client us: CPU time per call (all threads of the server process; the client process)")


if __name__ == "__main__":
    sys.exit(main())
