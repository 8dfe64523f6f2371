"""A dedicated child cgroup v2 for the demo's client processes.

Safety: the datapath is attached only to a cgroup created here (``<prefix>-<pid>`` under the
cgroup v2 root, never the root itself); only processes we start are moved into it; ``remove``
ends those processes by PID (the caller's job) and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from integration.preflight import BPFFS, CGROUP2_ROOT


def create(prefix: str) -> Path:
    """Create ``<root>/<prefix>-<pid>``; returns its path."""
    path = CGROUP2_ROOT / f"{prefix}-{os.getpid()}"
    path.mkdir()
    return path


def remove(path: Path, timeout: float = 5.0) -> None:
    """Remove an (emptying) child cgroup; retries while its last processes exit."""
    if path == CGROUP2_ROOT or CGROUP2_ROOT not in path.parents:
        raise ValueError(f"refusing to remove {path}")
    deadline = time.monotonic() + timeout
    while path.exists():
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def sweep(prefix: str) -> list[Path]:
    """Remove ``<prefix>-<pid>`` cgroups and pin dirs whose process is gone; returns them."""
    removed = []
    for base in (CGROUP2_ROOT, BPFFS):
        for path in base.glob(f"{prefix}-*"):
            pid = path.name[len(prefix) + 1:]
            if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            try:
                if base == BPFFS:
                    shutil.rmtree(path)
                else:
                    path.rmdir()
                removed.append(path)
            except OSError:
                pass
    return removed


def spawn_in(argv: list[str], cgroup: Path, **kw: Any) -> subprocess.Popen[Any]:
    """Start argv with its PID in ``cgroup`` before it runs a single instruction of argv.

    The child waits on a pipe until it has been moved, then execs ``argv``, so every
    connect() it makes is seen by the cgroup's programs.
    """
    r, w = os.pipe()
    # pass_fds keeps the fd's number, so the gate is told which fd to read
    gate = [sys.executable, "-c",
            ("import os,sys; fd=int(sys.argv[1]); os.read(fd,1); os.close(fd); "
            "os.execvp(sys.argv[2], sys.argv[2:])"), str(r)]
    proc = subprocess.Popen(gate + argv, pass_fds=(r,), **kw)
    os.close(r)
    try:
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        os.write(w, b"x")
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    finally:
        os.close(w)
    return proc
