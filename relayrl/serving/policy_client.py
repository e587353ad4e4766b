"""PolicyClient: a simulator's side of the policy server, with ExternalEnv's five calls.

    client = PolicyClient("127.0.0.1:9900")                          # remote: the trainer picks the actions
    eid = client.start_episode()
    obs, _ = env.reset()
    while True:
        action = client.get_action(eid, obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        client.log_returns(eid, reward)
        if terminated or truncated:
            client.end_episode(eid, obs, truncated=truncated and not terminated)
            break

Several servers (a trainer with ``num_workers: N`` serves one per rollout worker, on ``port + worker_index``)::

    client = PolicyClient(["127.0.0.1:9901", "127.0.0.1:9902"])    # episode 1 -> 9901, 2 -> 9902, 3 -> 9901, ...

assigns each episode, when it starts, to the server with the fewest of this client's running episodes (ties in
turn: round robin per episode, never per call, as an episode lives in one server's env) and sends all its calls
there; ``batch`` splits its calls by server. A trainer samples its workers in lock step, so a client should keep
at least as many episodes running as there are servers.

``inference_mode="local"`` runs a copy of the trainer's policy in this process (rebuilt from the server's JSON
manifest and safetensors weights: ``local_policy.py``), pulls new weights every ``update_interval`` seconds and
reports what it did (``log_action`` / ``log_returns`` / episode ends) in batches at the same pace: one round
trip per ``update_interval`` instead of one per step. Reports and pulls are made by the threads that act, one
thread each at a time, while the others act on. The server answers a report once its sampler has caught up
(``max_backlog_steps``); meanwhile the client runs at most one report ahead: a thread that finds as many calls
queued as the report in flight holds waits for it, then sends them (reports follow each other without a gap when
the server is the slower side).

HTTP/1.1 with keep-alive on one connection per thread and server (``http_transport.py``: a socket and the
``httptools`` parser; about half the client CPU per call of the standard library's ``http.client``, see the
README's serving benchmark). A request the server refuses raises PolicyServerError carrying its status, message
and field.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from relayrl.serving.http_transport import Connection, ServerClosedError, header_lines
from relayrl.serving.protocol import JSON, MSGPACK, PREFIX, decode_body, encode_body, space_from_wire, to_wire


class PolicyServerError(RuntimeError):
    """The server refused a request: ``status`` (HTTP), ``message`` and the ``field`` it names (or None)."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(f"policy server answered {status}: {message}")
        self.status, self.message, self.field = status, message, field


