"""PolicyServer: an ExternalEnv's episodes over HTTP/1.1 (aiohttp), JSON or msgpack, secure by default.

    class CartPoleServing(ExternalEnv):
        def run(self):
            PolicyServer(self, "127.0.0.1", 9900).serve_forever()      # the seed-era example

Clients (``relayrl.serving.PolicyClient``, curl, any language) call ``POST /v1/<command>`` with the five
calls of ExternalEnv, or many at once with ``POST /v1/batch``; the protocol is in ``protocol.py`` and the README.
``get_action`` waits, without holding a thread, until the trainer's sampler sent the action (or ``relayrl serve``'s
actor, which acts on the event loop's own thread: ``inference.py``). Local-inference clients pull ``GET /v1/policy``
(a JSON manifest) and ``GET /v1/weights`` (safetensors) of the env's ``served_policy`` and report what they did with
batches of ``log_action`` / ``log_returns`` calls.

Security: binding an address that is not loopback needs ``auth_token`` (ValueError otherwise); with a token,
every request needs ``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise). Bodies over
``max_request_bytes`` get 413 before they are read, compressed bodies are not inflated, and every message is
validated against its schema and the env's spaces before the env sees it (400 naming the field). Errors are
``{"error": {"status", "message", "field"}}``. Nothing is ever unpickled.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import threading
from typing import Any

from relayrl.env.external_env import (
    ActionFuture,
    EpisodeStateError,
    ExternalEnvError,
    TooManyEpisodesError,
    UnknownEpisodeError,
)
from relayrl.serving.protocol import (
    COMMANDS,
    JSON,
    MSGPACK,
    PREFIX,
    PROTOCOL_VERSION,
    ProtocolError,
    decode_body,
    encode_body,
    is_msgpack,
    space_to_wire,
    to_wire,
    validate_batch,
    validate_call,
)

logger = logging.getLogger(__name__)

# Errors of the env -> HTTP status: what the client did wrong, or what the server cannot do now.
_ENV_ERRORS = (
    (UnknownEpisodeError, 404),
    (EpisodeStateError, 409),
    (TooManyEpisodesError, 429),
    (ExternalEnvError, 503),
    (ValueError, 400),
)


class PolicyServer:
    """Serves ``external_env``'s episodes over HTTP; ``serve_forever()`` blocks, ``start()`` serves from a
    daemon thread (``stop()`` ends either). The socket is bound when the server is made (``port=0``: a free port,
    then read ``server.port``).

    Args:
        external_env: the ExternalEnv (or ExternalMultiAgentEnv) whose episodes clients drive.
        address: the address to bind; anything but a loopback address needs ``auth_token``.
        port: the TCP port (0: any free port).
        auth_token: the bearer token every request must carry; None: no authentication (loopback only).
        max_request_bytes: the largest request body accepted (413 beyond).
        action_timeout_s: a get_action whose action has not come after this long answers 504.
        episode_timeout_s: an episode with no call for this long (and not waiting for an action) is ended as
            truncated at its last observation: its client went away. None: never.
        served_policy: what local-inference clients pull (a ``ServedPolicy``); None: the env's
            ``served_policy`` attribute, read at each request.
        max_backlog_steps: a request that reports experience (log_action, end_episode) is answered once at most
            this many reported steps wait for the trainer's sampler: a local-inference client, which reports in
            batches and never waits for actions, cannot run ahead of the policy it acts with; None: no limit.
    """

    def __init__(
        self,
        external_env: Any,
        address: str = "127.0.0.1",
        port: int = 9900,
        *,
        auth_token: str | None = None,
        max_request_bytes: int = 1 << 20,
        action_timeout_s: float = 600.0,
        episode_timeout_s: float | None = 600.0,
        served_policy: Any = None,
        max_backlog_steps: int | None = 1000,
    ):
        if auth_token is not None and (not isinstance(auth_token, str) or not auth_token):
            raise ValueError("PolicyServer: auth_token must be a non-empty string (or None on a loopback address)")
        check_bind(address, auth_token)
        if not isinstance(max_request_bytes, int) or max_request_bytes < 1024:
            raise ValueError(f"PolicyServer: max_request_bytes must be an int >= 1024, got {max_request_bytes!r}")
        if max_backlog_steps is not None and (not isinstance(max_backlog_steps, int) or max_backlog_steps < 1):
            raise ValueError(f"PolicyServer: max_backlog_steps must be an int >= 1 or None, got {max_backlog_steps!r}")
        self.env = external_env
        self.max_request_bytes = max_request_bytes
        self.action_timeout_s = float(action_timeout_s)
        self.episode_timeout_s = episode_timeout_s
        self._served_policy = served_policy
        self.max_backlog_steps = max_backlog_steps
        self._token = auth_token.encode() if auth_token else None
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((address, port))
            self._sock.listen(512)
        except OSError as e:
            self._sock.close()
            raise OSError(e.errno, f"PolicyServer cannot listen on {address}:{port}: {e.strerror}") from e
        self.address, self.port = self._sock.getsockname()[:2]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._serving = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    # --- running ----------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serves until ``stop()`` (from another thread)."""
        asyncio.run(self._serve())

    def start(self, timeout_s: float = 30.0) -> PolicyServer:
        """Serves from a daemon thread; returns once the server accepts requests."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"PolicyServer:{self.port}", daemon=True)
        self._thread.start()
        if not self._serving.wait(timeout_s):
            raise RuntimeError(f"PolicyServer on {self.url} did not start within {timeout_s} s")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop closed in between
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if not self._serving.is_set():
            self._sock.close()

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _serve(self) -> None:
        from aiohttp import web

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        loop, limit = self._loop, self.max_request_bytes

        def request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=limit)

        # aiohttp's low-level server: every path comes to _handle, without an Application's router and middleware
        server = web.Server(self._handle, request_factory=request, access_log=None, auto_decompress=False)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, self._sock).start()
        reaper = asyncio.create_task(self._end_idle_episodes()) if self.episode_timeout_s else None
        self._serving.set()
        try:
            await self._stop.wait()
        finally:
            if reaper is not None:
                reaper.cancel()
            await runner.cleanup()
            self._sock.close()

    async def _end_idle_episodes(self) -> None:
        period = min(5.0, self.episode_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            ended = self.env.end_idle_episodes(self.episode_timeout_s)
            if ended:
                logger.warning("PolicyServer %s: ended %d idle episodes (no call for %s s)", self.url, len(ended),
                               self.episode_timeout_s)  # fmt: skip

    # --- requests ---------------------------------------------------------------------------------------------
    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        use_msgpack = is_msgpack(request.headers.get("Accept")) or is_msgpack(request.headers.get("Content-Type"))
        headers = {}
        try:
            self._authorize(request)
            command = self._command(request)
            if request.method == "GET":
                if command == "weights":
                    return await self._weights(request)
                result = await self._get(command)
            else:
                if request.content_length is not None and request.content_length > self.max_request_bytes:
                    raise _too_large(self.max_request_bytes)
                if "Expect" in request.headers:
                    await _continue(request)
                try:
                    body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    raise _too_large(self.max_request_bytes) from None
                msg = decode_body(body, request.headers.get("Content-Type"))
                result = await (self._batch(msg) if command == "batch" else self._one(command, msg))
            status = 200
        except ProtocolError as e:
            status, result = e.status, e.to_wire()
            if status == 401:
                headers["WWW-Authenticate"] = "Bearer"
        except Exception as e:  # noqa: BLE001 - a bug answers 500 and the server keeps serving
            logger.exception("PolicyServer %s: %s %s failed", self.url, request.method, request.path)
            status, result = 500, ProtocolError(500, f"internal error: {type(e).__name__}").to_wire()
        body = encode_body(result, use_msgpack)
        return web.Response(status=status, body=body, content_type=MSGPACK if use_msgpack else JSON, headers=headers)

    def _authorize(self, request: Any) -> None:
        if self._token is None:
            return
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            raise ProtocolError(401, "missing or wrong bearer token (header 'Authorization: Bearer <token>')")

    def _command(self, request: Any) -> str:
        path = request.path
        if not path.startswith(PREFIX):
            raise ProtocolError(404, f"unknown path {path[:100]!r}: this server speaks protocol {PREFIX}<command>")
        command = path[len(PREFIX) :]
        if command not in _GETS and command not in _POSTS:
            raise ProtocolError(404, f"unknown command {command[:100]!r}; POST {sorted(_POSTS)}, GET {list(_GETS)}")
        expected = "GET" if command in _GETS else "POST"
        if request.method != expected:
            raise ProtocolError(405, f"{command} takes {expected}, not {request.method}")
        return command

    async def _get(self, command: str) -> dict:
        env = self.env
        if command == "info":
            return {
                "protocol": PROTOCOL_VERSION,
                "multiagent": bool(getattr(env, "multiagent", False)),
                "observation_space": space_to_wire(env.observation_space),
                "action_space": space_to_wire(env.action_space),
                "max_request_bytes": self.max_request_bytes,
                "local_inference": self._policy() is not None,
            }
        served = self._require_policy()
        return await asyncio.get_running_loop().run_in_executor(
            None, served.manifest, env.observation_space, env.action_space
        )

    async def _weights(self, request: Any) -> Any:
        from aiohttp import web

        data, etag = await asyncio.get_running_loop().run_in_executor(None, self._require_policy().weights)
        quoted = f'"{etag}"'
        if request.headers.get("If-None-Match") in (quoted, etag):
            return web.Response(status=304, headers={"ETag": quoted})
        return web.Response(body=data, content_type="application/octet-stream", headers={"ETag": quoted})

    def _policy(self) -> Any:
        return self._served_policy if self._served_policy is not None else getattr(self.env, "served_policy", None)

    def _require_policy(self) -> Any:
        served = self._policy()
        if served is None:
            raise ProtocolError(404, "this server has no policy for local inference (no ServedPolicy); use remote mode")
        return served

    async def _one(self, command: str, msg: Any) -> dict:
        if command not in COMMANDS:
            raise ProtocolError(404, f"unknown command {command!r}")
        pending = self._start(command, validate_call(command, msg, self.env))
        if command in _REPORTS:
            await self._caught_up()
        return (await self._results([pending], batched=False))[0]

    async def _batch(self, msg: Any) -> dict:
        calls = validate_batch(msg, self.env)
        pending = []
        for command, fields in calls:
            try:
                pending.append(self._start(command, fields))
            except ProtocolError as e:
                pending.append(e.to_wire())
        if any(command in _REPORTS for command, _ in calls):
            await self._caught_up()
        return {"results": await self._results(pending, batched=True)}

    async def _caught_up(self) -> None:
        """Waits (at most action_timeout_s) until the sampler has polled all but max_backlog_steps reported steps."""
        pending = getattr(self.env, "pending_steps", None)
        if self.max_backlog_steps is None or pending is None:
            return
        deadline = asyncio.get_running_loop().time() + self.action_timeout_s
        while pending() > self.max_backlog_steps and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.002)

    def _start(self, command: str, f: dict) -> Any:
        """Applies one validated call to the env: its result, or the future of a get_action's action."""
        env = self.env
        try:
            if command == "start_episode":
                return {"episode_id": env.start_episode(f.get("episode_id"), f.get("training_enabled", True))}
            if command == "get_action":
                return env.request_action(f["episode_id"], f["observation"])
            if command == "log_action":
                env.log_action(f["episode_id"], f["observation"], f["action"])
            elif command == "log_returns":
                env.log_returns(f["episode_id"], f["reward"], f.get("info"))
            else:
                env.end_episode(f["episode_id"], f["observation"], truncated=f.get("truncated", False))
            return {}
        except Exception as e:  # noqa: BLE001 - mapped to a status below, or re-raised
            raise _env_error(e) from e

    async def _results(self, pending: list, batched: bool) -> list[dict]:
        """Each call's answer, the get_actions' once their actions all came (or action_timeout_s passed): one
        wake-up of the event loop per request, however many actions it waits for."""
        futures = [p for p in pending if isinstance(p, ActionFuture)]
        if futures and getattr(self.env, "acts_on_loop", False):
            await asyncio.sleep(0)  # the env's flush, scheduled before this, acts in the loop's next iteration
        if futures and not all(f.done() for f in futures):
            await _all_done(futures, self.action_timeout_s)
        out = []
        for p in pending:
            if not isinstance(p, ActionFuture):
                out.append(p)
                continue
            try:
                out.append({"action": to_wire(p.result(timeout=0))})
                continue
            except Exception as e:  # noqa: BLE001 - no action (yet), or the env's error: mapped below
                error = self._no_action(p, e)
            if not batched:
                raise error
            out.append(error.to_wire())
        return out

    def _no_action(self, future: ActionFuture, e: Exception) -> ProtocolError:
        """Why a get_action's ``future`` has no action: 504 when none came in time, else the env's error ``e``."""
        if not future.done() or future.cancelled():
            future.cancel()  # the sampler's late action is dropped (``_settle``)
            return ProtocolError(504, f"no action came within action_timeout_s={self.action_timeout_s} s")
        return _env_error(e)  # the env was closed while the call waited


