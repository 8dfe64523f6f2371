"""What the machine and our processes cost: CPU from /proc/stat, RSS, BPF map memory."""

from __future__ import annotations

import cProfile
import json
import os
import platform
import pstats
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _busy_total(fields: list[int]) -> tuple[int, int]:
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


@dataclass(frozen=True)
class CpuSample:
    """Machine-wide CPU jiffies at one instant (all CPUs, user+system+irq+softirq...)."""

    busy: int
    total: int
    softirq: int
    at: float
    per_cpu: tuple[tuple[int, int], ...] = ()  # (busy, total) of cpu0, cpu1, ...

    @classmethod
    def now(cls) -> CpuSample:
        """Read the ``cpu`` and ``cpuN`` lines of /proc/stat."""
        with open("/proc/stat") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu")]
        fields = [int(x) for x in lines[0][1:]]
        busy, total = _busy_total(fields)
        per = tuple(_busy_total([int(x) for x in ln[1:]]) for ln in lines[1:])
        return cls(busy=busy, total=total, softirq=fields[6], at=time.monotonic(),
                   per_cpu=per)

    def busy_share_since(self, earlier: CpuSample) -> list[float]:
        """Per CPU, the share of the time between the samples it was busy."""
        return [(b - b0) / max(t - t0, 1) for (b, t), (b0, t0) in
                zip(self.per_cpu, earlier.per_cpu, strict=True)]

    def busy_seconds_since(self, earlier: CpuSample) -> float:
        """CPU seconds (all CPUs, kernel and softirq included) spent between the samples."""
        return (self.busy - earlier.busy) / CLK_TCK

    def softirq_seconds_since(self, earlier: CpuSample) -> float:
        """Softirq CPU seconds between the samples."""
        return (self.softirq - earlier.softirq) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def bpf_map_sizes(pid: int) -> dict[int, int]:
    """map_id -> memlock bytes of every BPF map ``pid`` holds open (/proc/PID/fdinfo)."""
    seen: dict[int, int] = {}
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        if "map_id:" not in text:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            seen[int(fields["map_id"])] = int(fields.get("memlock", "0"))
        except (KeyError, ValueError):
            continue
    return seen


def largest_maps(pids: list[int], top: int = 6) -> list[dict[str, Any]]:
    """The ``top`` largest BPF maps ``pids`` hold: name and memlock bytes (names: bpftool)."""
    sizes: dict[int, int] = {}
    for pid in pids:
        sizes.update(bpf_map_sizes(pid))
    try:
        p = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True,
                           timeout=30, check=True)
        names = {int(m["id"]): str(m.get("name", "?")) for m in json.loads(p.stdout)}
    except (OSError, subprocess.SubprocessError, ValueError):
        names = {}
    rows = sorted(sizes.items(), key=lambda kv: -kv[1])[:top]
    return [{"name": names.get(i, str(i)), "bytes": b} for i, b in rows]


def bpf_map_memory(pid: int) -> tuple[int, int]:
    """(maps, bytes): BPF maps ``pid`` holds open and their ``memlock`` sum, each map once.

    Read from /proc/PID/fdinfo, which the kernel fills with ``map_id`` and ``memlock`` for
    every map fd (the same figure ``bpftool map show`` prints as memlock).
    """
    seen = bpf_map_sizes(pid)
    return len(seen), sum(seen.values())


def machine() -> dict[str, object]:
    """nproc, kernel, CPU model, load average and memory: the machine the run was on."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu_model": model,
            "mem_total_mb": mem_kb // 1024, "loadavg": list(os.getloadavg())}


def version_of(argv: list[str]) -> str:
    """First line a tool prints about its version (nginx and wrk print to stderr)."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (p.stdout + p.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def pin_to_cpu(pid: int, cpu: str) -> None:
    """Pin every thread of ``pid`` (a process we started) to ``cpu``."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True,
                   capture_output=True)


def bpf_program_stats(pid: int) -> dict[int, tuple[int, int]]:
    """prog_id -> (run_cnt, run_time_ns) of the BPF programs ``pid`` holds open.

    From /proc/PID/fdinfo, so only our own programs count (other datapaths loaded on the
    machine at the same time are not mixed in).  The kernel counts only while
    ``kernel.bpf_stats_enabled`` is 1 (see :func:`bpf_stats_enabled`).
    """
    out: dict[int, tuple[int, int]] = {}
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        if "prog_id:" not in text:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            out[int(fields["prog_id"])] = (int(fields.get("run_cnt", "0")),
                                          int(fields.get("run_time_ns", "0")))
        except (KeyError, ValueError):
            continue
    return out


def bpf_program_names(ids: list[int]) -> dict[int, str]:
    """prog_id -> name (bpftool)."""
    try:
        p = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                           timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return {}
    wanted = set(ids)
    return {int(x["id"]): str(x.get("name", "?")) for x in json.loads(p.stdout)
            if int(x.get("id", -1)) in wanted}


class bpf_stats_enabled:
    """Turn on kernel.bpf_stats_enabled for the block; restore the old value after."""

    PATH = Path("/proc/sys/kernel/bpf_stats_enabled")

    def __enter__(self) -> None:
        self.old = self.PATH.read_text().strip()
        self.PATH.write_text("1")

    def __exit__(self, *exc: object) -> None:
        self.PATH.write_text(self.old)


def profile_top(fn: Callable[[], Any], top: int = 12) -> list[dict[str, Any]]:
    """Run ``fn`` under cProfile; the functions with the most cumulative time (where the
    time goes), as ``{"function", "cumulative_s", "own_s", "calls"}``."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    st = pstats.Stats(prof)
    rows = []
    for (file, line, name), (_, calls, own, cum, _) in st.stats.items():  # type: ignore[attr-defined]
        parts = Path(file).parts
        here = next((i for i, p in enumerate(parts) if p in ("bpf", "translator",
                                                             "integration")), None)
        where = "/".join(parts[here:]) if here is not None else Path(file).name
        rows.append({"function": f"{where}:{line}({name})", "cumulative_s": round(cum, 4),
                     "own_s": round(own, 4), "calls": calls})
    rows.sort(key=lambda r: -r["cumulative_s"])
    keep = [r for r in rows if not r["function"].startswith(("~", "<"))]
    return keep[:top]
