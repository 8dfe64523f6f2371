"""What the eBPF datapath needs from this machine, checked before anything is attached.

Each check returns a sentence saying exactly what is missing and how to get it, so
``sockmesh run`` and ``sockmesh demo`` can fail (or fail open) with a reason instead of a
traceback from deep inside bcc.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import platform
from pathlib import Path

from bpf.cgroup2 import cgroup2_root

CGROUP2_ROOT = cgroup2_root()  # hybrid: /sys/fs/cgroup/unified; pure v2: /sys/fs/cgroup
BPFFS = Path("/sys/fs/bpf")


def missing_for_datapath() -> list[str]:
    """Every reason the datapath cannot be loaded here (empty when it can)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append(f"not root (euid {os.geteuid()}): loading BPF programs and attaching "
                       "them to a cgroup needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN; "
                       "run as root")
    if not (CGROUP2_ROOT / "cgroup.controllers").exists():
        missing.append(f"no cgroup v2 hierarchy at {CGROUP2_ROOT} (mount -t cgroup2 none "
                       f"{CGROUP2_ROOT})")
    if not BPFFS.is_dir() or not os.path.ismount(BPFFS):
        missing.append(f"bpffs not mounted at {BPFFS} (mount -t bpf bpf {BPFFS})")
    # looked up, not imported: importing bcc maps libbcc with LLVM and clang (~55 MB of RSS)
    # into the agent, which never compiles (its socket keeper does)
    if importlib.util.find_spec("bcc") is None or ctypes.util.find_library("bcc") is None:
        missing.append("bcc is not importable: install Debian's python3-bpfcc and use a venv "
                       "with --system-site-packages (scripts/setup.sh does both)")
    build = Path("/lib/modules") / platform.release() / "build"
    if not build.exists():
        missing.append(f"no kernel headers at {build} (bcc compiles against them; "
                       "scripts/setup.sh installs and links them)")
    return missing
