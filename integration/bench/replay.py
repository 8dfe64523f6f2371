"""Replay a list of requests in order, one keep-alive connection per target; record answers.

The application side of `sockmesh ab`: the same program is the client of Envoy (outside the
mesh cgroup) and of sockmesh (started inside it, so the datapath routes its sockets).
Usage::

    python -m integration.bench.replay --plan PLAN.json --out RESULTS.json

PLAN: ``{"targets": {KEY: [HOST, PORT]}, "requests": [{"target": KEY, "method", "authority",
"path", "headers": [[name, value], ...]}], "max_seconds": S}``.  Targets are loopback only.
RESULTS: one record per request ``[status, x-backend, location, latency_us, error]``; the
run stops after ``max_seconds`` whatever is left (missing records are reported as such).
A line ``progress DONE TOTAL`` goes to stdout every 200 requests.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import sys
import time
from pathlib import Path
from typing import Any

TIMEOUT_S = 10.0


class Replayer:
    """Keep-alive connections by target; sends one request at a time."""

    def __init__(self, targets: dict[str, tuple[str, int]]) -> None:
        for host, _ in targets.values():
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError(f"replay targets are loopback only, not {host}")
        self.targets = targets
        self.conns: dict[str, http.client.HTTPConnection] = {}

    def send(self, req: dict[str, Any]) -> list[Any]:
        """Send ``req``; returns its record."""
        key = req["target"]
        t0 = time.perf_counter()
        for attempt in range(2):
            conn = self.conns.get(key)
            if conn is None:
                host, port = self.targets[key]
                conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
                self.conns[key] = conn
            try:
                conn.putrequest(req.get("method", "GET"), req.get("path", "/"),
                                skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", req.get("authority", ""))
                for name, value in req.get("headers", []):
                    conn.putheader(name, value)
                conn.endheaders()
                resp = conn.getresponse()
                resp.read()
                rec = [resp.status, resp.getheader("x-backend"), resp.getheader("location"),
                       round((time.perf_counter() - t0) * 1e6, 1), None]
                if resp.will_close:
                    self._drop(key)
                return rec
            except (OSError, http.client.HTTPException) as exc:
                self._drop(key)
                if attempt:
                    return [0, None, None, round((time.perf_counter() - t0) * 1e6, 1),
                            f"{type(exc).__name__}: {exc}"]
                t0 = time.perf_counter()  # a stale keep-alive connection: once more
        raise AssertionError("unreachable")

    def _drop(self, key: str) -> None:
        conn = self.conns.pop(key, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for key in list(self.conns):
            self._drop(key)


def replay(plan: dict[str, Any], progress: bool = True) -> list[list[Any]]:
    """Run ``plan``; the records in request order (cut short at ``max_seconds``)."""
    targets = {k: (str(v[0]), int(v[1])) for k, v in plan["targets"].items()}
    rp = Replayer(targets)
    deadline = time.monotonic() + float(plan.get("max_seconds", 120))
    out: list[list[Any]] = []
    total = len(plan["requests"])
    try:
        for i, req in enumerate(plan["requests"]):
            if time.monotonic() > deadline:
                break
            out.append(rp.send(req))
            if progress and (i + 1) % 200 == 0:
                print(f"progress {i + 1} {total}", flush=True)
    finally:
        rp.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Read the plan, replay it, write the records."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    records = replay(json.loads(args.plan.read_text()))
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
