"""`sockmesh bench --quick` as CI runs it: it must finish in a bounded time and leave valid
JSON and plots; the docs page and README section are generated from that JSON.

The checks are about the run being real and complete, not about the speed targets (those
are printed MET/MISSED by the benchmark itself, on a shared machine): every scenario served
requests without errors (the bare relay too), the kernel scenario was routed in the kernel
(at saturation and at the low rate) and the slow-path scenario was not, the kernel path and
Envoy one hop also have their round-robin low-rate runs (printed beside the targets, which
use the one-backend runs), every target was
evaluated (the data-plane ones with the bare relay beside them), the control-plane and
memory figures exist.
~100 s on 2 busy cores (the quick run itself; the bound is 180 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from integration.bench import report
from integration.preflight import BPFFS, CGROUP2_ROOT

ROOT = Path(__file__).resolve().parents[2]
SOCKMESH = [sys.executable, "-m", "integration.cli"]
QUICK_BOUND_S = 180.0
SCENARIOS = {"direct", "floor", "kernel", "slow", "envoy", "sidecars"}


def _leftovers() -> set[str]:
    """Cgroups and pin dirs of runs whose process is gone (a live one belongs to a run in
    progress, e.g. another checkout's test session on this machine)."""
    return {p.name for base in (CGROUP2_ROOT, BPFFS) for p in base.glob("sockmesh-bench-*")
            if not Path(f"/proc/{p.name.rsplit('-', 1)[-1]}").exists()}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    out = tmp_path_factory.mktemp("bench")
    before = _leftovers()
    t0 = time.monotonic()
    proc = subprocess.Popen(SOCKMESH + ["bench", "--quick", "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=QUICK_BOUND_S + 60)
    finally:
        if proc.poll() is None:
            # SIGTERM first: the bench detaches, unpins and removes its cgroup on it
            proc.terminate()
            proc.communicate(timeout=60)
    elapsed = time.monotonic() - t0
    print(stdout[-6000:], stderr[-3000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert _leftovers() <= before, "cgroup or pin dir left behind"
    return out, stdout, elapsed


@pytest.mark.timeout(QUICK_BOUND_S + 150)
@pytest.mark.kernel
@pytest.mark.envoy
def test_quick_run_is_bounded_and_complete(quick_run: tuple[Path, str, float]) -> None:
    out, stdout, elapsed = quick_run
    assert elapsed < QUICK_BOUND_S, f"--quick took {elapsed:.0f} s"
    r: dict[str, Any] = json.loads((out / "bench.json").read_text())
    assert r["quick"] and set(r["scenarios"]) == SCENARIOS
    assert r["method"]["low_rate_one_backend"] and r["method"]["low_rate_rr"] == [
        "kernel", "envoy"]
    for name, s in r["scenarios"].items():
        parts = ("saturation", "low_rate") + (("low_rate_rr",) if name in ("kernel", "envoy")
                                              else ())
        assert ("low_rate_rr" in s) == (name in ("kernel", "envoy")), name
        for part in parts:
            w = s[part]
            assert w["requests"] > 0 and w["rps"] > 0 and w["errors"] == 0, (name, part, w)
            assert 0 < w["p50_us"] <= w["p90_us"] <= w["p99_us"], (name, part, w)
        assert s["cpu_s_per_10k"] > 0, name
    assert r["scenarios"]["kernel"]["fast_share"] > 0.9
    assert r["scenarios"]["slow"]["fast_share"] < 0.1
    assert r["scenarios"]["slow"]["rounds"][0]["counters"].get("route_user", 0) > 0
    assert r["scenarios"]["kernel"]["fast_share_low_rate"] > 0.9
    assert r["method"]["low_rate_paired"]
    assert 0 < r["low_rate_l4"]["p50_us"] <= r["low_rate_l4"]["p99_us"]
    low_counters = r["scenarios"]["kernel"]["rounds"][0]["counters_low_rate"]
    # the paired run's kernel requests (one backend and round robin) went through the kernel
    assert low_counters.get("fast", 0) >= 2 * r["method"]["low_rate_requests"]
    assert {row["scenario"] for row in report.rr_rows(r)} == {"kernel", "envoy"}
    assert "ROUND_ROBIN over the 3 backends" in stdout
    assert r["scenarios"]["floor"]["fast_share"] is None  # the bare relay is not sockmesh
    mem = r["memory"]
    assert mem["envoy_hop_rss"] > 0 and mem["bench_bpf_map_bytes"] > 0
    ist = mem["istio"]
    assert ist["agent_rss"] > 0 and ist["bpf_map_bytes"] > 0 and ist["envoy_sidecar_rss"] > 0
    ctl = r["control"]
    assert ctl["snapshot"]["clusters"] > 3000 and ctl["snapshot_apply"]["map_writes"] > 0
    assert ctl["endpoint_change"]["n"] > 0 and ctl["route_updates"]["n"] > 0
    assert ctl["route_updates_small"]["n"] == 100
    # every target evaluated and printed with its verdict
    targets = report.targets(r)
    assert len(targets) == 8
    for t in targets:
        assert t.line() in stdout
    # only a latency ratio may lack a value (when noise makes Envoy's added latency <= 0)
    assert all(t.met is not None for t in targets if "latency" not in t.name)
    # the mechanism alone stands beside the five data-plane targets (but for a latency
    # ratio that noise left without a value: Envoy's added latency not positive)
    data_plane = [t for t in targets if t.floor is not None or "noise" in t.figures]
    assert len(data_plane) == 5
    assert all(t.floor is not None for t in data_plane if t.value is not None)
    kernel = r["scenarios"]["kernel"]["bpf_programs"]
    assert {p["name"] for p in kernel["programs"]} >= {"sm_sk_msg", "sm_sk_skb"}
    assert kernel["bpf_ns_per_request"] > 0
    assert ctl["endpoint_change"]["profile"] and ctl["route_updates"]["profile"]
    for png in ("throughput.png", "latency.png", "cpu.png", "memory.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png


@pytest.mark.timeout(QUICK_BOUND_S + 150)
@pytest.mark.kernel
@pytest.mark.envoy
def test_docs_and_readme_come_from_the_json(quick_run: tuple[Path, str, float],
                                            tmp_path: Path) -> None:
    out, _, _ = quick_run
    r = json.loads((out / "bench.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\nintro stays\n")
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    for _ in range(2):  # a second run replaces the section instead of adding one
        proc = subprocess.run(SOCKMESH + ["bench", "--from-json", str(out / "bench.json"),
                                          "--out", str(tmp_path / "o"), "--docs", str(docs),
                                          "--readme", str(readme)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              check=False)
        assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert text.startswith("# project\n\nintro stays\n")
    assert text.count(report.README_START) == 1 and text.count(report.README_END) == 1
    page = docs.read_text()
    kernel = r["scenarios"]["kernel"]["saturation"]["rps"]
    for doc in (page, text):
        assert f"| {report.LABELS['kernel']} | {kernel:,.0f} |" in doc
    assert r["machine"]["cpu_model"] in page and r["date"] in page
    for png in ("throughput.png", "latency.png", "cpu.png", "memory.png"):
        assert f"benchmarks/{png}" in page
        assert (docs.parent / "benchmarks" / png).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((docs.parent / "benchmarks" / "bench.json").read_text()) == r
