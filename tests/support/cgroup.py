"""A dedicated child cgroup v2 for kernel tests, and client processes placed in it.

Safety: programs are attached only to a cgroup this module created
(``sockmesh-test-<pid>-<n>`` under the cgroup v2 root); only processes the test started are
moved into it; teardown ends those processes by PID and removes the cgroup, also on failure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from bpf.cgroup2 import cgroup2_root
from integration.cgroups import spawn_in

CGROUP2_ROOT = cgroup2_root()  # hybrid: /sys/fs/cgroup/unified; pure v2: /sys/fs/cgroup
BPFFS = Path("/sys/fs/bpf")
PREFIX = "sockmesh-test-"
_seq = itertools.count()


def sweep_leftovers() -> None:
    """Remove sockmesh-test-* cgroups and pin dirs left by an earlier run of this suite
    whose process is gone (the pid is part of the name)."""
    for base in (CGROUP2_ROOT, BPFFS):
        for path in base.glob(f"{PREFIX}*"):
            pid = path.name[len(PREFIX):].split("-")[0]
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                continue
            if base == BPFFS:
                shutil.rmtree(path, ignore_errors=True)
                continue
            # child cgroups first (tests make some: test_agent_exempt's agent/ and app/)
            for sub in sorted((p for p in path.rglob("*") if p.is_dir()),
                              key=lambda p: len(p.parts), reverse=True) + [path]:
                with contextlib.suppress(OSError):
                    sub.rmdir()


def _wait_empty(path: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not (path / "cgroup.procs").read_text().split():
            return
        time.sleep(0.01)


@contextlib.contextmanager
def test_cgroup() -> Iterator[Path]:
    """Create a fresh child cgroup; yield its path; remove it afterwards."""
    path = CGROUP2_ROOT / f"{PREFIX}{os.getpid()}-{next(_seq)}"
    path.mkdir()
    try:
        yield path
    finally:
        _wait_empty(path, time.monotonic() + 5.0)
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.02)


test_cgroup.__test__ = False  # type: ignore[attr-defined]  # a fixture helper, not a test


def pin_dir_for(cgroup: Path) -> Path:
    """The bpffs pin dir a test uses for the datapath attached to ``cgroup``."""
    return BPFFS / cgroup.name


# Start argv with its PID already in a cgroup: the product's gate, under the name the tests use.
spawn_in_cgroup = spawn_in
