"""The soak: mixed keep-alive traffic through the real agent while the control server changes
the configuration every second; zero failed requests, bounded agent memory and pool sockets.

Used by tests/reliability/test_soak.py (60 s in CI) and scripts/soak.py (default 10 min).
Configuration churn cycles through: the base mesh; the reviews catch-all moved to
reviews-v3; ratings-3 removed from EDS; the details cluster switched to ROUND_ROBIN with
details-2 weighted 3 (each step is a real LDS/RDS/CDS/EDS push to the agent).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from integration.demo import mesh
from tests.e2e.agent_harness import Traffic, kinds
from tests.reliability.harness import REVIEWS_ROUTES, LiveMesh, live_mesh
from translator.resources import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, ResourceSet

SEQUENCE = ["productpage", "details", "reviews", "reviews-jason", "ratings", "reviews"]
RSS_GROWTH_BOUND_KIB = 40 * 1024  # after warm-up; a leak per request or per push exceeds it
WARMUP_S = 10.0


def _variant(lm: LiveMesh, step: int) -> ResourceSet:
    routes = [dict(r) for r in REVIEWS_ROUTES]
    without: tuple[str, ...] = ()
    k = step % 4
    if k == 1:
        routes[-1] = {**routes[-1], "route": {"cluster": "reviews-v3"}}
    if k == 2:
        without = ("ratings-3",)
    rs = mesh.mesh_resources(lm.endpoints(without=without), routes)
    if k == 3:
        details = rs.by_type(CLUSTER)["details"]
        details.lb_policy = details.ROUND_ROBIN
        cla = rs.by_type(CLUSTER_LOAD_ASSIGNMENT)["details"]
        cla.endpoints[0].lb_endpoints[-1].load_balancing_weight.value = 3
    return rs


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pool_sockets(lm: LiveMesh) -> int:
    """Pooled backend connections the maps hold (every non-empty slot)."""
    return sum(sum(1 for s in e["pool"] if s != "empty") for e in lm.dump()["endpoints"])


def run(seconds: float, tmp: Path, churn_every: float = 1.0) -> dict[str, Any]:
    """Soak for ``seconds`` (bounded); return figures and the failures seen."""
    seconds = min(seconds, 6 * 3600.0)
    with live_mesh(tmp) as lm:
        assert lm.agent.proc is not None
        pid = lm.agent.proc.pid
        d = tmp / "soak-traffic"
        d.mkdir(exist_ok=True)
        t = Traffic(lm.cgroup, d, SEQUENCE, kinds(), workers=2, max_seconds=seconds + 60)
        samples: list[dict[str, float]] = []
        pushes = 0
        t0 = time.monotonic()
        try:
            next_push = t0 + churn_every
            next_sample = t0
            while time.monotonic() - t0 < seconds:
                now = time.monotonic()
                if now >= next_push:
                    pushes += 1
                    lm.server.set_resources(_variant(lm, pushes))
                    next_push += churn_every
                if now >= next_sample:
                    samples.append({"t": round(now - t0, 1), "rss_kib": rss_kib(pid),
                                    "pool_sockets": pool_sockets(lm)})
                    next_sample += 5.0
                time.sleep(max(0.0, min(next_push, next_sample) - time.monotonic()))
            lm.server.set_resources(_variant(lm, 0))
        finally:
            records = t.stop()
        st = lm.agent.status()
        alive = lm.agent.proc.poll() is None
    failed = [r for r in records if r[5] is not None or r[2] != 200]
    warm = [s for s in samples if s["t"] >= min(WARMUP_S, seconds / 3)]
    base = warm[0]["rss_kib"] if warm else 0
    return {
        "seconds": round(time.monotonic() - t0, 1), "requests": len(records),
        "failed": len(failed), "first_failures": failed[:5], "pushes": pushes,
        "applies": st["config"]["applies"], "nacks": st["xds"]["nacks"], "agent_alive": alive,
        "rss_kib_after_warmup": base, "rss_kib_max": max(s["rss_kib"] for s in samples),
        "rss_growth_kib": max(s["rss_kib"] for s in warm) - base if warm else 0,
        "pool_sockets_max": max(s["pool_sockets"] for s in samples),
        "pool_sockets_last": samples[-1]["pool_sockets"], "samples": samples,
    }


def check(fig: dict[str, Any]) -> list[str]:
    """What a soak must show; empty when it passed."""
    from bpf.limits import limit

    bound = len(mesh.backends(0)) * limit("POOL_PER_ENDPOINT")
    problems = []
    if fig["failed"]:
        problems.append(f"{fig['failed']} failed requests, first {fig['first_failures']}")
    if not fig["agent_alive"]:
        problems.append("the agent exited")
    if fig["rss_growth_kib"] > RSS_GROWTH_BOUND_KIB:
        problems.append(f"agent RSS grew {fig['rss_growth_kib']} KiB after warm-up")
    if fig["pool_sockets_max"] > bound:
        problems.append(f"{fig['pool_sockets_max']} pool sockets > bound {bound}")
    if fig["pushes"] < fig["seconds"] * 0.8 - 2:
        problems.append(f"only {fig['pushes']} config pushes in {fig['seconds']} s")
    if fig["nacks"]:
        problems.append(f"{fig['nacks']} NACKs of good configuration")
    return problems
