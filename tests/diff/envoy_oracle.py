"""A real Envoy as the routing oracle: load route configs, send requests, read its decisions.

One Envoy process serves every route config under test, one loopback listener each (an HTTP
connection manager with the route config inline and default options, so host and path handling
is Envoy's default).  Every cluster the route configs name is a STATIC cluster pointing at one
tiny loopback backend that answers 200, so ``%UPSTREAM_CLUSTER%`` in the access log says which
cluster Envoy chose.  Each request carries a unique ``x-req-id`` header; the JSON access log
gives Envoy's decision for that id.

Traffic goes to 127.0.0.1 only.  Every wait polls a condition under a deadline.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from tests.support.envoy import EnvoyError, EnvoyProcess

__all__ = ["EnvoyError", "EnvoyProcess", "LoopbackBackend"]

LOOPBACK = "127.0.0.1"
REQ_ID_HEADER = "x-req-id"
LOG_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 10.0

ACCESS_LOG_FORMAT = {
    "id": f"%REQ({REQ_ID_HEADER.upper()})%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "status": "%RESPONSE_CODE%",
    "location": "%RESP(LOCATION)%",
    "route": "%ROUTE_NAME%",
    "flags": "%RESPONSE_FLAGS%",
    "listener": "%DOWNSTREAM_LOCAL_ADDRESS%",
}


@dataclass(frozen=True)
class EnvoyDecision:
    """What Envoy did with one request, from its access log."""

    req_id: str
    cluster: str | None
    status: int
    location: str | None
    route: str | None
    flags: str

    @classmethod
    def from_log(cls, obj: Mapping[str, Any]) -> EnvoyDecision:
        def opt(v: Any) -> str | None:
            return None if v in (None, "", "-") else str(v)

        return cls(
            req_id=str(obj["id"]),
            cluster=opt(obj.get("cluster")),
            status=int(obj["status"]),
            location=opt(obj.get("location")),
            route=opt(obj.get("route")),
            flags=str(obj.get("flags") or ""),
        )


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


def bootstrap(route_configs: Mapping[str, Mapping[str, Any]], clusters: Iterable[str],
              backend_port: int, access_log: Path) -> dict[str, Any]:
    """A static bootstrap: one listener per route config (port 0), STATIC clusters.

    ``route_configs`` maps a key (unique; listener ``listener_<key>``) to a route config.
    """
    listeners: list[dict[str, Any]] = []
    for key, rc in route_configs.items():
        rc = {k: v for k, v in rc.items() if k != "@type"}
        hcm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                     "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": f"rc_{len(listeners)}",
            "route_config": rc,
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }],
            "access_log": [{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                             "FileAccessLog",
                    "path": str(access_log),
                    "log_format": {"json_format": ACCESS_LOG_FORMAT},
                },
            }],
        }
        listeners.append({
            "name": f"listener_{key}",
            "address": {"socket_address": {"address": LOOPBACK, "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm,
            }]}],
        })
    static_clusters = [{
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {
                "address": LOOPBACK, "port_value": backend_port}}},
        }]}]},
    } for name in sorted(set(clusters))]
    return {
        "static_resources": {"listeners": listeners, "clusters": static_clusters},
    }


def start_envoy(config: Mapping[str, Any], workdir: Path) -> EnvoyProcess:
    """An (unstarted) shared Envoy runner for ``config``; use it as a context manager."""
    # Access logs are flushed lazily (10 s by default); a short interval keeps the poll short.
    return EnvoyProcess(config, workdir, extra_args=["--file-flush-interval-msec", "100"])


def listener_ports(envoy: EnvoyProcess, keys: Iterable[str]) -> dict[str, int]:
    """Route config key -> the loopback port of its listener (bound by Envoy on port 0)."""
    out: dict[str, int] = {}
    for name in keys:
        port = envoy.listener_port(f"listener_{name}")
        if port is None:
            raise RuntimeError(f"Envoy has no active listener for route config {name!r}")
        out[name] = port
    return out


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


def read_decisions(access_log: Path, want: set[str],
                   timeout_s: float = LOG_TIMEOUT_S) -> dict[str, EnvoyDecision]:
    """Poll Envoy's access log until every id in ``want`` is there (Envoy flushes it lazily)."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, EnvoyDecision] = {}
    while True:
        if access_log.exists():
            for line in access_log.read_text().splitlines():
                if line.strip():
                    d = EnvoyDecision.from_log(json.loads(line))
                    found[d.req_id] = d
        if want <= found.keys() or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
