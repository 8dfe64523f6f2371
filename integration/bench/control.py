"""Control-plane figures: an Istio-sized snapshot into the kernel, one endpoint change, route
updates in a row, and the memory of an agent and of an Envoy sidecar holding that snapshot.

The snapshot is integration/bench/istio_snapshot.py's generator (Istio's shapes and sizes: ~3,200
clusters, ~3,000 endpoint assignments, 551 listeners, 254 route configs).  Its endpoint
addresses (10.x.y.z) are rewritten to 127.x.y.z before anything sees them, so the agent's
pools only ever connect to loopback (nothing listens there: connects are refused at once).
Listeners get ``bind_to_port: false`` (as Istio's outbound listeners have) so Envoy binds
nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bpf.datapath import Datapath
from integration import cgroups
from integration.bench.envoy_compat import envoy_loadable
from integration.bench.istio_snapshot import snapshot as istio_snapshot_of
from integration.bench.scenarios import bench_tables, merged, update_rule
from integration.bench.system import bpf_map_sizes, largest_maps, profile_top, rss_bytes
from integration.envoy import EnvoyProcess, ads_bootstrap
from integration.preflight import BPFFS
from integration.processes import end
from translator import TableBuilder
from translator.resources import (
    CLUSTER_LOAD_ASSIGNMENT,
    ResourceSet,
    parse_resource,
    to_json,
)

AGENT_PREFIX = "sockmesh-bench-agent"
LOAD_TIMEOUT_S = 120.0
AGENT_STOP_S = 15.0  # the agent detaches and stops its socket keeper on SIGTERM


def istio_snapshot(seed: int = 1) -> ResourceSet:
    """The Istio-sized snapshot (integration/bench/istio_snapshot.py), endpoints on loopback."""
    rs: ResourceSet = istio_snapshot_of(seed)[0]
    for cla in rs.endpoints.values():
        for loc in cla.endpoints:
            for lb in loc.lb_endpoints:
                sa = lb.endpoint.address.socket_address
                if not sa.address.startswith("127."):
                    sa.address = "127." + sa.address.split(".", 1)[1]
    for lst in rs.listeners.values():
        lst.bind_to_port.value = False
    return rs


def envoy_loadable_set(rs: ResourceSet) -> ResourceSet:
    """``rs`` with name-only extensions given their typed_config (Envoy 1.40 needs them)."""
    out = ResourceSet()
    for _, _, msg in rs.items():
        out.add(parse_resource(envoy_loadable(to_json(msg))))
    return out


def snapshot_sizes(rs: ResourceSet) -> dict[str, int]:
    """How big the snapshot is."""
    return {"listeners": len(rs.listeners), "route_configs": len(rs.route_configs),
            "clusters": len(rs.clusters), "endpoint_assignments": len(rs.endpoints),
            "endpoints": sum(len(lb.lb_endpoints) for c in rs.endpoints.values()
                             for lb in c.endpoints)}


def _summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"n": len(s), "median_ms": statistics.median(s) * 1e3,
            "p99_ms": s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3, "max_ms": s[-1] * 1e3,
            "total_s": sum(s)}


def route_updates_small(dp: Datapath, endpoints: list[tuple[str, int]], n: int,
                        say: Callable[[str], None]) -> dict[str, Any]:
    """``n`` route updates in a row with only the benchmark's own tables loaded."""
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        dp.apply(bench_tables(endpoints, (update_rule(i),)))
        samples.append(time.perf_counter() - t0)
    dp.apply(bench_tables(endpoints))
    out = _summary(samples)
    say(f"{n} route updates in a row (benchmark tables only): {out['total_s']:.2f} s, median "
        f"{out['median_ms']:.2f} ms each")
    return out


