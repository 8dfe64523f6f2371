"""wrk runs: saturation at a fixed number of keep-alive connections, and a paced low rate.

The low-rate run is wrk with a Lua script whose ``delay()`` makes each connection wait a
fixed time before its next request (wrk2 is not packaged here); with one connection and a
1 ms delay the offered rate is just under 1,000 requests/s, far below saturation for every
scenario, so the latency it measures is the per-request cost without queueing.
wrk's latency histogram gives p50/p75/p90/p99; each run is bounded by ``-d`` and a timeout.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_UNIT = {"us": 1.0, "ms": 1000.0, "s": 1e6}
PACE_LUA = "-- sockmesh bench: pace each connection\nfunction delay()\n  return {ms}\nend\n"


Spawn = Callable[..., subprocess.Popen[bytes]]  # starts a process (e.g. inside a cgroup)


class LoadError(RuntimeError):
    """wrk failed or saw errors."""


@dataclass
class WrkResult:
    """One wrk run."""

    connections: int
    seconds: float
    requests: int
    rps: float
    p50_us: float
    p90_us: float
    p99_us: float
    errors: int

    def to_json(self) -> dict[str, Any]:
        """As plain data."""
        return asdict(self)


def wrk_binary() -> str:
    """The wrk binary."""
    found = shutil.which("wrk")
    if found is None:
        raise LoadError("wrk not found (apt-get install wrk)")
    return found


def parse_wrk(text: str, connections: int, seconds: float) -> WrkResult:
    """Parse ``wrk --latency`` output."""
    pct: dict[str, float] = {}
    for p in ("50", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        if not m:
            raise LoadError(f"wrk output not understood:\n{text}")
        pct[p] = float(m.group(1)) * _UNIT[m.group(2)]
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    rps = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", text)
    requests = int(m.group(1)) if m else 0
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    return WrkResult(connections, seconds, requests, rps, pct["50"], pct["90"], pct["99"],
                     errors)


def run_wrk(url: str, *, connections: int, seconds: float, cpu: str | None,
            spawn: Spawn | None = None,
            pace_ms: int | None = None, workdir: Path | None = None) -> WrkResult:
    """One wrk run (1 thread) against ``url``; ``spawn`` starts it (e.g. inside a cgroup).

    ``pace_ms`` paces each connection with a Lua ``delay()`` (needs ``workdir``).
    """
    seconds = max(1, round(seconds))  # wrk takes whole seconds
    argv = [wrk_binary(), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "2s"]
    if pace_ms is not None:
        assert workdir is not None
        script = workdir / f"pace-{pace_ms}ms.lua"
        script.write_text(PACE_LUA.format(ms=pace_ms))
        argv += ["-s", str(script)]
    argv.append(url)
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    start = spawn or subprocess.Popen
    proc = start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)
        raise LoadError(f"wrk did not finish within {seconds + 30:g} s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise LoadError(f"wrk exited {proc.returncode}:\n{text}")
    return parse_wrk(text, connections, seconds)


def measured_round(url: str, *, spawn: Spawn | None,
                   connections: int, seconds: float, warm_s: float, low_s: float,
                   pace_ms: int, cpu: str, workdir: Path, background_s: float = 1.0,
                   counters: Callable[[], dict[str, int]] | None = None,
                   paced: bool = True) -> dict[str, Any]:
    """One scenario's round as ``sockmesh bench`` measures it: a warm-up, the background
    (cores busy without our load over ``background_s``), a saturation run with machine CPU
    from /proc/stat around it, then a paced low-rate run (``low_rate``; ``paced=False``
    leaves it out: ``sockmesh bench`` measures its low rate with integration/bench/paired.py,
    all scenarios interleaved).  ``counters`` (the datapath's) are read around the
    saturation run and the low-rate run separately."""
    from integration.bench.system import CpuSample

    run_wrk(url, connections=connections, seconds=warm_s, cpu=cpu, spawn=spawn)
    b0 = CpuSample.now()
    time.sleep(background_s)
    b1 = CpuSample.now()
    background = b1.busy_seconds_since(b0) / (b1.at - b0.at)
    read = counters or dict
    before = read()
    c0 = CpuSample.now()
    sat = run_wrk(url, connections=connections, seconds=seconds, cpu=cpu, spawn=spawn)
    c1 = CpuSample.now()
    after = read()
    out: dict[str, Any] = {}
    if paced:
        out["low_rate"] = run_wrk(url, connections=1, seconds=low_s, cpu=cpu, spawn=spawn,
                                  pace_ms=pace_ms, workdir=workdir).to_json()
        out["counters_low_rate"] = counter_delta(after, read())
    cpu_s = c1.busy_seconds_since(c0)
    n = max(sat.requests, 1)
    out |= {"saturation": sat.to_json(), "cpu_s": cpu_s,
            "softirq_s": c1.softirq_seconds_since(c0),
            "cpu_busy_share": c1.busy_share_since(c0), "cpu_s_per_10k": cpu_s / n * 1e4,
            "background_cpu_per_s": background,
            "cpu_s_per_10k_net": max(cpu_s - background * (c1.at - c0.at), 0.0) / n * 1e4,
            "counters": counter_delta(before, after)}
    return out


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that moved between two readings."""
    return {c: v - before.get(c, 0) for c, v in after.items() if v - before.get(c, 0)}
