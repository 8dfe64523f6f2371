"""bpf.loader.own_cgroup: the cgroup v2 directory whose id connect4 exempts (the socket
keeper's).  /proc/self/cgroup names it relative to the cgroup namespace's root; in a pod
with its own cgroup namespace and the node's tree mounted, that path is the wrong one and
the directory listing this process in cgroup.procs is found instead."""

from __future__ import annotations

import os
from pathlib import Path

from bpf.loader import own_cgroup


def _tree(root: Path, mine: str) -> None:
    for d, pids in (("", "1 2"), ("kubepods.slice", ""), ("kubepods.slice/pod-a", "77"),
                    (mine, f"5 {os.getpid()}")):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "cgroup.procs").write_text(pids)


def test_the_directory_listing_this_process_is_found(tmp_path: Path) -> None:
    # /proc/self/cgroup's path under tmp_path is missing or does not list this process
    mine = "kubepods.slice/pod-agent/cri-1"
    _tree(tmp_path, mine)
    assert own_cgroup(tmp_path) == tmp_path / mine


def test_the_path_proc_self_cgroup_names_comes_first(tmp_path: Path) -> None:
    rel = Path("/proc/self/cgroup").read_text().split("0::", 1)[1].split()[0].lstrip("/")
    _tree(tmp_path, "elsewhere")
    (tmp_path / rel).mkdir(parents=True, exist_ok=True)
    (tmp_path / rel / "cgroup.procs").write_text(str(os.getpid()))
    assert own_cgroup(tmp_path) == tmp_path / rel


def test_none_when_no_directory_lists_this_process(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("1")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "cgroup.procs").write_text("2 3")
    assert own_cgroup(tmp_path) is None
