"""Test peers run as child processes: started by path, awaited with a deadline, stopped by PID.

    class MyPeer(PeerProcess):
        label = "my-peer"                 # names the process in errors
        error = MyPeerError               # raised when it is absent or died
        def __init__(self, workdir): self.set_up(peer_binary(ENV, BUILT), why, workdir)
        def start(self): self.proc = subprocess.Popen(...); return self.started(self.wait)
        def log_tail(self, lines=40): ...

:class:`PeerProcess` carries what Envoy, istiod and the go-control-plane server share:
the binary and work dir, the ``proc`` handle, stop by PID (the product's
``integration.processes.end``: SIGTERM, SIGKILL after a timeout, reap), the context
manager, the alive check with the log tail in its message.
:func:`peer_binary` and :func:`peer_missing` find a built peer (env override, build
stamp); :func:`poll_until` is the deadline loop every wait uses; :func:`http_get` the GET
of an admin or debug endpoint.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Self, TypeVar

from integration import processes
from tests.support.capabilities import ROOT

POLL_S = 0.05

T = TypeVar("T")


def poll_until(condition: Callable[[], T | None], timeout: float, what: str,
               interval: float = POLL_S) -> T:
    """Call ``condition`` until it returns a truthy value or ``timeout`` s pass.

    The TimeoutError names ``what`` and the last value or exception seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported if the deadline passes
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def peer_binary(env_var: str, built: Path) -> Path | None:
    """A peer's binary: ``$env_var`` when set, else ``built`` (where its build.sh puts it)
    when it exists, else None."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    return built if built.exists() else None


def peer_missing(env_var: str, built: Path, build_script: str, version: str,
                 stale: str) -> str | None:
    """Why a peer's binary cannot run here, or None.

    Missing: neither ``$env_var`` nor ``built`` exists.  Stale: ``built`` (not an override)
    is stamped (``<binary>.version``, written by ``build_script``) with another ``version``
    than the sources now give; ``stale`` says so.
    """
    found = peer_binary(env_var, built)
    if found is None or not found.exists():
        return f"{built.relative_to(ROOT)} not built ({build_script}, run by scripts/setup.sh)"
    if env_var not in os.environ:
        stamp = built.with_name(built.name + ".version")
        if not stamp.exists() or stamp.read_text().strip() != version:
            return f"{stale}; run {build_script}"
    return None


def http_get(url: str, timeout: float, errors: str = "strict") -> tuple[int, str]:
    """GET ``url``; returns (status, body), an HTTP error status included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors=errors)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors=errors)


class PeerProcess:
    """Base of one test peer process; subclasses set ``proc`` in :meth:`start`."""

    label: ClassVar[str] = "process"
    error: ClassVar[type[RuntimeError]] = RuntimeError
    proc: subprocess.Popen[bytes] | None = None
    binary: Path
    workdir: Path

    def set_up(self, binary: Path | None, why_missing: Callable[[], str], workdir: Path) -> None:
        """Take ``binary`` (``error`` saying ``why_missing()`` when it is absent) and create
        ``workdir``; called first in a subclass's ``__init__``."""
        if binary is None or not Path(binary).exists():
            raise self.error(why_missing())
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> Self:
        """Start the process and wait until it is ready."""
        raise NotImplementedError

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the process's log."""
        raise NotImplementedError

    def started(self, wait: Callable[[], object]) -> Self:
        """Run ``wait`` on the process just started; stop the process if it fails."""
        try:
            wait()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = processes.END_TIMEOUT_S) -> None:
        """SIGTERM by PID (SIGKILL after ``timeout`` s) and reap."""
        processes.end(self.proc, timeout)

    def check_alive(self) -> None:
        """Raise ``error`` with the log tail if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise self.error(f"{self.label} exited with code {self.proc.returncode}:\n"
                             f"{self.log_tail()}")

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self.proc.pid if self.proc is not None else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
