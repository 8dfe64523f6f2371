"""`sockmesh bench`: sockmesh against a direct connection and Envoy, on this machine.

Scenarios in one run (details in integration/bench/ and docs/benchmarks.md): direct, the
sockmap mechanism alone (a bare relay of the two redirects the kernel path makes,
integration/bench/floor.py), the sockmesh kernel path, the sockmesh slow path, Envoy as one
hop, an Envoy sidecar pair; then control-plane figures and memory with an Istio-sized
config.  Saturation runs (wrk) go ROUND_ROBIN over the three backends.  The low-rate
latency (the latency targets) is measured once per round by one paced client whose
requests go in short blocks over a connection per scenario in turn
(integration/bench/paired.py), each to
the one backend the direct scenario calls, so the added latency is the proxy's own and
every scenario sees the same moment's machine; the kernel path and Envoy one hop also get a
connection over the three backends (``low_rate_rr``: what spreading requests costs the
backends, reported beside it).  Writes ``bench.json`` and PNG plots to ``--out``, prints ratios against direct and against Envoy and every target as
MET/MISSED.  ``--docs``/``--readme`` regenerate docs/benchmarks.md and the README's summary
from the JSON (``--from-json`` does only that, from an earlier run).

Safety: the datapath is attached only to a child cgroup created here
(``sockmesh-bench-<pid>``), holding only the wrk processes of the sockmesh scenarios and the
paired low-rate client, and the bare relay only to another (``sockmesh-bench-floor-<pid>``)
holding only its wrk (the low-rate relay has no cgroup: it is handed the paired client's
connection by descriptor); all traffic is on 127.0.0.0/8; every load run is bounded by
wrk's ``-d``, a request count and a timeout; what was
started is stopped by PID, programs detached, pins and cgroups removed, also on failure,
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import integration
from integration import cgroups
from integration.agent import fast_path_share
from integration.preflight import BPFFS, missing_for_datapath

PREFIX = "sockmesh-bench"
FLOOR_PREFIX = f"{PREFIX}-floor"  # the bare relay's own cgroup (its sockops program)
PKG_ROOT = str(Path(integration.__file__).resolve().parents[1])
CLIENT_CPU, SERVER_CPU = "1", "0"
N_BACKENDS = 3
CONNECTIONS = 8
PACE_MS = 1
BACKGROUND_WINDOW_S = 1.0
ON_DATAPATH = ("kernel", "slow")  # scenarios whose clients the datapath serves
LOW_RATE_RR = ("kernel", "envoy")  # also a paced run over every backend (low_rate_rr)
LOW_RATE_BLOCK, LOW_RATE_BLOCK_WARM = 100, 10  # paired low rate: timed requests per block
# and untimed ones before them (integration/bench/paired.py)
RR = "_rr"  # a paired low-rate target's name suffix: the saturation route, round robin
L4 = "l4"  # the paired low-rate target of the L4 service on direct's backend
LOW_RATE_PER_S = 200  # paired low-rate requests per scenario per second of --low time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.description = (
        "Benchmark sockmesh against a direct connection and Envoy: direct, the bare sockmap "
        "relay, the kernel path, the slow path, Envoy one hop and an Envoy sidecar pair. "
        "Saturation runs (wrk) go ROUND_ROBIN over three nginx backends. The low-rate "
        "latency (the added-latency targets) comes from one paced client whose requests "
        "go in short blocks over a connection per scenario in turn, each to the direct "
        "scenario's one "
        "backend; the kernel path and Envoy one hop also get a connection over the three "
        "backends (reported beside, not used by the targets).")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: short runs, one round, fewer control-plane updates "
                             "(well under 3 minutes)")
    parser.add_argument("--out", type=Path, default=Path("sockmesh-bench"),
                        help="directory for bench.json and the plots (./sockmesh-bench)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per scenario, interleaved (full 3, quick 1)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds per saturation run (full 8, quick 2)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the Istio-sized memory comparison (agent vs Envoy)")
    parser.add_argument("--envoy", type=Path, default=None, metavar="PATH",
                        help="the Envoy binary (default: $SOCKMESH_ENVOY, else `envoy` on "
                             "PATH)")
    parser.add_argument("--docs", type=Path, default=None, metavar="FILE",
                        help="write the benchmarks page (e.g. docs/benchmarks.md) from the "
                             "results, with plots and JSON next to it")
    parser.add_argument("--readme", type=Path, default=None, metavar="FILE",
                        help="update the generated benchmark summary in FILE (README.md)")
    parser.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                        help="do not measure: regenerate plots/docs from an earlier bench.json")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or regenerate its outputs); 0 when it completed."""
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        return _publish(results, args)
    missing = missing_for_datapath()
    if missing:
        print("sockmesh bench: cannot run the eBPF datapath here:\n  - "
              + "\n  - ".join(missing), file=sys.stderr)
        return 1
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"sockmesh bench: {tool} is not installed", file=sys.stderr)
            return 1
    from integration.envoy import EnvoyError, find_envoy

    try:
        envoy = find_envoy(args.envoy)
    except EnvoyError as exc:
        print(f"sockmesh bench: error: {exc}", file=sys.stderr)
        return 1
    bench = Bench(args, envoy)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        results = bench.main()
    except KeyboardInterrupt:
        print("sockmesh bench: interrupted; cleaned up", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - reported with what was cleaned up
        print(f"sockmesh bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)
    return _publish(results, args)


def _publish(results: dict[str, Any], args: argparse.Namespace) -> int:
    from integration.bench import report

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json is None or args.from_json.resolve() != (out / "bench.json").resolve():
        (out / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
    plots = report.plots(results, out)
    print()
    print(report.text_table(results))
    print(f"\nresults: {out / 'bench.json'}; plots: {', '.join(p.name for p in plots)}")
    if args.docs is not None:
        assets = args.docs.parent / "benchmarks"
        assets.mkdir(parents=True, exist_ok=True)
        for p in plots:
            shutil.copyfile(p, assets / p.name)
        (assets / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
        args.docs.write_text(report.docs_page(results, "benchmarks", "benchmarks/bench.json"))
        print(f"wrote {args.docs} and {assets}/")
    if args.readme is not None:
        report.update_readme(args.readme, results)
        print(f"updated the benchmark summary in {args.readme}")
    return 0


def _port(envoy: Any, listener: str) -> int:
    """The port Envoy bound for ``listener`` (it is ready: its static listeners are up)."""
    port = envoy.listener_port(listener)
    if port is None:
        raise RuntimeError(f"Envoy has no active listener {listener!r}")
    return int(port)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


class Bench:
    """One benchmark run; ``main()`` always cleans up what it started."""

    def __init__(self, args: argparse.Namespace, envoy: Path) -> None:
        self.args = args
        self.envoy = envoy  # the Envoy binary
        self.quick = bool(args.quick)
        self.rounds = args.rounds or (1 if self.quick else 3)
        self.sat_s = args.seconds or (2.0 if self.quick else 8.0)
        self.low_s = 2.0 if self.quick else 5.0
        self.warm_s = 1.0
        self.endpoint_changes = 10 if self.quick else 100
        self.route_updates = 100 if self.quick else 1000
        self.budget_s = 5.0 if self.quick else 60.0  # per control-plane series
        self.t0 = time.monotonic()
        self.notes: list[str] = []
        self.l4_low: list[dict[str, Any]] = []  # the L4 alternative's low-rate runs

    def _paired_low_rate(self, rnd: int, targets: dict[str, tuple[str, int]], body: bytes,
                         n: int, backend: tuple[str, int], dp: Any, spawn: Any,
                         recs: dict[str, dict[str, Any]]) -> None:
        """This round's low-rate figures: one paced client, its requests interleaved over
        every scenario's one-backend target, the round-robin ones and a bare relay to
        ``backend`` (integration/bench/paired.py), into ``recs``."""
        from integration.bench import paired
        from integration.bench.floor import BareRelay
        from integration.bench.load import counter_delta

        # a relay of its own for each run: nginx closes a connection that has not carried a
        # request within its client_header_timeout (60 s), and the relay never replaces one
        relay = BareRelay(None, [backend], 1)
        targets = {"floor": ("127.0.0.1", relay.port), **targets}
        self.say(f"round {rnd + 1}: low rate, {n} requests per scenario in blocks of "
                 f"{LOW_RATE_BLOCK} over {len(targets)} connections in turn, {PACE_MS} ms "
                 "before each")
        try:
            before = dp.counters()
            low = paired.run(spawn, targets, body, requests=n, pace_ms=PACE_MS,
                             cpu=CLIENT_CPU, relay=relay, block=LOW_RATE_BLOCK,
                             block_warm=LOW_RATE_BLOCK_WARM)
        finally:
            relay.close()
        moved = counter_delta(before, dp.counters())
        blocks = -(-n // LOW_RATE_BLOCK)
        sent = 2 * blocks * (LOW_RATE_BLOCK + LOW_RATE_BLOCK_WARM)  # the kernel's two targets
        self.l4_low.append(low[L4])
        for name, rec in recs.items():
            rec["low_rate"] = low[name]
            if name in LOW_RATE_RR:
                rec["low_rate_rr"] = low[name + RR]
            if name in ON_DATAPATH:
                # one run for both datapath scenarios: the kernel scenario's requests (one
                # backend and round robin) are the ones the kernel routed ("fast"), the slow
                # scenario's the hand-offs
                rec["counters_low_rate"] = moved
                rec["fast_share_low_rate"] = (min(1.0, moved.get("fast", 0) / sent)
                                              if name == "kernel" else
                                              fast_path_share({**moved, "fast": 0}))
            else:
                rec["fast_share_low_rate"] = None
        self.say("    p50 " + ", ".join(f"{k} {v['p50_us']:.1f}" for k, v in low.items())
                 + " us; p99 " + ", ".join(f"{k} {v['p99_us']:.0f}" for k, v in low.items())
                 + " us")

    def _program_profile(self, url: str, spawn: Any) -> dict[str, Any]:
        from integration.bench.load import run_wrk
        from integration.bench.system import (
            bpf_program_names,
            bpf_program_stats,
            bpf_stats_enabled,
        )

        with bpf_stats_enabled():
            before = bpf_program_stats(os.getpid())
            sat = run_wrk(url, connections=CONNECTIONS, seconds=self.sat_s, cpu=CLIENT_CPU,
                          spawn=spawn)
            after = bpf_program_stats(os.getpid())
        out = _per_request(before, after, bpf_program_names(list(after)), sat.requests)
        self.say("    BPF time per request: "
                 f"{out['bpf_ns_per_request'] / 1000:.2f} us ("
                 + ", ".join(f"{p['name']} {p['ns_per_run']:.0f} ns x{p['runs_per_request']:.2f}"
                             for p in out["programs"]) + ")")
        return out

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def main(self) -> dict[str, Any]:
        from bpf.datapath import Datapath
        from integration.bench import control, nginx, paired, proxies
        from integration.bench.floor import BareRelay
        from integration.bench.load import measured_round, wrk_binary
        from integration.bench.scenarios import (
            KERNEL_ONE_VIP,
            KERNEL_VIP,
            L4_ONE_VIP,
            SLOW_ONE_VIP,
            SLOW_VIP,
            bench_tables,
        )
        from integration.bench.system import (
            bpf_map_memory,
            machine,
            pin_to_cpu,
            rss_bytes,
            version_of,
        )
        from integration.envoy import EnvoyProcess

        started = dt.datetime.now(dt.UTC)
        results: dict[str, Any] = {
            "version": 2, "date": started.isoformat(timespec="seconds"), "quick": self.quick,
            "machine": machine(),
            "method": {"backends": N_BACKENDS, "connections": CONNECTIONS,
                       "saturation_s": self.sat_s, "low_rate_s": self.low_s,
                       "warmup_s": self.warm_s, "rounds": self.rounds, "pace_ms": PACE_MS,
                       "pace_rps": 1000 // PACE_MS, "client_cpu": CLIENT_CPU,
                       "server_cpu": SERVER_CPU,
                       "low_rate_client": "paired: one client, blocks of paced requests over "
                                          "a connection per scenario, in turn",
                       "low_rate_paired": True, "low_rate_block": LOW_RATE_BLOCK,
                       "low_rate_block_warmup": LOW_RATE_BLOCK_WARM,
                       "low_rate_requests": int(self.low_s * LOW_RATE_PER_S),
                       # low_rate: every scenario to the direct scenario's backend;
                       # low_rate_rr: these scenarios also over every backend
                       "low_rate_one_backend": True, "low_rate_rr": list(LOW_RATE_RR)},
            "scenarios": {}, "memory": {}, "notes": self.notes,
        }
        self.say(f"sockmesh bench ({'quick' if self.quick else 'full'}): load average "
                 f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        for path in cgroups.sweep(PREFIX) + cgroups.sweep(FLOOR_PREFIX):
            self.say(f"removed leftover {path} of an earlier run")
        work = Path(tempfile.mkdtemp(prefix="sockmesh-bench-"))
        cg: Path | None = None
        cg_floor: Path | None = None
        dp: Datapath | None = None
        relay: BareRelay | None = None
        backends: list[nginx.Nginx] = []
        envoys: list[EnvoyProcess] = []
        try:
            cg = cgroups.create(PREFIX)
            for i in range(N_BACKENDS):
                backends.append(nginx.start(work / "nginx", f"nginx-{i + 1}", SERVER_CPU))
            eps = [("127.0.0.1", b.port) for b in backends]
            self.say(f"{N_BACKENDS} nginx backends on 127.0.0.1:"
                     + ",".join(str(b.port) for b in backends) + f" (CPU {SERVER_CPU})")
            envoy_bin = None
            results["tools"] = {"nginx": version_of([nginx.nginx_binary(), "-v"]),
                                "wrk": version_of([wrk_binary(), "-v"])}

            dp = Datapath(cg, BPFFS / cg.name, warm=CONNECTIONS)
            dp.load()
            dp.apply(bench_tables(eps))
            self.say(f"datapath attached to {cg} (pins {BPFFS / cg.name})")
            cg_floor = cgroups.create(FLOOR_PREFIX)
            relay = BareRelay(cg_floor, eps, CONNECTIONS)
            self.say(f"bare relay (the sockmap mechanism alone) attached to {cg_floor}, "
                     f"{CONNECTIONS} pooled connections over the {N_BACKENDS} backends; "
                     "for the low-rate runs, one to the first backend, made for each run")
            # the datapath's own threads (pool maintenance, splice listener) while idle: a
            # cost every scenario below carries, direct included
            p0, w0 = time.process_time(), time.monotonic()
            time.sleep(BACKGROUND_WINDOW_S)
            results["agent_idle_cpu_cores"] = (time.process_time() - p0) / (
                time.monotonic() - w0)
            self.say(f"datapath threads while idle: {results['agent_idle_cpu_cores']:.3f} "
                     "cores")

            hop = EnvoyProcess(proxies.hop(eps, eps[0]), work / "envoy-hop",
                               binary=self.envoy)
            envoys.append(hop)
            server_sc = EnvoyProcess(proxies.hop(eps, eps[0]), work / "envoy-server-sidecar",
                                     binary=self.envoy)
            envoys.append(server_sc)
            for e in (hop, server_sc):
                e.start()
                assert e.pid is not None
                pin_to_cpu(e.pid, SERVER_CPU)
            client_sc = EnvoyProcess(
                proxies.hop([("127.0.0.1", _port(server_sc, proxies.LISTENER))],
                            ("127.0.0.1", _port(server_sc, proxies.ONE_LISTENER)),
                            "server-sidecar"),
                work / "envoy-client-sidecar", binary=self.envoy)
            envoys.append(client_sc)
            client_sc.start()
            assert client_sc.pid is not None
            pin_to_cpu(client_sc.pid, CLIENT_CPU)
            envoy_bin = str(hop.binary)
            results["tools"]["envoy"] = version_of([envoy_bin, "--version"]).split(
                "version:")[-1].strip()
            self.say("Envoy one hop and a sidecar pair (client-side and server-side) ready")

            def in_cgroup(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
                assert cg is not None
                return cgroups.spawn_in(argv, cg, **kw)

            def in_floor(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
                assert cg_floor is not None
                return cgroups.spawn_in(argv, cg_floor, **kw)

            def vip(addr: tuple[str, int]) -> str:
                return f"http://{addr[0]}:{addr[1]}/"

            def envoy_url(e: EnvoyProcess, listener: str) -> str:
                return f"http://127.0.0.1:{_port(e, listener)}/"

            # name -> the saturation URL and how to start its client (wrk); the low-rate
            # targets (the same routes to the direct scenario's backend, the round-robin
            # routes, the L4 service), which the paired client calls from the datapath's cgroup
            urls: dict[str, tuple[str, Any]] = {
                "direct": (f"http://127.0.0.1:{eps[0][1]}/", None),
                "floor": (relay.url, in_floor),
                "kernel": (vip(KERNEL_VIP), in_cgroup),
                "slow": (vip(SLOW_VIP), in_cgroup),
                "envoy": (envoy_url(hop, proxies.LISTENER), None),
                "sidecars": (envoy_url(client_sc, proxies.LISTENER), None),
            }
            low_targets: dict[str, tuple[str, int]] = {
                "direct": eps[0],
                "kernel": KERNEL_ONE_VIP,
                "slow": SLOW_ONE_VIP,
                "envoy": ("127.0.0.1", _port(hop, proxies.ONE_LISTENER)),
                "sidecars": ("127.0.0.1", _port(client_sc, proxies.ONE_LISTENER)),
                # the saturation route, ROUND_ROBIN over every backend (low_rate_rr)
                "kernel" + RR: KERNEL_VIP,
                "envoy" + RR: ("127.0.0.1", _port(hop, proxies.LISTENER)),
                # the alternative design: endpoint chosen at connect, no per-request routing
                L4: L4_ONE_VIP,
            }
            body = paired.response_body(eps[0])
            low_n = results["method"]["low_rate_requests"]  # per scenario and round
            rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in urls}
            n_runs = self.rounds * len(urls)
            k = 0
            for rnd in range(self.rounds):
                for name, (url, spawn) in urls.items():
                    k += 1
                    self.say(f"[{k}/{n_runs}] round {rnd + 1}: {name}: warm-up, "
                             f"{self.sat_s:g} s at {CONNECTIONS} connections")
                    rec = measured_round(
                        url, spawn=spawn, connections=CONNECTIONS, seconds=self.sat_s,
                        warm_s=self.warm_s, low_s=self.low_s, pace_ms=PACE_MS, cpu=CLIENT_CPU,
                        workdir=work, background_s=BACKGROUND_WINDOW_S,
                        counters=dp.counters if name in ON_DATAPATH else None,
                        paced=False)
                    on_dp = name in ON_DATAPATH
                    rec["fast_share"] = fast_path_share(rec["counters"]) if on_dp else None
                    sat = rec["saturation"]
                    if sat["errors"]:
                        self.notes.append(f"{name} round {rnd + 1}: wrk saw {sat['errors']} "
                                          "errors")
                    rounds[name].append(rec)
                    self.say(f"    {sat['rps']:,.0f} req/s, p50 {sat['p50_us']:.0f} us; "
                             f"{rec['cpu_s_per_10k']:.3f} CPU s/10k; CPUs busy "
                             + "/".join(f"{x:.0%}" for x in rec["cpu_busy_share"])
                             + (f"; kernel share {rec['fast_share']:.1%}"
                                if rec["fast_share"] is not None else ""))
                self._paired_low_rate(rnd, low_targets, body, low_n, eps[0], dp,
                                      in_cgroup, {n: r[-1] for n, r in rounds.items()})
            for name, recs in rounds.items():
                results["scenarios"][name] = _aggregate(recs)
            results["low_rate_l4"] = {
                k: _median([x[k] for x in self.l4_low]) for k in ("p50_us", "p90_us", "p99_us")}
            for name in ("kernel", "slow"):
                url, spawn = urls[name]
                self.say(f"{name}: one more {self.sat_s:g} s run with kernel.bpf_stats_enabled"
                         " (time spent in each program; not used for the figures above)")
                results["scenarios"][name]["bpf_programs"] = self._program_profile(
                    url, spawn)

            relay.close()  # its maps are not the datapath's
            relay = None
            n_maps, map_bytes = bpf_map_memory(os.getpid())
            results["memory"] = {
                "envoy_hop_rss": rss_bytes(hop.pid or 0),
                "envoy_sidecar_pair_rss": [rss_bytes(client_sc.pid or 0),
                                           rss_bytes(server_sc.pid or 0)],
                "bench_bpf_maps": n_maps, "bench_bpf_map_bytes": map_bytes}
            for e in envoys:
                e.stop()
            envoys = []

            self.say(f"control plane: {self.route_updates} route updates, benchmark tables")
            small = control.route_updates_small(dp, eps, self.route_updates, self.say)
            self.say("control plane: generating the Istio-sized snapshot")
            rs = control.istio_snapshot()
            results["control"] = control.kernel_figures(
                dp, rs, eps, self.endpoint_changes, self.route_updates, self.budget_s,
                self.say)
            results["control"]["route_updates_small"] = small
            dp.close()
            dp = None
            if not self.args.no_memory:
                results["memory"]["istio"] = control.memory_figures(
                    control.istio_snapshot(), work, PKG_ROOT, self.say, self.envoy)
        finally:
            for e in envoys:
                e.stop()
            if relay is not None:
                relay.close()
            if dp is not None:
                dp.close()
            for b in backends:
                b.stop()
            for group in (cg, cg_floor):
                if group is None:
                    continue
                pin = BPFFS / group.name
                if pin.exists():
                    shutil.rmtree(pin, ignore_errors=True)
                try:
                    cgroups.remove(group)
                except OSError as exc:
                    print(f"sockmesh bench: could not remove {group}: {exc}", file=sys.stderr)
            shutil.rmtree(work, ignore_errors=True)
        results["duration_s"] = time.monotonic() - self.t0
        results["loadavg_end"] = list(os.getloadavg())
        self.say(f"done in {results['duration_s']:.0f} s; load average "
                 f"{results['loadavg_end'][0]:.2f}")
        return results


def _per_request(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
                 names: dict[int, str], requests: int) -> dict[str, Any]:
    """Program run counts and ns per run, and BPF time per request, between two samples."""
    progs = []
    total_ns = 0
    for pid_, (cnt, ns) in sorted(after.items()):
        c0, n0 = before.get(pid_, (0, 0))
        runs, spent = cnt - c0, ns - n0
        total_ns += spent
        if runs:
            progs.append({"name": names.get(pid_, str(pid_)), "runs": runs,
                          "ns_per_run": spent / runs, "runs_per_request": runs / requests})
    return {"programs": progs, "bpf_ns_per_request": total_ns / max(requests, 1),
            "requests": requests}


def _aggregate(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of every figure; the rounds kept as they were."""
    def med(part: str) -> dict[str, Any]:
        keys = recs[0][part].keys()
        return {k: _median([r[part][k] for r in recs]) for k in keys}

    shares = [r["fast_share"] for r in recs if r["fast_share"] is not None]
    low_shares = [r["fast_share_low_rate"] for r in recs
                  if r.get("fast_share_low_rate") is not None]
    rr = {"low_rate_rr": med("low_rate_rr")} if "low_rate_rr" in recs[0] else {}
    return {"saturation": med("saturation"), "low_rate": med("low_rate"), **rr,
            "cpu_s_per_10k": _median([r["cpu_s_per_10k"] for r in recs]),
            "cpu_s_per_10k_net": _median([r["cpu_s_per_10k_net"] for r in recs]),
            "background_cpu_per_s": _median([r["background_cpu_per_s"] for r in recs]),
            "softirq_s_per_10k": _median([r["softirq_s"] / max(r["saturation"]["requests"], 1)
                                          * 1e4 for r in recs]),
            "fast_share": _median(shares) if shares else None,
            "fast_share_low_rate": _median(low_shares) if low_shares else None,
            "cpu_busy_share": [_median([r["cpu_busy_share"][i] for r in recs])
                               for i in range(len(recs[0]["cpu_busy_share"]))],
            "rounds": recs}
