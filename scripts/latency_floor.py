"""Where the kernel path's added latency goes (a measurement, not a test; run as root).

One client process (CPU 1) sends sequential keep-alive GETs to one nginx (CPU 0) over five
connections in turn, request by request, so the machine's load hits all five alike:

  direct      straight to nginx;
  msg_pass    straight to nginx, the socket in a sockhash whose sk_msg program returns SK_PASS;
  skb_pass    straight to nginx, the socket in a sockhash whose sk_skb verdict returns SK_PASS;
  bare_relay  to a local listener; a trivial sk_msg redirects each write to a pooled
              connection's egress and a trivial sk_skb verdict redirects each response into
              the client's ingress (the client gets sockmesh's SO_RCVBUF, as under the
              bench): the sockmap mechanism sockmesh uses, without its work
              (integration/bench/floor.py's programs, which `sockmesh bench` runs under wrk);
  sockmesh    to a service VIP through the sockmesh datapath (parse, route, pick, frame).

The bench measures the bare relay's throughput and CPU under wrk; this script adds the
paired per-request latency split (a psock alone, each redirect, sockmesh's work).
Prints each connection's p50/p90 and its added p50 over direct (median over repetitions of
the per-repetition difference).  The client and the datapath live in a dedicated child
cgroup; all traffic is on 127.0.0.1 and 127.10.9.1.

    .venv/bin/python scripts/latency_floor.py [--requests 3000] [--reps 5] [--bpf-stats]
                                              [--backends 1] [--pace-us 0]

--bpf-stats turns on kernel.bpf_stats_enabled for the run and prints each attached
program's run time per run (tail-called programs count in the program that was attached).
--backends N gives sockmesh's cluster N nginx (all on CPU 0) to round-robin over, as the
bench's kernel scenario does with 3; the other connections stay on the first one.
--pace-us N leaves the client idle N microseconds after each request, as the bench's
low-rate client does (1000): caches and the vCPU go cold between requests, and with
--bpf-stats the programs' run time shows what that costs them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bpf.datapath import Datapath
from integration.bench import nginx
from integration.bench.floor import BareRelay
from integration.bench.paired import borrowed_fds, getfd
from integration.bench.scenarios import KERNEL_VIP, bench_tables
from integration.bench.system import bpf_program_names, bpf_program_stats, bpf_stats_enabled
from tests.support.cgroup import pin_dir_for, spawn_in_cgroup, sweep_leftovers, test_cgroup

NAMES = ("direct", "msg_pass", "skb_pass", "bare_relay", "sockmesh")
REQ = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

CLIENT = r"""
import json, os, socket, sys, time
os.sched_setaffinity(0, {1})
targets, n, end = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
pace = int(sys.argv[4]) / 1e6  # seconds idle after each request
socks = [socket.create_connection(tuple(t), timeout=5) for t in targets]
for s in socks:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print(json.dumps([s.fileno() for s in socks]), flush=True)
sys.stdin.readline()  # the harness put the sockets in its maps
req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
lat = [[] for _ in socks]
for i in range(n + 200):
    for j, s in enumerate(socks):
        t = time.perf_counter_ns()
        s.sendall(req)
        buf = b""
        while not buf.endswith(end):
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("connection closed")
            buf += chunk
        if i >= 200:  # warm-up
            lat[j].append(time.perf_counter_ns() - t)
        if pace:
            time.sleep(pace)
