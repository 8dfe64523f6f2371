"""Where this host mounts the cgroup v2 hierarchy the programs attach under.

systemd's hybrid layout mounts it at /sys/fs/cgroup/unified (the v1 controllers sit next to
it under /sys/fs/cgroup); a pure cgroup v2 host mounts it at /sys/fs/cgroup.  The agent's
pod (deploy/) mounts the node's hierarchy at /sys/fs/cgroup/unified beside the container's
own at /sys/fs/cgroup, so that mount point wins when both are cgroup2.  Imports nothing but
the standard library: the preflight checks use it where bcc and libbpf may be missing.
"""

from __future__ import annotations

import re
from pathlib import Path

MOUNTS = Path("/proc/self/mounts")
HYBRID = Path("/sys/fs/cgroup/unified")
PURE_V2 = Path("/sys/fs/cgroup")
_PREFERRED = (HYBRID, PURE_V2)
_OCTAL = re.compile(r"\\([0-7]{3})")


def cgroup2_mounts(mounts: str) -> list[Path]:
    """Mount points of type cgroup2 in ``mounts`` (the text of /proc/self/mounts)."""
    out: list[Path] = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            # the kernel escapes space, tab, newline and backslash as \ooo
            point = Path(_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[1]))
            if point not in out:
                out.append(point)
    return out


def cgroup2_root(mounts: str | None = None) -> Path:
    """The cgroup v2 mount point: /sys/fs/cgroup/unified, else /sys/fs/cgroup, else the
    first cgroup2 mount listed; /sys/fs/cgroup/unified when there is none (the place the
    preflight check then names).  ``mounts`` defaults to this process's /proc/self/mounts."""
    text = MOUNTS.read_text() if mounts is None else mounts
    found = cgroup2_mounts(text)
    for point in _PREFERRED:
        if point in found:
            return point
    return found[0] if found else HYBRID
