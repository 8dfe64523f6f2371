"""Child processes sockmesh starts: ended by PID with a deadline and always reaped
(:func:`end`), awaited with a deadline (:func:`poll_until`), and :class:`PeerProcess`, the
base of a helper process with a binary, a work dir and a log (Envoy in ``sockmesh ab`` and
``sockmesh bench``; istiod and go-control-plane in the tests)."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

END_TIMEOUT_S = 5.0


def end(proc: subprocess.Popen[Any] | None, timeout: float = END_TIMEOUT_S) -> None:
    """SIGTERM ``proc`` by its PID (SIGKILL after ``timeout`` s), reap it and close its
    stdout pipe if it has one; None is a no-op."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stdout is not None:
        proc.stdout.close()


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


def http_get(url: str, timeout: float, errors: str = "strict") -> tuple[int, str]:
    """GET ``url``; returns (status, body), an HTTP error status included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors=errors)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors=errors)


class PeerProcess:
    """Base of one helper process (Envoy, istiod, ...); subclasses set ``proc`` in
    :meth:`start`."""

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

    def stop(self, timeout: float = END_TIMEOUT_S) -> None:
        """SIGTERM by PID (SIGKILL after ``timeout`` s) and reap."""
        end(self.proc, timeout)

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
