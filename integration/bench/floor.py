"""The sockmap mechanism's floor: a bare relay made of the two redirects sockmesh uses.

``BareRelay`` loads bare_relay.bpf.c: a client connection (from a process in the relay's own
child cgroup) to the relay's listener is paired with one pooled connection to a backend; an
sk_msg program redirects its writes to the pooled connection's egress and an sk_skb verdict
redirects each response into the client's receive queue.  That is the kernel path's
mechanism with none of sockmesh's work (parse, route, pick, claim, frame, count), so the
benchmark can show, next to each target the kernel path misses, what the mechanism alone
achieves on this kernel.

``python -m integration.bench.floor`` measures direct, the bare relay and sockmesh's kernel
path with ``sockmesh bench``'s runs (wrk, interleaved rounds, medians), with the CPU
placement and the sk_skb attachment as options: an analysis of where the floor comes from.
Unlike ``sockmesh bench``, its paced runs take each scenario's saturation route (the kernel
path round robin over three backends; ``--one-backend`` adds a relay to one backend).
"""

from __future__ import annotations

import ctypes as C
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bpf import maps
from bpf.limits import limit
from bpf.loader import (
    ATTACH_CGROUP_SOCK_OPS,
    ATTACH_SK_MSG_VERDICT,
    ATTACH_SK_SKB_STREAM_VERDICT,
)

SOURCE = Path(__file__).with_name("bare_relay.bpf.c")
ATTACH_SK_SKB_STREAM_PARSER = 4
MAX_POOL = 64  # fl_pool's size in bare_relay.bpf.c


