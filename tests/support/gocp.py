"""Run the go-control-plane ADS server (tests/peers/gocp) on loopback.

    write_snapshot(resources_or_path, snap_file)         # what the server serves
    with GocpServer(snap_file, workdir) as srv:          # starts, waits for "listening"
        srv.address                                      # 127.0.0.1:PORT
        write_snapshot(other, snap_file)                 # served as a new version (polled)
        srv.wait_event(lambda e: e["event"] == "serving" and ..., timeout=5)

The snapshot file is written from a ResourceSet or from any path `sockmesh xds-server`
serves (a config dump or a directory of resource files, read with the same loader), so
both servers serve the same resources.  Resources travel as serialized protos, so Istio's
private extensions pass through unchanged.

The server prints one JSON event per line on stdout (listening, serving, request,
response, reload_error, ...); they go to a log file that :meth:`GocpServer.events` parses.
The process is started by path and stopped by its PID; every wait has a deadline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from integration.xds_server import load_config
from tests.support.capabilities import ROOT
from tests.support.process import PeerProcess, peer_binary, peer_missing
from translator.resources import ResourceSet

PEER_DIR = ROOT / "tests" / "peers" / "gocp"
BINARY = ROOT / ".cache" / "peers" / "gocp" / "gocp-server"
START_TIMEOUT_S = 20.0
POLL_S = 0.05

Event = dict[str, Any]


def source_key() -> str:
    """The hash tests/peers/gocp/build.sh stamps the binary with."""
    h = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        h.update((PEER_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def gocp_binary() -> Path | None:
    """The built server (SOCKMESH_GOCP overrides), or None when absent."""
    return peer_binary("SOCKMESH_GOCP", BINARY)


def missing() -> str | None:
    """Why the gocp peer cannot run here, or None."""
    return peer_missing("SOCKMESH_GOCP", BINARY, "tests/peers/gocp/build.sh", source_key(),
                        "gocp-server is stale (sources changed)")


def snapshot_doc(resources: ResourceSet, version: str | None = None) -> dict[str, Any]:
    """The server's snapshot file format: serialized resources by type URL."""
    out = []
    for type_url, _name, msg in resources.items():
        out.append({"type_url": type_url,
                    "value": base64.b64encode(msg.SerializeToString(deterministic=True)).decode()})
    doc: dict[str, Any] = {"resources": out}
    if version is not None:
        doc["version"] = version
    return doc


def write_snapshot(source: ResourceSet | Path, dest: Path, version: str | None = None) -> None:
    """Write ``source`` (resources, or a path `sockmesh xds-server` serves) atomically."""
    resources = source if isinstance(source, ResourceSet) else load_config(Path(source))
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(json.dumps(snapshot_doc(resources, version)))
    os.replace(tmp, dest)  # the server never sees a half-written file


class GocpError(RuntimeError):
    """The server did not start or died; the message carries the tail of its log."""


class GocpServer(PeerProcess):
    """One gocp-server process serving ``snapshot`` on a loopback port."""

    label = "gocp-server"
    error = GocpError

    def __init__(self, snapshot: Path, workdir: Path, *, port: int = 0,
                 poll: str = "100ms", binary: Path | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.set_up(binary or gocp_binary(), lambda: missing() or "gocp-server not found",
                    workdir)
        self.snapshot = Path(snapshot)
        self.port = port
        self.poll = poll
        self.extra_args = list(extra_args or [])
        self.log_path = self.workdir / "gocp-events.jsonl"
        self.err_path = self.workdir / "gocp-stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0  # events before a restart stay in the file; restarts read on

    def start(self) -> Self:
        """Start the server and wait until it says where it listens."""
        with self.log_path.open("ab") as out, self.err_path.open("ab") as err:
            self._offset = self.log_path.stat().st_size
            self.proc = subprocess.Popen(
                [str(self.binary), "--listen", f"127.0.0.1:{self.port}",
                 "--snapshot", str(self.snapshot), "--poll", self.poll, *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        return self.started(self._wait_listening)

    def _wait_listening(self) -> None:
        ev = self.wait_event(lambda e: e["event"] == "listening", START_TIMEOUT_S)
        self.port = int(ev["address"].rsplit(":", 1)[1])

    def restart(self) -> None:
        """Stop and start again on the same port (clients reconnect to the same address)."""
        self.stop()
        self.start()

    def reload(self) -> None:
        """Ask the server to re-read the snapshot now (SIGHUP)."""
        if self.proc is None or self.proc.poll() is not None:
            raise GocpError(f"gocp-server not running\n{self.log_tail()}")
        self.proc.send_signal(signal.SIGHUP)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def events(self, since_start: bool = True) -> list[Event]:
        """The server's events (of this run unless ``since_start`` is False)."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return []
        if since_start:
            data = data[self._offset:]
        out = []
        for line in data.splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line still being written
        return out

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float) -> Event:
        """The first event of this run matching ``predicate``, polling until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events():
                if predicate(ev):
                    return ev
            self.check_alive()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no matching gocp-server event within {timeout} s\n"
                                   f"{self.log_tail()}")
            time.sleep(POLL_S)

    def log_tail(self, lines: int = 20) -> str:
        """The last events and stderr lines."""
        parts = []
        for p in (self.log_path, self.err_path):
            try:
                parts += p.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                pass
        return "\n".join(parts)