async def _all_done(futures: list[ActionFuture], timeout_s: float) -> None:
    """Waits until every future is done or ``timeout_s`` passed. One callback at a time, on the last future not
    done yet (in the order they settle: a batch's usually all at once), wakes the loop when none is left: directly
    when it runs on the loop's own thread (an env acting inline, ``relayrl serve``), else with
    ``call_soon_threadsafe`` (the trainer's sampler thread)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left, loop_thread = [len(futures)], threading.get_ident()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def check(_: ActionFuture | None = None) -> None:  # the one registered callback: no two run at once
        while left[0] and futures[left[0] - 1].done():
            left[0] -= 1
        if left[0]:
            futures[left[0] - 1].add_done_callback(check)
        elif threading.get_ident() == loop_thread:
            finish()
        else:
            loop.call_soon_threadsafe(finish)

    timer = loop.call_later(timeout_s, finish)
    check()
    try:
        await done
    except asyncio.CancelledError:  # the request was dropped: its actions will not be read
        for future in futures:
            future.cancel()
        raise
    finally:
        timer.cancel()


async def _continue(request: Any) -> None:
    """Answers ``Expect: 100-continue`` (curl sends it before a large body, and waits a second for the answer)."""
    expect = request.headers["Expect"]
    if expect.lower() != "100-continue" or request.version < (1, 1):
        raise ProtocolError(417, f"Expect: {expect[:100]!r} is not supported (only 100-continue, on HTTP/1.1)")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's router does: the answer's own bytes have not started


_GETS, _POSTS = ("info", "policy", "weights"), (*COMMANDS, "batch")
_REPORTS = ("log_action", "end_episode")  # the calls that add steps without waiting for the sampler


def _env_error(e: Exception) -> ProtocolError:
    for cls, status in _ENV_ERRORS:
        if isinstance(e, cls):
            return ProtocolError(status, str(e))
    raise e


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError(413, f"the request body is larger than max_request_bytes={limit}")


def check_bind(address: str, auth_token: str | None) -> None:
    """Refuses (ValueError) to bind an address that is not loopback without an auth token."""
    if auth_token:
        return
    try:  # "" binds every interface
        infos = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP) if address else [(0, 0, 0, "", ("",))]
        resolved = {info[4][0] or "0.0.0.0" for info in infos}
    except socket.gaierror as e:
        raise ValueError(f"PolicyServer: cannot resolve address {address!r}: {e}") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in resolved):
        raise ValueError(
            f"PolicyServer: binding {address!r} (not a loopback address) without auth_token would let anyone who"
            " can reach it drive the trainer's episodes; pass auth_token=<a long random string> (clients send"
            " 'Authorization: Bearer <token>') or bind 127.0.0.1"
        )