class BareRelay:
    """The bare relay, attached to ``cgroup`` (a child cgroup holding only its clients).

    ``pool`` connections are opened here, round robin over ``backends`` (as the kernel
    scenario's ROUND_ROBIN spreads requests); give it at least as many as the most
    connections one client run opens (clients are paired round robin, so any run of up to
    ``pool`` connections gets one pooled connection each).  ``parser`` also attaches
    a stream parser to the pooled connections (the strparser path; analysis only).
    Without a ``cgroup`` no sockops program runs: the caller pairs clients with
    :meth:`pair`.  ``pass_programs`` also attaches the SK_PASS-only sk_msg and sk_skb
    programs to fl_pass_cl and fl_pass_pool (filled with :meth:`put`).
    ``close()`` detaches everything and closes every socket, also after a failed start.
    """

    def __init__(self, cgroup: Path | None, backends: Sequence[tuple[str, int]], pool: int,
                 parser: bool = False, pass_programs: bool = False) -> None:
        from bcc import BPF, lib  # only the relay needs bcc; the report does not

        if not 0 < pool <= MAX_POOL:
            raise ValueError(f"pool must be 1..{MAX_POOL}")
        self._lib = lib
        self._attached: list[tuple[int, int, int]] = []
        self._socks: list[socket.socket] = []
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._cg_fd = -1
        self.pool_ports: list[int] = []
        self.bpf = BPF(text=SOURCE.read_bytes(), cflags=[f"-DFL_RCVBUF={limit('RCVBUF')}"])
        try:
            self._start(BPF, cgroup, backends, pool, parser, pass_programs)
        except BaseException:
            self.close()
            raise

    def _fd(self, name: str) -> int:
        return int(self._lib.bpf_table_fd(self.bpf.module, name.encode()))

    def _attach(self, prog_fd: int, target: int, at: int) -> None:
        maps.prog_attach(prog_fd, target, at)
        self._attached.append((prog_fd, target, at))

    def _start(self, bpf_cls: Any, cgroup: Path | None, backends: Sequence[tuple[str, int]],
               pool: int, parser: bool, pass_programs: bool) -> None:
        b = self.bpf
        if pass_programs:
            self._attach(b.load_func(b"fl_pass_msg", bpf_cls.SK_MSG).fd,
                         self._fd("fl_pass_cl"), ATTACH_SK_MSG_VERDICT)
            self._attach(b.load_func(b"fl_pass_skb", bpf_cls.SK_SKB).fd,
                         self._fd("fl_pass_pool"), ATTACH_SK_SKB_STREAM_VERDICT)
        if parser:
            self._attach(b.load_func(b"fl_parse", bpf_cls.SK_SKB).fd, self._fd("fl_pool"),
                         ATTACH_SK_SKB_STREAM_PARSER)
        self._attach(b.load_func(b"fl_skb", bpf_cls.SK_SKB).fd, self._fd("fl_pool"),
                     ATTACH_SK_SKB_STREAM_VERDICT)
        self._attach(b.load_func(b"fl_msg", bpf_cls.SK_MSG).fd, self._fd("fl_cl"),
                     ATTACH_SK_MSG_VERDICT)
        # sockets enter the sockhashes only after the programs are attached (else they
        # would run without them)
        ports, ctl = b[b"fl_poolport"], b[b"fl_ctl"]
        for i in range(pool):
            s = socket.create_connection(backends[i % len(backends)], timeout=5)
            self._socks.append(s)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.put("fl_pool", i, s.fileno())
            self.pool_ports.append(int(s.getsockname()[1]))
            ports[C.c_uint32(i)] = C.c_uint32(s.getsockname()[1])
        ctl[C.c_uint32(1)] = C.c_uint32(pool)
        self.listener = socket.socket()
        self._socks.append(self.listener)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, name="bare-relay-accept",
                                        daemon=True)
        self._thread.start()
        if cgroup is None:
            return
        self._cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        self._attach(b.load_func(b"fl_sockops", bpf_cls.SOCK_OPS).fd, self._cg_fd,
                     ATTACH_CGROUP_SOCK_OPS)

    def put(self, table: str, key: int, sock_fd: int) -> None:
        """Insert the socket ``sock_fd`` into the sockhash ``table`` under ``key``."""
        k, v = C.c_uint32(key), C.c_uint64(sock_fd)
        if self._lib.bpf_update_elem(self._fd(table), C.byref(k), C.byref(v), 0):
            raise OSError(C.get_errno(), f"{table} update")

    def pair(self, client_fd: int, idx: int) -> None:
        """What fl_sockops does, from user space: pair the connected client socket
        ``client_fd`` (a connection to :attr:`port`) with pooled connection ``idx``, and
        give it sockmesh's receive buffer."""
        with socket.socket(fileno=os.dup(client_fd)) as s:
            cport = int(s.getsockname()[1])
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, limit("RCVBUF"))
        self.bpf[b"fl_pair"][C.c_uint32(cport)] = C.c_uint32(idx)
        self.bpf[b"fl_back"][C.c_uint32(self.pool_ports[idx])] = C.c_uint32(cport)
        self.put("fl_cl", cport, client_fd)

    def _accept(self) -> None:
        # the accepted ends stay open and idle (the relay never goes through them); a
        # client whose peer closed would see EOF
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._accepted.append(conn)

    @property
    def url(self) -> str:
        """The URL a client in the relay's cgroup calls."""
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        """Detach the programs, close every socket, free the maps."""
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=2)
        for prog_fd, target, at in reversed(self._attached):
            try:
                maps.prog_detach(prog_fd, target, at)
            except maps.BpfError:
                pass  # a sockhash's programs go with the map
        self._attached = []
        if self._cg_fd >= 0:
            os.close(self._cg_fd)
            self._cg_fd = -1
        for s in self._accepted + self._socks:
            s.close()
        self._accepted, self._socks = [], []
        self.bpf.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Direct, the bare relay (optionally also with a stream parser) and the kernel path,
    interleaved, medians over rounds; placement of wrk and nginx as options."""
    import argparse
    import shutil
    import statistics
    import tempfile

    from bpf.datapath import Datapath
    from integration import cgroups
    from integration.bench import nginx
    from integration.bench.load import measured_round
    from integration.bench.scenarios import KERNEL_VIP, bench_tables
    from integration.preflight import BPFFS

    p = argparse.ArgumentParser(prog="python -m integration.bench.floor",
                                description=main.__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--client-cpu", default="1", help="wrk's CPU list (taskset)")
    p.add_argument("--server-cpu", default="0", help="nginx's CPU list (taskset)")
    p.add_argument("--parser", action="store_true",
                   help="also measure the relay with a stream parser on the pooled sockets")
    p.add_argument("--one-backend", action="store_true",
                   help="also measure the relay with all its pooled connections to one nginx")
    a = p.parse_args(argv)
    names = ["sockmesh-floor-kernel", "sockmesh-floor-relay", "sockmesh-floor-parser",
             "sockmesh-floor-one"]
    for n in names:
        cgroups.sweep(n)
    work = Path(tempfile.mkdtemp(prefix="sockmesh-floor-"))
    groups: list[Path] = []
    backends: list[nginx.Nginx] = []
    relays: list[BareRelay] = []
    dp = None

    def in_group(group: Path) -> Any:
        return lambda argv, **kw: cgroups.spawn_in(argv, group, **kw)

    try:
        for i in range(3):
            backends.append(nginx.start(work, f"nginx-{i + 1}", a.server_cpu))
        eps = [("127.0.0.1", b.port) for b in backends]
        groups.append(cgroups.create(names[0]))
        dp = Datapath(groups[0], BPFFS / groups[0].name, warm=8)
        dp.load()
        dp.apply(bench_tables(eps))
        urls: dict[str, tuple[str, Any, Any]] = {
            "direct": (f"http://127.0.0.1:{eps[0][1]}/", None, None),
            "kernel": (f"http://{KERNEL_VIP[0]}:{KERNEL_VIP[1]}/", in_group(groups[0]),
                       dp.counters)}
        variants = [("floor", False, names[1], eps)]
        if a.parser:
            variants.append(("floor_parser", True, names[2], eps))
        if a.one_backend:
            variants.append(("floor_one", False, names[3], eps[:1]))
        for name, parser, cgname, to in variants:
            groups.append(cgroups.create(cgname))
            relays.append(BareRelay(groups[-1], to, 8, parser=parser))
            urls[name] = (relays[-1].url, in_group(groups[-1]), None)
        recs: dict[str, list[dict[str, Any]]] = {k: [] for k in urls}
        for rnd in range(a.rounds):
            for name, (url, spawn, counters) in urls.items():
                r = measured_round(url, spawn=spawn, connections=8, seconds=a.seconds,
                                   warm_s=1.0, low_s=5.0, pace_ms=1, cpu=a.client_cpu,
                                   workdir=work, counters=counters)
                recs[name].append(r)
                print(f"round {rnd + 1} {name:12} {r['saturation']['rps']:9,.0f} req/s "
                      f"{r['cpu_s_per_10k']:.3f} CPU s/10k busy "
                      + "/".join(f"{x:.0%}" for x in r["cpu_busy_share"])
                      + f" low p50/p99 {r['low_rate']['p50_us']:.0f}/"
                      f"{r['low_rate']['p99_us']:.0f} us bg {r['background_cpu_per_s']:.2f}"
                      + (f" low-rate counters {r['counters_low_rate']}" if counters else ""),
                      flush=True)
        med = {k: {"rps": statistics.median(r["saturation"]["rps"] for r in v),
                   "cpu": statistics.median(r["cpu_s_per_10k"] for r in v),
                   "p50": statistics.median(r["low_rate"]["p50_us"] for r in v),
                   "p99": statistics.median(r["low_rate"]["p99_us"] for r in v)}
               for k, v in recs.items()}
        d = med["direct"]
        print(f"medians over {a.rounds} rounds; wrk on CPU {a.client_cpu}, nginx on CPU "
              f"{a.server_cpu}")
        for k, m in med.items():
            print(f"{k:12} {m['rps']:9,.0f} req/s x{m['rps'] / d['rps']:.2f}  "
                  f"{m['cpu']:.3f} CPU s/10k x{m['cpu'] / d['cpu']:.2f}  "
                  f"low p50 {m['p50']:.0f} us p99 {m['p99']:.0f} us")
        return 0
    finally:
        for relay in relays:
            relay.close()
        if dp is not None:
            dp.close()
        for b in backends:
            b.stop()
        for g in groups:
            shutil.rmtree(BPFFS / g.name, ignore_errors=True)
            cgroups.remove(g)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
