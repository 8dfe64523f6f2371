"""The demo's results: per route/cluster/endpoint counts, checks, latency, and a report.

Input is what the client measured (one record per request: kind, answering backend, status,
latency) plus what the router decided for each kind of request on the agent's own tables
(the Python model, the same tables the kernel holds).  The checks compare the two: every
response came from a cluster the route allows, ``end-user: jason`` only reached reviews-v2,
the 50/50 split is within tolerance, and the slow ratings endpoint got fewer requests.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def summarize(records: Sequence[Sequence[Any]], decisions: Mapping[str, dict[str, Any]],
              backend_cluster: Mapping[str, str], counters_delta: Mapping[str, int] | None,
              fast_share: float | None, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the report shows, as JSON-able data."""
    by_kind: dict[str, list[Sequence[Any]]] = defaultdict(list)
    for r in records:
        by_kind[r[0]].append(r)
    kinds: dict[str, Any] = {}
    checks: list[dict[str, Any]] = []
    endpoints: Counter[str] = Counter()
    for kind, recs in sorted(by_kind.items()):
        dec = decisions.get(kind, {})
        allowed = ({c["cluster"] for c in dec.get("candidates", [])}
                   or ({dec["cluster"]} if dec.get("cluster") else set()))
        per_ep = Counter(r[1] for r in recs if r[5] is None)
        endpoints.update(per_ep)
        per_cluster = Counter(backend_cluster.get(b or "", "?") for b in per_ep.elements())
        lat = [r[3] for r in recs if r[5] is None]
        errors = [r[5] for r in recs if r[5] is not None]
        bad_status = sum(1 for r in recs if r[5] is None and r[2] != 200)
        wrong = sum(n for c, n in per_cluster.items() if c not in allowed)
        kinds[kind] = {
            "requests": len(recs), "errors": len(errors), "non_200": bad_status,
            "first_error": errors[0] if errors else None,
            "route": dec.get("route"), "virtual_host": dec.get("virtual_host"),
            "allowed_clusters": sorted(allowed), "clusters": dict(per_cluster),
            "endpoints": dict(per_ep), "outside_route": wrong,
            "latency_us": {"p50": percentile(lat, 50), "p90": percentile(lat, 90),
                           "p99": percentile(lat, 99), "max": max(lat, default=math.nan)},
        }
        checks.append({"check": f"{kind}: every response from a cluster its route allows",
                       "ok": wrong == 0 and not errors and bad_status == 0,
                       "detail": f"{wrong} outside, {len(errors)} errors, {bad_status} non-200"})
    if "reviews-other" in kinds:
        k = kinds["reviews-other"]
        v1, v3 = k["clusters"].get("reviews-v1", 0), k["clusters"].get("reviews-v3", 0)
        n = v1 + v3
        # 5 sigma of a fair binomial: fails only when the split is really off
        tol = 5 * math.sqrt(n * 0.25) if n else 0
        checks.append({"check": "reviews: everything else split 50/50 between v1 and v3",
                       "ok": n > 0 and abs(v1 - n / 2) <= tol,
                       "detail": f"v1 {v1}, v3 {v3} (|v1 - n/2| <= {tol:.0f})"})
    if "ratings" in kinds:
        eps = kinds["ratings"]["endpoints"]
        slow = meta.get("slow_backend")
        if slow and eps:
            share = eps.get(slow, 0) / max(1, sum(eps.values()))
            checks.append({"check": f"ratings LEAST_REQUEST: slow {slow} gets less than 1/3",
                           "ok": share < 1 / 3, "detail": f"{share * 100:.1f}% of requests"})
    lat_all = [r[3] for r in records if r[5] is None]
    duration = (records[-1][4] - records[0][4]) if len(records) > 1 else 0.0
    return {
        "meta": dict(meta),
        "requests": len(records),
        "errors": sum(1 for r in records if r[5] is not None),
        "duration_s": round(duration, 3),
        "rps": round(len(records) / duration, 1) if duration > 0 else None,
        "latency_us": {"p50": percentile(lat_all, 50), "p90": percentile(lat_all, 90),
                       "p99": percentile(lat_all, 99)},
        "kinds": kinds,
        "endpoints": dict(sorted(endpoints.items())),
        "datapath_counters": dict(counters_delta or {}),
        "fast_path_share": fast_share,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


def render_text(s: Mapping[str, Any]) -> str:
    """The summary as the demo prints it."""
    out = [(f"{s['requests']} requests in {s['duration_s']:.1f} s "
           f"({s['rps'] or 0:.0f} req/s), {s['errors']} failed; latency p50 "
           f"{s['latency_us']['p50']:.0f} us, p90 {s['latency_us']['p90']:.0f} us, "
           f"p99 {s['latency_us']['p99']:.0f} us"), ""]
    out.append(f"{'request kind':<16} {'route':<15} {'cluster':<12} {'endpoint':<14} "
               f"{'count':>6}  {'p50 us':>7} {'p99 us':>7}")
    for kind, k in s["kinds"].items():
        first = True
        for ep, n in sorted(k["endpoints"].items()):
            cluster = s["meta"]["backend_cluster"].get(ep, "?")
            lead = (f"{kind:<16} {k['route']!s:<15}" if first else " " * 32)
            tail = (f"  {k['latency_us']['p50']:>7.0f} {k['latency_us']['p99']:>7.0f}"
                    if first else "")
            out.append(f"{lead} {cluster:<12} {ep:<14} {n:>6}{tail}")
            first = False
        if k["errors"]:
            out.append(f"{'':<32} {k['errors']} failed, e.g. {k['first_error']}")
    share = s.get("fast_path_share")
    out += ["", "fast path (routed in kernel): "
            + ("n/a" if share is None else f"{share * 100:.1f}% of requests"),
            ]
    if s.get("datapath_counters"):
        out.append("datapath counters: " + ", ".join(
            f"{k} {v}" for k, v in sorted(s["datapath_counters"].items()) if v))
    out.append("")
    for c in s["checks"]:
        out.append(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}: {c['detail']}")
    return "\n".join(out)


def plot_png(s: Mapping[str, Any], records: Sequence[Sequence[Any]]) -> bytes | None:
    """Requests per endpoint and latency CDFs per request kind, as PNG (None without
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    eps = s["endpoints"]
    names = sorted(eps, key=lambda e: (s["meta"]["backend_cluster"].get(e, ""), e))
    clusters = sorted({s["meta"]["backend_cluster"].get(e, "?") for e in names})
    colors = {c: plt.cm.tab10(i % 10) for i, c in enumerate(clusters)}
    ax1.bar(range(len(names)), [eps[n] for n in names],
            color=[colors[s["meta"]["backend_cluster"].get(n, "?")] for n in names])
    ax1.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax1.set_ylabel("requests")
    ax1.set_title("requests per endpoint (colour = cluster)")
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r[5] is None:
            by_kind[r[0]].append(r[3])
    for kind, lat in sorted(by_kind.items()):
        lat.sort()
        ax2.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=kind)
    ax2.set_xscale("log")
    ax2.set_xlabel("latency (us, client-measured, log scale)")
    ax2.set_ylabel("fraction of requests")
    ax2.set_title("latency CDF per request kind")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_report(out_dir: Path, s: Mapping[str, Any], records: Sequence[Sequence[Any]]) -> Path:
    """Write summary.json, requests.json, report.png (with matplotlib) and report.html;
    returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(s, indent=2, default=str) + "\n")
    (out_dir / "requests.json").write_text(json.dumps(
        {"fields": ["kind", "backend", "status", "latency_us", "time", "error"],
         "records": list(records)}))
    png = plot_png(s, records)
    img = ""
    if png is not None:
        (out_dir / "report.png").write_bytes(png)
        img = (f'<img alt="requests per endpoint and latency" src="data:image/png;base64,'
               f'{base64.b64encode(png).decode()}">')
    else:
        img = "<p>(matplotlib not installed: no plot)</p>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sockmesh demo</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}
pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}img{{max-width:100%}}</style></head>
<body><h1>sockmesh demo report</h1>
<p>bookinfo-like mesh on loopback: embedded xDS server, sockmesh agent with the eBPF datapath
on a demo cgroup, a keep-alive client in that cgroup calling services by VIP.</p>
{img}<h2>Summary</h2><pre>{html.escape(render_text(s))}</pre>
<h2>Raw data</h2><p><a href="summary.json">summary.json</a>,
<a href="requests.json">requests.json</a></p></body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path