class PolicyClient:
    """Drives episodes of a PolicyServer's ExternalEnv; thread safe (one connection per thread).

    Args:
        address: the server, as "host:port" or "http://host:port", or a list of them: each episode goes, when it
            starts, to the one with the fewest of this client's running episodes (GET policy / weights: the first).
        inference_mode: "remote" (the server's trainer computes every action) or "local" (this process runs a copy
            of the policy and reports its experience in batches).
        update_interval: seconds between weight pulls and experience reports in local mode.
        auth_token: the server's bearer token, or None.
        encoding: "json" or "msgpack", the bodies' format.
        timeout_s: the socket timeout of a request (a remote get_action waits for the trainer's sampler).
        wait_s: how long to keep trying to reach each server when the client is made (a trainer's rollout workers
            start serving when they first sample); 0: one try.
        coalesce_rewards: remote mode: send ``log_returns`` with the episode's next call (one request per step
            instead of two); an error it causes is raised by that call, and the last reward of a client that
            vanishes before its next call is lost. False: every call is a request.
    """

    def __init__(
        self,
        address: str | list[str],
        *,
        inference_mode: str = "remote",
        update_interval: float = 10.0,
        auth_token: str | None = None,
        encoding: str = "json",
        timeout_s: float = 660.0,
        wait_s: float = 0.0,
        coalesce_rewards: bool = False,
    ):
        if inference_mode not in ("remote", "local"):
            raise ValueError(f"inference_mode must be 'remote' or 'local', got {inference_mode!r}")
        if encoding not in ("json", "msgpack"):
            raise ValueError(f"encoding must be 'json' or 'msgpack', got {encoding!r}")
        addresses = [address] if isinstance(address, str) else list(address)
        if not addresses:
            raise ValueError("address must be 'host:port', 'http://host:port' or a non-empty list of them")
        self.servers = [_host_port(a) for a in addresses]
        self.host, self.port = self.servers[0]
        self.inference_mode = inference_mode
        self.update_interval = float(update_interval)
        self.timeout_s = timeout_s
        self._msgpack = encoding == "msgpack"
        self._headers = {
            "Content-Type": MSGPACK if self._msgpack else JSON,
            "Accept": MSGPACK if self._msgpack else JSON,
        }
        if auth_token:
            self._headers["Authorization"] = f"Bearer {auth_token}"
        self._header_lines = header_lines(self._headers)
        self._local = threading.local()
        self._episode_server: dict[str, int] = {}  # episode id -> its server's index (several servers only)
        self._running = [0] * len(self.servers)  # this client's running episodes per server
        self._assign_lock = threading.Lock()
        self._turn = itertools.count()
        infos = [self._wait_for(i, wait_s) for i in range(len(self.servers))]
        for (host, port), info in zip(self.servers[1:], infos[1:]):
            if {k: info[k] for k in _SAME} != {k: infos[0][k] for k in _SAME}:
                raise ValueError(f"the server {host}:{port} serves other spaces than {self.host}:{self.port}")
        self.info = infos[0]
        self.multiagent = bool(self.info["multiagent"])
        self.action_space = space_from_wire(self.info["action_space"])
        self._lock = threading.RLock()  # local mode: the policy, the queue and the episodes' RNN states
        self._flush_lock, self._pull_lock = threading.Lock(), threading.Lock()
        self._room = threading.Condition(self._lock)  # local mode: the queue was taken or a report ended
        self._queue: list[dict] = []
        self._reporting = False  # local mode: a thread is sending the queue (_maybe_update)
        self._in_flight = 0  # local mode: the calls of the last report taken from the queue
        self._queued: collections.Counter = collections.Counter()  # local mode: the queue's calls per episode
        self._states: dict[str, list] = {}
        self._rewards: dict[str, list[dict]] = {}  # coalesce_rewards: log_returns to send with the episode's next call
        self.coalesce_rewards = coalesce_rewards
        self.policy: Any = None
        if inference_mode == "local":
            from relayrl.serving.local_policy import LocalPolicy

            self.policy = LocalPolicy(self._request("GET", "policy"))
            self._pull_weights()
            self._last_report = self._last_pull = time.monotonic()

    # --- the five calls ---------------------------------------------------------------------------------------
    def start_episode(self, episode_id: str | None = None, training_enabled: bool = True) -> str:
        if self.policy is None:
            msg = {"episode_id": episode_id, "training_enabled": training_enabled}
            server = self._assign()
            try:
                episode_id = self._request("POST", "start_episode", msg, server)["episode_id"]
            except BaseException:
                self._release(None, server)
                raise
            if len(self.servers) > 1:
                self._episode_server[episode_id] = server
            return episode_id
        episode_id = episode_id or uuid.uuid4().hex
        with self._lock:
            self._states[episode_id] = self.policy.initial_state()
            self._enqueue({"command": "start_episode", "episode_id": episode_id, "training_enabled": training_enabled})
        self._maybe_update(episode_id)
        return episode_id

    def get_action(self, episode_id: str, observation: Any) -> Any:
        if self.policy is None:
            return self._remote(_call("get_action", episode_id, observation=observation))["action"]
        with self._lock:
            if episode_id not in self._states:
                raise PolicyServerError(404, f"episode {episode_id!r} was not started by this client", "episode_id")
            action, self._states[episode_id] = self.policy.compute_action(observation, self._states[episode_id])
            self._enqueue(_call("log_action", episode_id, observation=observation, action=action))
        self._maybe_update(episode_id)
        return action

    def log_action(self, episode_id: str, observation: Any, action: Any) -> None:
        self._report(_call("log_action", episode_id, observation=observation, action=action))

    def log_returns(self, episode_id: str, reward: Any, info: dict | None = None) -> None:
        call = _call("log_returns", episode_id, reward=reward, info=info)
        if self.policy is None and self.coalesce_rewards:
            self._rewards.setdefault(episode_id, []).append(call)
            return
        self._report(call)

    def end_episode(self, episode_id: str, observation: Any, *, truncated: bool = False) -> None:
        with self._lock:
            self._states.pop(episode_id, None)
        self._report(_call("end_episode", episode_id, observation=observation, truncated=truncated))
        if self.policy is None:  # local mode: the queued calls still need the episode's server (batch drops it)
            self._release(episode_id)

    # --- batches, local mode ----------------------------------------------------------------------------------
    def batch(self, calls: list[dict]) -> list[dict]:
        """Sends many calls in one request: ``[{"command": "get_action", "episode_id": ..., ...}, ...]``; returns
        one result per call (``{"action": ...}``, ``{"episode_id": ...}``, ``{}``) or raises PolicyServerError for
        the first call that failed (the others were still applied). With several servers the calls go to their
        episodes' servers, one request each, in turn (a start_episode without an id gets one here)."""
        return self._batch(calls, None)

    def _batch(self, calls: list[dict], body: bytes | None) -> list[dict]:
        """``batch``, its request body already encoded when ``body`` is given (one server)."""
        if len(self.servers) == 1:
            msg = {"calls": [to_wire(c) for c in calls]} if body is None else None
            results = self._request("POST", "batch", msg, 0, body)["results"]
        else:
            results = self._batch_per_server(calls)
        for i, result in enumerate(results):
            if "error" in result:
                e = result["error"]
                raise PolicyServerError(e["status"], f"calls[{i}]: {e['message']}", e.get("field"))
            if "action" in result:
                result["action"] = self._action(result["action"])
        return results

    def flush(self) -> None:
        """Local mode: sends the experience queued since the last report now (one flush at a time, in order)."""
        with self._flush_lock:
            with self._lock:
                calls, self._queue = self._queue, []
                self._in_flight = len(calls)
                self._queued.clear()
                self._room.notify_all()
            limit = max(1024, int(self.info["max_request_bytes"] * 0.9))
            start = 0
            while start < len(calls):  # as many calls per request as fit under the server's size cap
                n = len(calls) - start
                body = encode_body({"calls": [to_wire(c) for c in calls[start : start + n]]}, self._msgpack)
                while n > 1 and len(body) > limit:
                    n //= 2
                    body = encode_body({"calls": [to_wire(c) for c in calls[start : start + n]]}, self._msgpack)
                self._batch(calls[start : start + n], body)
                start += n

    def update(self) -> None:
        """Local mode: reports the queued experience and pulls the policy's newest weights and filter now."""
        self.flush()
        self._pull()

    def close(self) -> None:
        """Sends what is pending (local-mode experience, remote-mode rewards) and closes this thread's connections."""
        if self.policy is not None:
            self.flush()
        while self._rewards:
            _, calls = self._rewards.popitem()
            self.batch(calls)
        for conn in getattr(self._local, "conns", {}).values():
            conn.close()
        self._local.conns = {}

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- parts ------------------------------------------------------------------------------------------------
    def _report(self, call: dict) -> None:
        if self.policy is None:
            self._remote(call)
            return
        with self._lock:
            self._enqueue(call)
        self._maybe_update(call["episode_id"])

    def _enqueue(self, call: dict) -> None:
        self._queue.append(call)
        self._queued[call["episode_id"]] += 1

    def _maybe_update(self, episode_id: str) -> None:
        """Local mode, after queuing a call: pulls the policy when due and reports the queue when due (or when this
        thread waited for the report in flight); one thread each, the other threads act on meanwhile."""
        now = time.monotonic()
        if now - self._last_pull >= self.update_interval and self._pull_lock.acquire(blocking=False):
            try:
                self._pull()
            finally:
                self._pull_lock.release()
        if not self._report_turn(now, episode_id):
            return
        try:
            self._last_report = time.monotonic()
            self.flush()
        finally:
            with self._lock:
                self._reporting = False
                self._room.notify_all()

    def _report_turn(self, now: float, episode_id: str) -> bool:
        """Whether this thread sends the next report: ``update_interval`` after the last one began, or at once after
        waiting for the one in flight, which this thread does while the queue holds as many calls (one ahead) or
        its episode more than its share of them (the server's sampler steps every episode with news at once:
        episodes that keep pace make fewer, larger steps of it)."""
        with self._lock:
            waited = False
            while self._reporting and self._ahead(episode_id):
                self._room.wait()
                waited = True
            if self._reporting or not (waited or now - self._last_report >= self.update_interval):
                return False
            self._reporting = True
            return True

    def _ahead(self, episode_id: str) -> bool:
        room = max(self._in_flight, _MIN_AHEAD)
        return len(self._queue) >= room or self._queued[episode_id] >= _EPISODE_SHARE * room / max(1, len(self._states))

    def _pull(self) -> None:
        """Local mode: the newest observation filter, and the weights when they changed."""
        self._last_pull = time.monotonic()
        manifest = self._request("GET", "policy")
        with self._lock:
            self.policy.set_filter(manifest["observation_filter"])
        if manifest["weights"]["etag"] != self.policy.etag:
            self._pull_weights()

    def _pull_weights(self) -> None:
        status, headers, data = self._send("GET", "weights", None, {"If-None-Match": f'"{self.policy.etag}"'})
        if status == 304:
            return
        if status != 200:
            self._raise(status, data, headers)
        with self._lock:
            self.policy.set_weights(data, (headers.get("etag") or "").strip('"') or None)

    def _action(self, action: Any) -> Any:
        if self.multiagent:
            return {a: _as_action(self.action_space, a, v) for a, v in action.items()}
        return _as_action(self.action_space, None, action)

    def _remote(self, call: dict) -> dict:
        """Sends ``call`` with its episode's pending log_returns (one batch request), or alone; its result (an action
        as the action space's type)."""
        pending = self._rewards.pop(call["episode_id"], None)
        if pending:
            try:
                return self.batch([*pending, call])[-1]
            except PolicyServerError as e:
                i = int(e.message[6 : e.message.index("]")])  # "calls[i]: ..."
                what = "log_returns (sent with the next call)" if i < len(pending) else call["command"]
                raise PolicyServerError(e.status, f"{what}: {e.message.partition(': ')[2]}", e.field) from None
        command = call.pop("command")
        result = self._request("POST", command, call, self._server_of(call["episode_id"]))
        if "action" in result:
            result["action"] = self._action(result["action"])
        return result

    def _assign(self) -> int:
        """The server of a new episode: the one with the fewest of this client's running episodes, ties in turn
        (a trainer that samples its workers in lock step needs episodes running on every one of them)."""
        if len(self.servers) == 1:
            return 0
        with self._assign_lock:
            fewest = min(self._running)
            candidates = [i for i, n in enumerate(self._running) if n == fewest]
            server = candidates[next(self._turn) % len(candidates)]
            self._running[server] += 1
            return server

    def _release(self, episode_id: str | None, server: int | None = None) -> None:
        with self._assign_lock:
            server = self._episode_server.pop(episode_id, None) if server is None else server
            if server is not None and len(self.servers) > 1:
                self._running[server] -= 1

    def _server_of(self, episode_id: str) -> int:
        return self._episode_server.get(episode_id, 0)

    def _batch_per_server(self, calls: list[dict]) -> list[dict]:
        per_server: dict[int, list[int]] = {}
        calls = [dict(c) for c in calls]
        for i, call in enumerate(calls):
            if call.get("command") == "start_episode":
                call["episode_id"] = call.get("episode_id") or uuid.uuid4().hex
                self._episode_server[call["episode_id"]] = self._assign()
            per_server.setdefault(self._server_of(call.get("episode_id")), []).append(i)
        results: list[dict] = [{}] * len(calls)
        for server, indices in per_server.items():
            msg = {"calls": [to_wire(calls[i]) for i in indices]}
            for i, result in zip(indices, self._request("POST", "batch", msg, server)["results"]):
                results[i] = result
        for call in calls:
            if call.get("command") == "end_episode":
                self._release(call.get("episode_id"))
        return results

    def _wait_for(self, server: int, wait_s: float) -> dict:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._request("GET", "info", None, server)
            except OSError:  # refused: not serving yet
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def _request(self, method: str, command: str, msg: Any = None, server: int = 0, body: bytes | None = None) -> Any:
        body = body if msg is None else encode_body(msg, self._msgpack)
        status, headers, data = self._send(method, command, body, None, server)
        if status != 200:
            self._raise(status, data, headers)
        return decode_body(data, headers.get("content-type"))

    def _send(self, method: str, command: str, body: bytes | None, extra: dict | None = None, server: int = 0) -> tuple:
        """(status, headers with lower-case names, body) of one request on this thread's connection to ``server``."""
        lines = self._header_lines + header_lines(extra) if extra else self._header_lines
        conns = self._local.__dict__.setdefault("conns", {})  # this thread's connection to each server
        conn = conns.get(server)
        if conn is None:
            conn = conns[server] = Connection(*self.servers[server], timeout_s=self.timeout_s)
        reused = conn.used
        try:
            return conn.request(method, PREFIX + command, body, lines)
        except (ConnectionResetError, BrokenPipeError) as e:
            # only a kept-alive connection the server had closed (before answering anything) is retried, once
            if not reused or not (isinstance(e, ServerClosedError) or e.errno is not None):
                raise
        return conn.request(method, PREFIX + command, body, lines)

    def _raise(self, status: int, data: bytes, headers: Any) -> None:
        try:
            error = decode_body(data, headers.get("content-type"))["error"]
            message, field = str(error["message"]), error.get("field")
        except Exception:  # noqa: BLE001 - not our error format (a proxy's page): show its start
            message, field = data[:200].decode(errors="replace"), None
        raise PolicyServerError(status, message, field)


_MIN_AHEAD = 64  # local mode: the calls a thread may queue while a report is in flight, however small it is
_EPISODE_SHARE = 1.25  # local mode: an episode's most calls in the queue, in fair shares of a report
_SAME = ("protocol", "multiagent", "observation_space", "action_space")  # what several servers must agree on


def _host_port(address: str) -> tuple[str, int]:
    if not isinstance(address, str):
        raise ValueError(f"an address must be a string 'host:port' or 'http://host:port', got {address!r}")
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise ValueError(f"address must be 'host:port' or 'http://host:port', got {address!r}")
    return parts.hostname, parts.port


def _call(command: str, episode_id: str, **fields: Any) -> dict:
    return {"command": command, "episode_id": episode_id, **{k: v for k, v in fields.items() if v is not None}}


def _as_action(space: Any, agent: Any, value: Any) -> Any:
    if type(value) is int or type(value) is float:  # a scalar of any space stays as it came
        return value
    if isinstance(space, dict):
        space = space.get(str(agent), space.get(agent))
    if space is None or np.ndim(value) == 0 and not isinstance(value, np.ndarray):
        return value
    return np.asarray(value, dtype=getattr(space, "dtype", None))
