"""The demo's (and the e2e tests') application: keep-alive HTTP/1.1 calls to service VIPs.

It runs inside the mesh cgroup and knows nothing of sockmesh: it connects to
``VIP:9080`` and sends requests; the datapath routes each one.  Usage::

    python -m integration.demo.client --plan PLAN.json --out RESULTS.json

PLAN: ``{"kinds": {KIND: {"vip", "port", "host", "path", "headers"}}, "sequence": [KIND, ...],
"workers": N, "max_seconds": S, "until_file": PATH|null, "loop": bool}``.  Workers take the
sequence round-robin; with ``loop`` they repeat it until ``until_file`` exists or
``max_seconds`` passed (both bounds always apply).  Each worker keeps one keep-alive
connection per VIP.  Every second-tenth a line ``progress DONE TOTAL ERRORS`` goes to stdout.
RESULTS: one record per request ``[kind, backend, status, latency_us, t_wall, error]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

CONNECT_TIMEOUT = 5.0


class Worker(threading.Thread):
    """Sends its share of the plan over its own keep-alive connections."""

    def __init__(self, index: int, plan: dict[str, Any], stop: threading.Event) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.plan = plan
        self.stop_event = stop
        self.records: list[list[Any]] = []
        self.errors = 0
        self.conns: dict[tuple[str, int], http.client.HTTPConnection] = {}

    def _conn(self, vip: str, port: int) -> http.client.HTTPConnection:
        c = self.conns.get((vip, port))
        if c is None:
            c = http.client.HTTPConnection(vip, port, timeout=CONNECT_TIMEOUT)
            self.conns[(vip, port)] = c
        return c

    def one(self, kind: str) -> None:
        spec = self.plan["kinds"][kind]
        vip, port = spec["vip"], int(spec["port"])
        headers = {"Host": spec["host"], **spec.get("headers", {})}
        t_wall = time.time()
        t0 = time.perf_counter()
        backend, status, error = None, 0, None
        try:
            c = self._conn(vip, port)
            c.request("GET", spec.get("path", "/"), headers=headers)
            resp = c.getresponse()
            body = resp.read()
            status = resp.status
            backend = resp.getheader("x-backend") or body.decode("latin-1")[:64]
            if resp.will_close:
                c.close()
                self.conns.pop((vip, port), None)
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.errors += 1
            broken = self.conns.pop((vip, port), None)
            if broken is not None:
                broken.close()
        latency = (time.perf_counter() - t0) * 1e6
        self.records.append([kind, backend, status, round(latency, 1), t_wall, error])

    def run(self) -> None:
        seq = self.plan["sequence"]
        n = int(self.plan.get("workers", 1))
        mine = seq[self.index::n] or seq[:1]
        loop = bool(self.plan.get("loop"))
        i = 0
        while not self.stop_event.is_set():
            if i >= len(mine):
                if not loop:
                    break
                i = 0
            self.one(mine[i])
            i += 1
        for c in self.conns.values():
            c.close()


def run_plan(plan: dict[str, Any], progress: bool = True) -> list[list[Any]]:
    """Run ``plan``; returns the request records of all workers."""
    stop = threading.Event()
    workers = [Worker(i, plan, stop) for i in range(int(plan.get("workers", 1)))]
    total = 0 if plan.get("loop") else len(plan["sequence"])
    deadline = time.monotonic() + float(plan.get("max_seconds", 60))
    until = plan.get("until_file")
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        if time.monotonic() > deadline or (until and os.path.exists(until)):
            stop.set()
        for w in workers:
            w.join(timeout=0.1 / len(workers))
        if progress:
            done = sum(len(w.records) for w in workers)
            errors = sum(w.errors for w in workers)
            print(f"progress {done} {total} {errors}", flush=True)
    stop.set()
    records = [r for w in workers for r in w.records]
    records.sort(key=lambda r: r[4])
    return records


def main(argv: list[str] | None = None) -> int:
    """Read the plan, run it, write the records."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    records = run_plan(plan, progress=not args.quiet)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(args.out)  # atomic: the reader never sees half a file
    return 0


if __name__ == "__main__":
    sys.exit(main())
