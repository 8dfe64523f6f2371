"""bpf.cgroup2 finds the cgroup v2 mount from /proc/self/mounts, and the loader's refusal of
the root cgroup follows whichever mount it found (no kernel needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpf.cgroup2 import HYBRID, PURE_V2, cgroup2_mounts, cgroup2_root
from bpf.loader import DatapathError, check_cgroup

HYBRID_HOST = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
"""
PURE_V2_HOST = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
"""
# the agent's pod: its own cgroup namespace at /sys/fs/cgroup, the node's tree at unified
AGENT_POD = """\
cgroup /sys/fs/cgroup cgroup2 ro,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 ro,relatime 0 0
"""
V1_ONLY = "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"


@pytest.mark.parametrize(("mounts", "root"), [
    (HYBRID_HOST, HYBRID),
    (PURE_V2_HOST, PURE_V2),
    (AGENT_POD, HYBRID),
    (V1_ONLY, HYBRID),  # none: the documented place, which preflight then names
    ("none /mnt/my\\040cgroups cgroup2 rw 0 0\n", Path("/mnt/my cgroups")),
])
def test_root_from_mounts(mounts: str, root: Path) -> None:
    assert cgroup2_root(mounts) == root


def test_only_cgroup2_mounts_are_listed() -> None:
    assert cgroup2_mounts(HYBRID_HOST) == [HYBRID]
    assert cgroup2_mounts(V1_ONLY) == []


def test_this_host_root_is_a_cgroup2_mount() -> None:
    mounts = Path("/proc/self/mounts").read_text()
    if not cgroup2_mounts(mounts):
        pytest.skip("no cgroup2 mount on this host")
    assert cgroup2_root() in cgroup2_mounts(mounts)


def test_loader_refuses_the_root_it_found(tmp_path: Path) -> None:
    root = cgroup2_root(f"cgroup2 {tmp_path} cgroup2 rw 0 0\n")
    child = root / "mesh"
    child.mkdir()
    (child / "cgroup.procs").write_text("")
    assert check_cgroup(child, root) == child.resolve()
    with pytest.raises(DatapathError, match="not a child cgroup"):
        check_cgroup(root, root)
    with pytest.raises(DatapathError, match="not a child cgroup"):
        check_cgroup(tmp_path.parent, root)
    for found in (cgroup2_root(HYBRID_HOST), cgroup2_root(PURE_V2_HOST)):
        with pytest.raises(DatapathError, match="not a child cgroup"):
            check_cgroup(found, found)
