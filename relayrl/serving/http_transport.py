"""The PolicyClient's HTTP/1.1 connection: one keep-alive socket, requests written in one send, responses read by
``httptools`` (llhttp, the parser uvicorn runs on).

Why not ``http.client``: it writes a request's head and body in two sends (on loopback each wakes the server) and
parses the response's headers with the ``email`` package; against a server that answers at once it spends
130-170 us of client CPU per call (3,300-3,900 calls/s from one client on the 2-core development machine) where
this connection spends 40-60 us (5,500-6,500 calls/s; ``python benchmarks/serving.py`` compares them in one run).
``requests`` sits on top of a slower stack still.

    conn = Connection("127.0.0.1", 9900, timeout_s=10.0)
    status, headers, body = conn.request("POST", "/v1/get_action", b'{"episode_id": ...}', b"Content-Type: ...\r\n")
"""

from __future__ import annotations

import socket
from typing import Any

MAX_RESPONSE_BYTES = 1 << 30  # a response larger than this is refused (weights of very large policies fit)


class ServerClosedError(ConnectionResetError):
    """The server closed the connection before answering (e.g. a kept-alive connection it had timed out)."""


class _Response:
    """httptools' callbacks: the response's headers (lower-case names) and body."""

    __slots__ = ("parser", "headers", "chunks", "size", "complete", "status", "keep_alive")

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.status, self.keep_alive = 0, False
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:  # read here: llhttp resets them once the message is complete
        self.status, self.keep_alive = self.parser.get_status_code(), self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_RESPONSE_BYTES:
            raise ValueError(f"the response is larger than {MAX_RESPONSE_BYTES} bytes")
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class Connection:
    """One HTTP/1.1 keep-alive connection to ``host:port`` (made on the first request).

    Args:
        host: the server's host name or address.
        port: its TCP port.
        timeout_s: the socket timeout of connecting and of each read (TimeoutError beyond).
    """

    def __init__(self, host: str, port: int, timeout_s: float):
        try:
            import httptools  # noqa: F401
        except ImportError:
            raise ImportError("the policy client needs httptools: pip install 'relayrl[serving]'") from None
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._host_header = f"Host: {host}:{port}\r\n".encode("latin-1")
        self.sock: socket.socket | None = None
        self.used = False  # a request was answered on this socket: the server may have closed it since

    def request(self, method: str, path: str, body: bytes | None, headers: bytes) -> tuple[int, dict[str, str], bytes]:
        """Sends one request (``headers``: ready "Name: value\\r\\n" lines) and returns (status, headers with
        lower-case names, body). Raises ServerClosedError when the server closed the connection before answering,
        OSError (TimeoutError included) for the rest; the connection is closed after any error."""
        import httptools

        body = body or b""
        head = f"{method} {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n".encode("latin-1")
        try:
            if self.sock is None:
                self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.used = False
            sock = self.sock
            sock.sendall(b"".join((head, self._host_header, headers, b"\r\n", body)))
            response = _Response()
            received = False
            while not response.complete:
                data = sock.recv(262144)
                if not data:
                    if response.headers and "content-length" not in response.headers and not _chunked(response):
                        break  # a body delimited by the end of the connection
                    if received:
                        raise ConnectionResetError(
                            f"the server {self.host}:{self.port} closed the connection mid-answer"
                        )
                    raise ServerClosedError(f"the server {self.host}:{self.port} closed the connection")
                received = True
                response.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.close()
            raise ConnectionError(f"the server {self.host}:{self.port} sent a malformed HTTP response: {e}") from None
        except BaseException:
            self.close()
            raise
        if not response.keep_alive or not response.complete:
            self.close()
        else:
            self.used = True
        return response.status, response.headers, b"".join(response.chunks)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


def _chunked(response: Any) -> bool:
    return "chunked" in response.headers.get("transfer-encoding", "").lower()


def header_lines(headers: dict[str, str]) -> bytes:
    """``{"Name": "value"}`` as request header lines; refuses line breaks (header injection)."""
    lines = []
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n"):
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")
