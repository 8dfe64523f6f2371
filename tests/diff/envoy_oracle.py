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
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.capabilities import envoy_binary

LOOPBACK = "127.0.0.1"
REQ_ID_HEADER = "x-req-id"
START_TIMEOUT_S = 30.0
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
    """Answers every request with 200 and an empty body, keep-alive."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass


class LoopbackBackend:
    """A threaded HTTP/1.1 server on 127.0.0.1 answering 200 to everything."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Backend)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackBackend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def bootstrap(route_configs: Iterable[Mapping[str, Any]], clusters: Iterable[str],
              backend_port: int, access_log: Path) -> dict[str, Any]:
    """A static bootstrap: one listener per route config (port 0), STATIC clusters."""
    listeners = []
    for rc in route_configs:
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
            "name": f"listener_{rc['name']}",
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
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": static_clusters},
    }


class EnvoyRejected(RuntimeError):
    """Envoy refused the bootstrap (a generator or test bug); carries Envoy's own message."""


class EnvoyProcess:
    """Runs the Envoy binary on a bootstrap, waits for /ready, kills it by PID on exit."""

    def __init__(self, config: Mapping[str, Any], workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_port = 0
        self.stderr_path = workdir / "envoy.stderr"

    def __enter__(self) -> EnvoyProcess:
        binary = envoy_binary()
        if binary is None:
            raise RuntimeError("no Envoy binary")
        cfg = self.workdir / "envoy.json"
        cfg.write_text(json.dumps(self.config))
        admin_path = self.workdir / "admin.addr"
        admin_path.unlink(missing_ok=True)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [str(binary), "-c", str(cfg), "--admin-address-path", str(admin_path),
                 "--base-id", str(os.getpid() % 60000 + 1000), "--concurrency", "1",
                 "--log-level", "warn", "--disable-hot-restart",
                 # access logs are flushed lazily; a short interval keeps the poll short
                 "--file-flush-interval-msec", "100"],
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            )
        try:
            self._wait_ready(admin_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, admin_path: Path) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EnvoyRejected(self.stderr_path.read_text(errors="replace")[-4000:])
            if admin_path.exists() and admin_path.read_text().strip():
                self.admin_port = int(admin_path.read_text().strip().rsplit(":", 1)[1])
                try:
                    if self.admin("/ready").strip() == "LIVE":
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"Envoy not ready after {START_TIMEOUT_S}s")

    def admin(self, path: str) -> str:
        """GET an admin endpoint on loopback."""
        url = f"http://{LOOPBACK}:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
            return resp.read().decode()

    def listener_ports(self) -> dict[str, int]:
        """Listener name -> the port Envoy bound (the bootstrap asks for port 0)."""
        out: dict[str, int] = {}
        data = json.loads(self.admin("/listeners?format=json"))
        for st in data.get("listener_statuses", []):
            out[st["name"]] = int(st["local_address"]["socket_address"]["port_value"])
        return out

    def stop(self) -> None:
        """Kill the Envoy we started (by its PID) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
            except (ConnectionError, http.client.HTTPException, socket.timeout):
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
