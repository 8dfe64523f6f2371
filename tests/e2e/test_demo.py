"""`sockmesh demo` — the README's main command — run as a real process from the repo.

It must complete, pass its own checks, write its report, and leave no cgroup, pin dir or
process behind; without root it must say what is missing and exit non-zero.  ~25 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from integration.preflight import BPFFS, CGROUP2_ROOT

ROOT = Path(__file__).resolve().parents[2]
SOCKMESH = [sys.executable, "-m", "integration.cli"]


@pytest.mark.kernel
def test_demo_completes_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(SOCKMESH + ["demo", "--out", str(out), "--requests", "2000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("report.html", "report.png", "summary.json", "requests.json"):
        assert (out / name).stat().st_size > 0, name
    assert str(out / "report.html") in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["requests"] == 2000 and summary["errors"] == 0
    records = json.loads((out / "requests.json").read_text())["records"]
    assert len(records) == 2000
    jason = {r[1] for r in records if r[0] == "reviews-jason"}
    assert jason == {"reviews-v2-1"}
    others = {r[1] for r in records if r[0] == "reviews-other"}
    assert others == {"reviews-v1-1", "reviews-v3-1"}
    assert summary["fast_path_share"] is not None and summary["fast_path_share"] > 0.9
    assert "fast path (routed in kernel)" in proc.stdout
    # cleaned up: this run's cgroup, pin dir and keeper control files are gone (other demo
    # runs on the machine may be going on at the same time, so only ours is checked)
    m = re.search(r"demo cgroup \S+/(sockmesh-demo-\d+),", proc.stdout)
    assert m, proc.stdout[:500]
    name = m.group(1)
    assert not (CGROUP2_ROOT / name).exists()
    assert not (BPFFS / name).exists()
    assert not list(Path("/run/sockmesh").glob(f"{name}.*"))


def test_demo_without_root_says_what_is_missing(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        cmd = SOCKMESH
    else:
        # drop to nobody so the check really runs unprivileged
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *SOCKMESH]
    proc = subprocess.run(cmd + ["demo", "--out", str(tmp_path / "r")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "HOME": str(tmp_path)})
    if os.geteuid() != 0 and shutil.which("setpriv") is None:
        pytest.skip("cannot drop privileges here")
    assert proc.returncode == 1, proc.stderr
    assert "not root" in proc.stderr and "CAP_BPF" in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()


def test_demo_bad_flag_exit_2() -> None:
    proc = subprocess.run(SOCKMESH + ["demo", "--requests", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--requests" in proc.stderr