print(json.dumps([[sorted(x)[len(x) * q // 100] / 1000 for q in (50, 90)] for x in lat]))
"""

def one_rep(cg: Path, relay: BareRelay, nport: int, body: bytes, n: int,
            pace_us: int) -> list[list[float]]:
    """One client run over the five connections; [p50, p90] per connection."""
    direct = ["127.0.0.1", nport]
    targets = [direct, direct, direct, ["127.0.0.1", relay.port], list(KERNEL_VIP)]
    end = b"\r\n\r\n" + body
    proc = spawn_in_cgroup([sys.executable, "-c", CLIENT, json.dumps(targets), str(n),
                            end.decode(), str(pace_us)], cg,
                           stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    with borrowed_fds(proc) as fds:
        assert proc.stdout is not None and proc.stdin is not None
        theirs = json.loads(proc.stdout.readline())
        fds.extend(getfd(proc.pid, f) for f in theirs)
        relay.put("fl_pass_cl", 0, fds[1])
        relay.put("fl_pass_pool", 0, fds[2])
        relay.pair(fds[3], 0)  # the relay's one pooled connection
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"client failed ({proc.returncode})")
    return json.loads(out.splitlines()[-1])


def print_bpf_stats(before: dict[int, tuple[int, int]],
                    after: dict[int, tuple[int, int]]) -> None:
    """Run count and mean run time of each program that ran between the two samples."""
    ran = {i: (c - before.get(i, (0, 0))[0], t - before.get(i, (0, 0))[1])
           for i, (c, t) in after.items() if c > before.get(i, (0, 0))[0]}
    names = bpf_program_names(list(ran))
    for i, (cnt, ns) in sorted(ran.items(), key=lambda x: names.get(x[0], "?")):
        print(f"  {names.get(i, '?'):16} runs {cnt:8d}  {ns / cnt / 1000:6.2f} us per run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per connection per rep")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (medians over them)")
    ap.add_argument("--bpf-stats", action="store_true",
                    help="also print each program's run time per run (bpf_stats)")
    ap.add_argument("--backends", type=int, default=1,
                    help="nginx backends sockmesh round-robins over (the bench uses 3)")
    ap.add_argument("--pace-us", type=int, default=0, metavar="US",
                    help="idle time after each request (the bench's low rate: 1000)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (BPF, cgroup v2)")
    sweep_leftovers()
    rows = []
    stats = contextlib.ExitStack()
    if args.bpf_stats:
        stats.enter_context(bpf_stats_enabled())
    with stats, tempfile.TemporaryDirectory(prefix="sockmesh-floor-") as tmp, test_cgroup() as cg:
        backends = [nginx.start(Path(tmp), f"nginx-{i + 1}", "0")
                    for i in range(max(1, args.backends))]
        backend = backends[0]
        dp = Datapath(cg, pin_dir_for(cg), warm=2)
        relay = None
        try:
            with socket.create_connection(("127.0.0.1", backend.port), timeout=5) as s:
                s.sendall(REQ)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(4096)
                body = head.split(b"\r\n\r\n", 1)[1]  # nginx's short body comes in one piece
            dp.load()
            dp.apply(bench_tables([("127.0.0.1", b.port) for b in backends]))
            relay = BareRelay(None, [("127.0.0.1", backend.port)], 1, pass_programs=True)
            before = bpf_program_stats(os.getpid())
            for rep in range(args.reps):
                rows.append(one_rep(cg, relay, backend.port, body, args.requests,
                                    args.pace_us))
                print(f"rep {rep + 1}: " + ", ".join(
                    f"{n} {r[0]:.1f}" for n, r in zip(NAMES, rows[-1], strict=True)), flush=True)
            if args.bpf_stats:
                print("BPF run time over all reps (bpf_stats):")
                print_bpf_stats(before, bpf_program_stats(os.getpid()))
        finally:
            if relay is not None:
                relay.close()
            dp.close()
            for b in backends:
                b.stop()
    pace = f", {args.pace_us} us idle after each" if args.pace_us else ""
    print(f"{args.reps} reps x {args.requests} requests per connection, interleaved per "
          f"request{pace}")
    for i, name in enumerate(NAMES):
        diffs = [r[i][0] - r[0][0] for r in rows]
        print(f"{name:10} p50 {statistics.median(r[i][0] for r in rows):6.1f} us, "
              f"p90 {statistics.median(r[i][1] for r in rows):6.1f} us, added p50 "
              f"{statistics.median(diffs):+5.1f} us (reps {min(diffs):+.1f}..{max(diffs):+.1f})")


if __name__ == "__main__":
    main()
