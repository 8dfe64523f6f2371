"""A real Envoy as the routing oracle: load route configs, send requests, read its decisions.

One Envoy process serves every route config under test, one loopback listener each (an HTTP
connection manager with the route config inline and default options, so host and path handling
is Envoy's default).  Every cluster the route configs name is a STATIC cluster pointing at one
tiny loopback backend that answers 200, so ``%UPSTREAM_CLUSTER%`` in the access log says which
cluster Envoy chose.  Each request carries a unique ``x-req-id`` header; the JSON access log
gives Envoy's decision for that id.

The Envoy runner, the bootstrap, the access log format and its reader are the product's
(``integration.envoy``, which ``sockmesh ab`` uses the same way); this module adds the
loopback backend and the keep-alive client the tests send requests with.

Traffic goes to 127.0.0.1 only.  Every wait polls a condition under a deadline.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterable
from typing import Any, Self

from integration.envoy import (
    ACCESS_LOG_FORMAT,
    LOG_TIMEOUT_S,
    LOOPBACK,
    REQ_ID_HEADER,
    EnvoyDecision,
    EnvoyError,
    EnvoyProcess,
    listener_ports,
    read_decisions,
    start_envoy,
)
from integration.envoy import static_bootstrap as bootstrap

__all__ = ["ACCESS_LOG_FORMAT", "LOG_TIMEOUT_S", "REQ_ID_HEADER", "EnvoyDecision",
           "EnvoyError", "EnvoyProcess", "KeepAliveClient", "LoopbackBackend", "bootstrap",
           "listener_ports", "read_decisions", "start_envoy"]

REQUEST_TIMEOUT_S = 10.0

class _Backend(http.server.BaseHTTPRequestHandler):
    """Answers every request with 200 and no body, keep-alive.

    No body on purpose: a header write followed by a separate body write stalls each
    request on Nagle + delayed ACK (~20 ms), which made 2,600 requests take a minute.
    """

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LoopbackBackend:
    """A threaded HTTP/1.1 server on 127.0.0.1 answering 200 to everything."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Backend)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class KeepAliveClient:
    """Sends raw-ish HTTP/1.1 requests over one keep-alive connection, reconnecting if closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def send(self, method: str, authority: str, path: str,
             headers: Iterable[tuple[str, str]]) -> tuple[int, str | None]:
        """Send one request; returns (status, Location)."""
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(LOOPBACK, self.port,
                                                       timeout=REQUEST_TIMEOUT_S)
            try:
                self.conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                self.conn.putheader("Host", authority)
                for name, value in headers:
                    self.conn.putheader(name, value)
                self.conn.endheaders()
                resp = self.conn.getresponse()
                resp.read()
                result = (resp.status, resp.getheader("location"))
                if resp.will_close:
                    self.close()
                return result
            except (TimeoutError, ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
