"""Benchmark (not a test): keep-alive HTTP/1.1 latency and throughput through
  1. a direct connection to the backend,
  2. the sockmesh kernel datapath (service VIP -> splice -> pooled connection),
  3. a real Envoy, one hop, with the same route,
and the ratio of added p50 latency, sockmesh vs Envoy (target <= 0.1).

Backend: nginx (one worker, `return 200`).  Load: wrk, one thread, one keep-alive
connection, a fixed duration per mode, run inside a dedicated test cgroup (the datapath is
attached only there).  CPU pinning on a 2-core machine: wrk on CPU 1; nginx and Envoy on
CPU 0.  Run as root from the repository root:

    .venv/bin/python scripts/bench_datapath.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bpf.datapath import Datapath
from tests.support.cgroup import pin_dir_for, spawn_in_cgroup, sweep_leftovers, test_cgroup
from tests.support.envoy import EnvoyProcess
from translator.tables import (
    Action,
    ActionKind,
    Cluster,
    Endpoint,
    LbPolicy,
    PathKind,
    PathMatch,
    RouteTable,
    Rule,
    Service,
    ServiceKind,
    Tables,
    VirtualHost,
)

VIP, VIP_PORT = "127.10.9.1", 8090
CLIENT_CPU, SERVER_CPU = "1", "0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx.err warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok"; }}
  }}
}}
""")
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, "nginx", "-p", str(workdir), "-c",
                             str(conf)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start")


def envoy_bootstrap(backend_port: int) -> dict:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "route_config": {"name": "bench", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "static_resources": {
            "listeners": [{"name": "bench", "address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}]}],
            "clusters": [{"name": "backend", "type": "STATIC", "connect_timeout": "1s",
                          "load_assignment": {"cluster_name": "backend", "endpoints": [{
                              "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                                  "address": "127.0.0.1", "port_value": backend_port}}}}]}]}}],
        }
    }


def tables(backend_port: int) -> Tables:
    rule = Rule(0, "all", PathMatch(PathKind.PREFIX, "/"),
                action=Action(ActionKind.CLUSTER, cluster="backend"))
    rt = RouteTable("bench", (VirtualHost("all", ("*",), (rule,)),))
    return Tables(services=(Service(VIP, VIP_PORT, ServiceKind.HTTP, route_table="bench"),),
                  route_tables={"bench": rt},
                  clusters={"backend": Cluster("backend", LbPolicy.ROUND_ROBIN,
                                               (Endpoint("127.0.0.1", backend_port),))})


_UNIT = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def wrk(cgroup: Path, url: str, seconds: int) -> dict[str, float]:
    """One wrk run (1 thread, 1 keep-alive connection) inside the cgroup."""
    proc = spawn_in_cgroup(["taskset", "-c", CLIENT_CPU, "wrk", "-t1", "-c1", f"-d{seconds}s",
                            "--latency", url], cgroup, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=seconds + 30)
    text = out.decode()
    res: dict[str, float] = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        if not m:
            raise RuntimeError(f"wrk output not understood:\n{text}")
        res[f"p{pct}_us"] = float(m.group(1)) * _UNIT[m.group(2)]
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", text)
    res["requests"] = float(m.group(1)) if m else 0.0
    if "Non-2xx" in text or "Socket errors" in text:
        raise RuntimeError(f"wrk saw errors:\n{text}")
    return res


def program_stats(pin_dir: Path) -> list[tuple[str, int, int]]:
    """(name, run count, total ns) of this datapath's attached programs (pinned under
    pin_dir); a tail-called pass is accounted to the program that was attached."""
    rows = []
    for pin in sorted(pin_dir.glob("prog_*")):
        out = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(pin)],
                             capture_output=True, text=True, check=True).stdout
        p = json.loads(out)
        rows.append((p["name"], int(p.get("run_cnt", 0)), int(p.get("run_time_ns", 0))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="duration of each wrk run")
    ap.add_argument("--rounds", type=int, default=2, help="runs per mode (best p50 kept)")
    ap.add_argument("--prog-stats", action="store_true",
                    help="enable kernel.bpf_stats_enabled and print ns per program run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (BPF, cgroup v2)")
    sweep_leftovers()
    with tempfile.TemporaryDirectory(prefix="sockmesh-bench-") as tmp, test_cgroup() as cg:
        work = Path(tmp)
        nginx, nport = start_nginx(work)
        dp = Datapath(cg, pin_dir_for(cg), warm=2)
        envoy = EnvoyProcess(envoy_bootstrap(nport), work / "envoy")  # one worker thread
        try:
            dp.load()
            dp.apply(tables(nport))
            envoy.start()
            subprocess.run(["taskset", "-a", "-p", "-c", SERVER_CPU, str(envoy.pid)],
                           check=True, capture_output=True)
            eport = envoy.listener_port("bench")
            modes = {"direct": f"http://127.0.0.1:{nport}/",
                     "sockmesh": f"http://{VIP}:{VIP_PORT}/",
                     "envoy": f"http://127.0.0.1:{eport}/"}
            before = dp.counters()
            stats_was = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
            if args.prog_stats:
                Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")
            results: dict[str, dict[str, float]] = {}
            for _ in range(args.rounds):
                for name, url in modes.items():
                    r = wrk(cg, url, args.seconds)
                    if name not in results or r["p50_us"] < results[name]["p50_us"]:
                        results[name] = r
            after = dp.counters()
            prog_stats = program_stats(dp.pin_dir) if args.prog_stats else []
        finally:
            if args.prog_stats:
                Path("/proc/sys/kernel/bpf_stats_enabled").write_text(stats_was)
            envoy.stop()
            dp.close()
            nginx.terminate()
            nginx.wait(10)
    print(f"keep-alive HTTP/1.1, 1 connection, wrk {args.seconds}s x {args.rounds} rounds "
          f"(best p50 kept); wrk on CPU {CLIENT_CPU}, nginx/Envoy on CPU {SERVER_CPU}")
    print(f"{'mode':10} {'p50 us':>9} {'p99 us':>9} {'req/s':>10} {'added p50 us':>13}")
    base = results["direct"]["p50_us"]
    for name, r in results.items():
        print(f"{name:10} {r['p50_us']:9.1f} {r['p99_us']:9.1f} {r['rps']:10.0f} "
              f"{r['p50_us'] - base:13.1f}")
    added_sm = results["sockmesh"]["p50_us"] - base
    added_envoy = results["envoy"]["p50_us"] - base
    ratio = added_sm / added_envoy if added_envoy > 0 else float("inf")
    fast = after["fast"] - before["fast"]
    handed = sum(after[k] - before[k] for k in ("not_http", "parse_limit", "pipelined",
                                                 "pool_empty", "rule_user", "route_user",
                                                 "no_route", "limit", "sticky"))
    print(f"added p50 latency, sockmesh / envoy = {added_sm:.1f} / {added_envoy:.1f} us "
          f"= {ratio:.3f} (target <= 0.1)")
    print(f"kernel fast path handled {fast} requests, user space {handed}")
    for name, cnt, ns in prog_stats:
        print(f"  {name:16} {cnt:9d} runs {ns / max(cnt, 1):8.0f} ns/run")


if __name__ == "__main__":
    main()
