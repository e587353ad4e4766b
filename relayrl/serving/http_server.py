"""The policy server's HTTP/1.1 layer: uvicorn with the httptools (llhttp) parser, request heads bounded.

Why uvicorn rather than aiohttp: against one client that does nothing but send requests, a bare aiohttp handler
costs about 130 us of server CPU per request on the 2-core development machine and uvicorn/httptools about 55 us
(``python benchmarks/serving.py`` compares them); the policy server's own work per get_action is about 70 us.

uvicorn bounds neither the request line nor the headers when it parses with httptools (it leaves that to a proxy),
so ``BoundedHttpToolsProtocol`` does: a request head over ``MAX_HEAD_BYTES`` or ``MAX_HEADERS`` headers is answered
400 and its connection closed, before the server holds more of it. Bodies are bounded by the PolicyServer
(``max_request_bytes``, 413), which reads them as they come.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

MAX_HEAD_BYTES = 16 * 1024  # the request line and every header together (aiohttp's default: 8190 a line)
MAX_HEADERS = 100


def _bounded_protocol() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, refusing request heads over MAX_HEAD_BYTES or MAX_HEADERS headers (an
        exception in a parser callback makes uvicorn answer 400 and close the connection)."""

        def connection_made(self, transport: Any) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                # an answer goes out as it is written, not after the client's delayed ACK (40 ms)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(_CorkedTransport(transport))

        def on_message_begin(self) -> None:
            self.head_bytes, self.header_count = 0, 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url), 0)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value), 1)
            super().on_header(name, value)

        def _count(self, size: int, headers: int) -> None:
            self.head_bytes += size
            self.header_count += headers
            if self.head_bytes > MAX_HEAD_BYTES or self.header_count > MAX_HEADERS:
                raise ValueError(f"request head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers")

    return BoundedHttpToolsProtocol


class _CorkedTransport:
    """A transport whose writes of one event-loop turn go out in one send: uvicorn writes an answer's head and body
    separately, and on loopback every send wakes the client (about 45 us each on the development machine)."""

    def __init__(self, transport: Any):
        import asyncio

        self._transport, self._loop, self._pending = transport, asyncio.get_running_loop(), []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def make_server(app: Any) -> Any:
    """A uvicorn Server for the ASGI ``app`` (serve it with ``await server.serve(sockets=[sock])``; stop it with
    ``server.should_exit = True``). It leaves the process's logging configuration alone."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http=_bounded_protocol(),
        interface="asgi3",
        proxy_headers=False,
        ws="none",
        lifespan="off",
        loop="none",  # the caller's event loop
        log_config=None,
        log_level=logging.WARNING,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=75,  # seconds an idle keep-alive connection stays open (clients reuse theirs)
        timeout_graceful_shutdown=1,
    )
    return uvicorn.Server(config)
