"""A live mesh for the agent's kernel e2e tests: backends, embedded xDS server, the agent as
a real `sockmesh run` process on a test cgroup, and a keep-alive client in that cgroup.

Safety: the cgroup is a fresh child (tests.support.cgroup), traffic goes to 127.10.0.x VIPs
and 127.20.x.y backends only, every process is ended by PID, and the pin dir is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration import cgroups
from integration.demo import mesh
from tests.support.backends import free_port
from tests.support.process import poll_until

ROOT = Path(__file__).resolve().parents[2]
SOCKMESH = [sys.executable, "-m", "integration.cli"]


def poll(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Call fn until it returns something truthy; TimeoutError naming ``what`` after timeout."""
    return poll_until(fn, timeout, what, interval)


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def end(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM) -> int | None:
    """Signal a process we started (by PID), reap it; kill after 10 s."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class Backends:
    """Identity backends (integration.demo.backends) in one child process."""

    def __init__(self, specs: Sequence[tuple[str, str]]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "integration.demo.backends"]
            + [f"{name}={host}" for name, host in specs],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.ports: dict[str, int] = json.loads(self.proc.stdout.readline())
        self.hosts = dict(specs)

    def addr(self, name: str) -> tuple[str, int]:
        return self.hosts[name], self.ports[name]

    def stop(self) -> None:
        end(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class AgentProc:
    """`sockmesh run` on the test cgroup."""

    xds: str
    cgroup: Path
    pin_dir: Path
    admin: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    log: Path | None = None
    # added to the agent's environment (Istio mode reads its identity from POD_* variables)
    env: dict[str, str] = field(default_factory=dict)

    def start(self, *extra: str) -> None:
        self.log = Path(f"/tmp/sockmesh-agent-{os.getpid()}-{self.admin}.log")
        fh = self.log.open("a")
        self.proc = subprocess.Popen(
            SOCKMESH + ["run", "--xds-server", self.xds, "--cgroup", str(self.cgroup),
                        "--pin-dir", str(self.pin_dir), "--metrics-addr",
                        f"127.0.0.1:{self.admin}", "--missing-after", "2",
                        "--backoff-max", "0.5", *extra],
            cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **self.env})
        fh.close()

    def status(self) -> dict[str, Any]:
        return json.loads(http_get(self.admin, "/status"))  # type: ignore[no-any-return]

    def metrics(self) -> str:
        return http_get(self.admin, "/metrics")

    def wait_applied(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 90.0
                     ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.output()}")
            st = self.status()
            a = st["config"]["applied"]
            return st if a and pred(st) else None
        return poll(check, timeout, "agent applied config")  # type: ignore[no-any-return]

    def output(self) -> str:
        return self.log.read_text()[-4000:] if self.log and self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        rc = end(self.proc, sig)
        return rc


class Traffic:
    """The client (integration.demo.client) looping over ``sequence`` until stopped."""

    def __init__(self, cgroup: Path, tmp: Path, sequence: list[str],
                 kinds: dict[str, dict[str, Any]], workers: int = 2,
                 max_seconds: float = 60) -> None:
        self.tmp = tmp
        self.until = tmp / "stop"
        self.out = tmp / "records.json"
        plan = {"kinds": kinds, "sequence": sequence, "workers": workers,
                "max_seconds": max_seconds, "loop": True, "until_file": str(self.until)}
        (tmp / "plan.json").write_text(json.dumps(plan))
        self.proc = cgroups.spawn_in(
            [sys.executable, "-m", "integration.demo.client", "--plan", str(tmp / "plan.json"),
             "--out", str(self.out), "--quiet"], cgroup, cwd=ROOT)

    def stop(self) -> list[list[Any]]:
        """Stop looping, wait for the client, return its records."""
        self.until.touch()
        try:
            self.proc.wait(30)
        finally:
            end(self.proc, signal.SIGKILL)
        return json.loads(self.out.read_text())  # type: ignore[no-any-return]


def kinds(host_of: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Client request kinds: one per demo service plus reviews with end-user jason."""
    out = {s.name: {"vip": s.vip, "port": mesh.PORT, "host": f"{s.name}:{mesh.PORT}",
                    "path": f"/{s.name}"} for s in mesh.SERVICES}
    out["reviews-jason"] = {**out["reviews"], "headers": {"end-user": "jason"}}
    return out


@contextlib.contextmanager
def mesh_cgroup() -> Iterator[tuple[Path, Path]]:
    """A fresh child cgroup and its pin dir; both removed afterwards."""
    from tests.support.cgroup import pin_dir_for, sweep_leftovers, test_cgroup

    sweep_leftovers()
    with test_cgroup() as cg:
        pin = pin_dir_for(cg)
        try:
            yield cg, pin
        finally:
            shutil.rmtree(pin, ignore_errors=True)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)