def kernel_figures(dp: Datapath, rs: ResourceSet, endpoints: list[tuple[str, int]],
                   endpoint_changes: int, route_updates: int, budget_s: float,
                   say: Callable[[str], None]) -> dict[str, Any]:
    """Snapshot apply, endpoint changes and route updates on ``dp``, with the snapshot loaded.

    Each figure is wall time of what the agent does: the translator's incremental apply (where
    the change comes through xDS) and Datapath.apply, which returns after the last map write.
    Endpoint changes and route updates stop at their count or after ``budget_s`` each.
    """
    out: dict[str, Any] = {"snapshot": snapshot_sizes(rs)}
    bench = bench_tables(endpoints)
    t0 = time.perf_counter()
    builder = TableBuilder(rs)
    istio = builder.tables()
    t1 = time.perf_counter()
    stats = dp.apply(merged(bench, istio))
    t2 = time.perf_counter()
    out["snapshot_apply"] = {"translate_s": t1 - t0, "kernel_s": t2 - t1, "total_s": t2 - t0,
                             "map_writes": stats["writes"], "services": len(istio.services),
                             "clusters": len(istio.clusters)}
    say(f"Istio-sized snapshot: translated in {t1 - t0:.2f} s, into the kernel in "
        f"{t2 - t1:.2f} s ({stats['writes']} map writes)")

    # one endpoint change = a new ClusterLoadAssignment for one cluster, through the agent's
    # incremental translator and the datapath
    names = sorted(rs.endpoints)
    samples, writes = [], []
    deadline = time.monotonic() + budget_s
    for i in range(endpoint_changes):
        if i and time.monotonic() > deadline:
            break
        name = names[(i * 97) % len(names)]
        cla = to_json(rs.endpoints[name])
        lbs = cla["endpoints"][0]["lb_endpoints"]
        sa = lbs[0]["endpoint"]["address"]["socket_address"]
        sa["port_value"] = 20000 + i  # a new endpoint (loopback) in place of the first
        msg = parse_resource(cla)
        t0 = time.perf_counter()
        builder.apply(CLUSTER_LOAD_ASSIGNMENT, name, msg)
        st = dp.apply(merged(bench, builder.tables()))
        samples.append(time.perf_counter() - t0)
        writes.append(st["writes"])
    out["endpoint_change"] = {**_summary(samples), "map_writes_max": max(writes)}

    def one_change() -> None:
        name = names[0]
        cla = to_json(rs.endpoints[name])
        cla["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "port_value"] = 30000
        builder.apply(CLUSTER_LOAD_ASSIGNMENT, name, parse_resource(cla))
        dp.apply(merged(bench, builder.tables()))

    out["endpoint_change"]["profile"] = profile_top(one_change)
    say(f"one endpoint change: median {out['endpoint_change']['median_ms']:.2f} ms, p99 "
        f"{out['endpoint_change']['p99_ms']:.2f} ms over {len(samples)}")

    istio = builder.tables()
    samples = []
    every = max(1, route_updates // 10)
    deadline = time.monotonic() + budget_s
    for i in range(route_updates):
        if i and time.monotonic() > deadline:
            say(f"  route updates: stopped after {i} ({budget_s:g} s budget)")
            break
        t0 = time.perf_counter()
        dp.apply(merged(bench_tables(endpoints, (update_rule(i),)), istio))
        samples.append(time.perf_counter() - t0)
        if (i + 1) % every == 0:
            say(f"  route updates {i + 1}/{route_updates}")
    out["route_updates"] = _summary(samples)
    out["route_updates"]["profile"] = profile_top(
        lambda: dp.apply(merged(bench_tables(endpoints, (update_rule(-1),)), istio)))
    dp.apply(merged(bench, istio))
    say(f"{len(samples)} route updates in a row: {sum(samples):.2f} s, median "
        f"{out['route_updates']['median_ms']:.2f} ms each")
    return out


class _Loop:
    """An asyncio loop in a thread (the embedded ADS server lives there)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-ads",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _poll(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = cond()
            if v:
                return v
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def memory_figures(rs: ResourceSet, workdir: Path, pkg_root: str,
                   say: Callable[[str], None], envoy_binary: Path | None = None
                   ) -> dict[str, Any]:
    """RSS of `sockmesh run` (+ its BPF maps) and of an Envoy sidecar, both fed ``rs`` over ADS
    by the embedded xDS server; also the agent's own apply time for the snapshot."""
    from integration.xds_server import AdsServer

    loop = _Loop()
    server = AdsServer(envoy_loadable_set(rs))
    cg: Path | None = None
    agent: subprocess.Popen[str] | None = None
    envoy: EnvoyProcess | None = None
    pin: Path | None = None
    keeper_pid: int | None = None
    n_clusters = len(rs.clusters)
    try:
        port = loop.run(server.start("127.0.0.1", 0))
        say(f"memory: embedded xDS server on 127.0.0.1:{port} serving the Istio-sized "
            "snapshot to an Envoy sidecar and to `sockmesh run`")
        envoy = EnvoyProcess(ads_bootstrap("sidecar~127.0.0.1~bench.default~default.svc."
                                           "cluster.local", port), workdir / "envoy-istio",
                             binary=envoy_binary, wait_ready=True,
                             start_timeout=LOAD_TIMEOUT_S)
        envoy.start()

        def envoy_loaded() -> bool:
            assert envoy is not None
            active = envoy.stat("cluster_manager.active_clusters") or 0
            return int(active) >= n_clusters

        _poll(envoy_loaded, LOAD_TIMEOUT_S, "Envoy to load every cluster")
        assert envoy.pid is not None
        envoy_rss = rss_bytes(envoy.pid)
        envoy.stop()
        envoy = None
        say(f"memory: Envoy sidecar with {n_clusters} clusters: RSS {envoy_rss / 2**20:.1f} MiB")

        for path in cgroups.sweep(AGENT_PREFIX):
            say(f"removed leftover {path}")
        cg = cgroups.create(AGENT_PREFIX)
        pin = BPFFS / cg.name
        agent = subprocess.Popen(
            [sys.executable, "-m", "integration.cli", "run", "--xds-server",
             f"127.0.0.1:{port}", "--cgroup", str(cg), "--pin-dir", str(pin),
             "--metrics-addr", "127.0.0.1:0"], cwd=pkg_root, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        assert agent.stdout is not None
        admin = _agent_admin(agent)

        def applied() -> dict[str, Any] | None:
            with urllib.request.urlopen(f"http://{admin}/status", timeout=5) as r:
                st = json.loads(r.read())
            rec = st["config"]["applied"]
            return rec if rec and rec["clusters"] >= n_clusters else None

        rec = _poll(applied, LOAD_TIMEOUT_S, "the agent to apply the snapshot")
        # the agent's datapath may live in a socket-keeper process it started (its sockets
        # outlive an agent restart): count that process's memory and maps too
        with urllib.request.urlopen(f"http://{admin}/status", timeout=5) as r:
            keeper = _find_key(json.loads(r.read()), "socket_keeper_pid")
        keeper_pid = int(keeper) if keeper else None
        pids = [agent.pid] + ([keeper_pid] if keeper_pid and keeper_pid != agent.pid else [])
        rss = {pid: rss_bytes(pid) for pid in pids}
        maps: dict[int, int] = {}
        for pid in pids:
            maps.update(bpf_map_sizes(pid))
        maps.update(pinned_map_sizes(pin))  # also those no process holds open
        agent_rss, map_bytes = sum(rss.values()), sum(maps.values())
        say(f"memory: sockmesh agent RSS {agent_rss / 2**20:.1f} MiB "
            f"({len(pids)} processes) + {len(maps)} BPF maps {map_bytes / 2**20:.1f} MiB; "
            f"its own apply of the snapshot {rec['ms']:.0f} ms")
        return {"envoy_sidecar_rss": envoy_rss, "agent_rss": agent_rss,
                "agent_processes": {"agent": rss[agent.pid],
                                    "socket_keeper": rss.get(keeper_pid or -1)},
                "bpf_maps": len(maps), "bpf_map_bytes": map_bytes,
                "agent_apply_ms": rec["ms"], "clusters": n_clusters,
                "largest_maps": largest_maps(pids)}
    finally:
        if agent is not None:
            end(agent, AGENT_STOP_S)
        if keeper_pid is not None:
            _stop_pid(keeper_pid)  # the agent stops it on SIGTERM; make sure
        if envoy is not None:
            envoy.stop()
        loop.run(server.stop(grace=0.5))
        loop.close()
        if pin is not None and pin.exists():
            shutil.rmtree(pin, ignore_errors=True)
        if cg is not None:
            cgroups.remove(cg)


def pinned_map_sizes(pin_dir: Path) -> dict[int, int]:
    """map_id -> memlock bytes of every BPF map pinned under ``pin_dir``: the socket keeper
    holds open only the maps it uses (not the programs' own, like the tail-call arrays)."""
    from bpf import maps as bpf_maps

    out: dict[int, int] = {}
    for path in sorted(pin_dir.iterdir()):
        try:
            fd = bpf_maps.obj_get(path)
        except OSError:
            continue
        try:
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        finally:
            os.close(fd)
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        if "map_id" in fields:  # programs are pinned here too
            out[int(fields["map_id"])] = int(fields.get("memlock", "0"))
    return out


def _agent_admin(agent: subprocess.Popen[str]) -> str:
    """Read the agent's start line (``admin http://HOST:PORT/status``) from its stdout."""
    assert agent.stdout is not None
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    seen: list[str] = []
    timer = threading.Timer(LOAD_TIMEOUT_S, agent.kill)  # readline blocks: bound it
    timer.start()
    try:
        while time.monotonic() < deadline:
            line = agent.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(r"admin http://([\d.]+:\d+)/status", line)
            if m:
                threading.Thread(target=_drain, args=(agent,), daemon=True).start()
                return m.group(1)
    finally:
        timer.cancel()
    raise RuntimeError("the agent did not start:\n" + "".join(seen[-20:]))


def _find_key(obj: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a JSON document."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def _stop_pid(pid: int) -> None:
    """Terminate a process our agent started (by its PID) if it is still there."""
    deadline = time.monotonic() + 10
    try:
        os.kill(pid, signal.SIGTERM)
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for _ in proc.stdout:
        pass


def main(argv: list[str] | None = None) -> int:
    """Only the kernel control-plane figures and the datapath's map memory, on a datapath
    attached to a fresh child cgroup (no backends, no Envoy):
    ``python -m integration.bench.control [--endpoint-changes N] [--route-updates N]``."""
    import argparse

    from integration.bench.system import bpf_map_memory

    p = argparse.ArgumentParser(prog="python -m integration.bench.control",
                                description=main.__doc__)
    p.add_argument("--endpoint-changes", type=int, default=100)
    p.add_argument("--route-updates", type=int, default=1000)
    p.add_argument("--budget-s", type=float, default=60.0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    say = lambda text: print(text, flush=True)
    prefix = "sockmesh-bench-control"
    for path in cgroups.sweep(prefix):
        say(f"removed leftover {path}")
    cg = cgroups.create(prefix)
    dp: Datapath | None = None
    try:
        dp = Datapath(cg, BPFFS / cg.name)
        dp.load()
        eps = [("127.0.0.1", 1)]  # nothing listens: pools stay empty
        dp.apply(bench_tables(eps))
        out = kernel_figures(dp, istio_snapshot(), eps, args.endpoint_changes,
                             args.route_updates, args.budget_s, say)
        n_maps, map_bytes = bpf_map_memory(os.getpid())
        out["memory"] = {"bpf_maps": n_maps, "bpf_map_bytes": map_bytes,
                         "largest_maps": largest_maps([os.getpid()]),
                         "rss": rss_bytes(os.getpid())}
        say(f"{n_maps} BPF maps {map_bytes / 2**20:.1f} MiB; process RSS "
            f"{out['memory']['rss'] / 2**20:.1f} MiB; largest: " + ", ".join(
                f"{m['name']} {m['bytes'] / 2**20:.1f}" for m in out["memory"]["largest_maps"]))
        if args.json is not None:
            args.json.write_text(json.dumps(out, indent=1, default=str))
        return 0
    finally:
        if dp is not None:
            dp.close()
        pin = BPFFS / cg.name
        if pin.exists():
            shutil.rmtree(pin, ignore_errors=True)
        cgroups.remove(cg)


if __name__ == "__main__":
    sys.exit(main())
