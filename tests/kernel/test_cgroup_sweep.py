"""The kernel tests' leftover sweep removes a dead run's cgroup with its child cgroups, and
leaves a live run's alone (tests/support/cgroup.py)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.cgroup import CGROUP2_ROOT, PREFIX, sweep_leftovers


def _dead_pid() -> int:
    pid = 4_000_000  # above pid_max's default; checked anyway
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


def test_a_dead_runs_cgroup_goes_with_its_children() -> None:
    dead = CGROUP2_ROOT / f"{PREFIX}{_dead_pid()}-0"
    live = CGROUP2_ROOT / f"{PREFIX}{os.getpid()}-sweep"
    try:
        for d in (dead / "agent" / "inner", dead / "app", live / "agent"):
            d.mkdir(parents=True)
        sweep_leftovers()
        assert not dead.exists()
        assert (live / "agent").is_dir()  # its process is this one: not a leftover
    finally:
        for d in (dead / "agent" / "inner", dead / "agent", dead / "app", dead,
                  live / "agent", live):
            if d.exists():
                d.rmdir()
