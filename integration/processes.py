"""Ending a child process sockmesh started: by its PID, with a deadline, always reaped."""

from __future__ import annotations

import subprocess
from typing import Any

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
