"""The bench's routes reach the backends the report says they do: on real nginx backends,
through a real Envoy (integration/bench/proxies.py) and the real sockmesh datapath with the
bench's tables (integration/bench/scenarios.py), each request's ``x-backend`` header names
the nginx that answered.  The low-rate routes (HTTP and the L4 service) reach only the direct
scenario's backend (``nginx-1``); the saturation route reaches all three, as ROUND_ROBIN
does.  The paired low-rate client (integration/bench/paired.py) times every target it is
given, the one-backend bare relay (integration/bench/floor.py, paired by descriptor)
included.

Safety: the datapath is attached only to a child cgroup created here, holding only the
clients started here; traffic is on 127.0.0.0/8; every client run is bounded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.bench import nginx, paired, proxies
from integration.bench.scenarios import (
    KERNEL_ONE_VIP,
    KERNEL_VIP,
    L4_ONE_VIP,
    SLOW_ONE_VIP,
    bench_tables,
)

N = 30  # requests per route, on one keep-alive connection (a multiple of the 3 backends)
# one keep-alive connection, N GETs of /, the x-backend header of each response as JSON
CLIENT = ("import http.client, json, sys\n"
          "c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)\n"
          "seen = []\n"
          "for _ in range(int(sys.argv[3])):\n"
          "    c.request('GET', '/')\n"
          "    r = c.getresponse()\n"
          "    r.read()\n"
          "    seen.append(r.getheader('x-backend'))\n"
          "print(json.dumps(seen))\n")
Spawn = Callable[..., subprocess.Popen[bytes]]


def backends_seen(addr: tuple[str, int], spawn: Spawn = subprocess.Popen) -> Counter[str]:
    """Which nginx answered each of N requests sent to ``addr`` on one connection."""
    proc = spawn([sys.executable, "-c", CLIENT, addr[0], str(addr[1]), str(N)],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, err.decode()
    return Counter(json.loads(out))


@pytest.fixture(scope="module")
def eps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, int]]]:
    work = tmp_path_factory.mktemp("nginx")
    started: list[nginx.Nginx] = []
    try:
        for i in range(3):
            started.append(nginx.start(work, f"nginx-{i + 1}"))
        yield [("127.0.0.1", b.port) for b in started]
    finally:
        for b in started:
            b.stop()


ALL_THREE = Counter({"nginx-1": N // 3, "nginx-2": N // 3, "nginx-3": N // 3})
DIRECTS_ONLY = Counter({"nginx-1": N})


@pytest.mark.envoy
def test_envoy_listeners(eps: list[tuple[str, int]], tmp_path: Path) -> None:
    from integration.envoy import EnvoyProcess

    with EnvoyProcess(proxies.hop(eps, eps[0]), tmp_path / "hop") as hop:
        ports = {n: hop.listener_port(n) for n in (proxies.LISTENER, proxies.ONE_LISTENER)}
        assert None not in ports.values(), ports
        assert backends_seen(("127.0.0.1", ports[proxies.ONE_LISTENER] or 0)) == DIRECTS_ONLY
        assert backends_seen(("127.0.0.1", ports[proxies.LISTENER] or 0)) == ALL_THREE


@pytest.mark.kernel
def test_sockmesh_services_and_the_one_backend_relay(eps: list[tuple[str, int]]) -> None:
    from bpf.datapath import Datapath
    from integration.bench.floor import BareRelay
    from integration.cgroups import spawn_in
    from tests.support.cgroup import pin_dir_for, sweep_leftovers, test_cgroup

    sweep_leftovers()
    with test_cgroup() as cg:
        dp = Datapath(cg, pin_dir_for(cg), warm=2)
        try:
            dp.load()
            dp.apply(bench_tables(eps))

            def in_cg(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
                return spawn_in(argv, cg, **kw)

            assert backends_seen(KERNEL_ONE_VIP, in_cg) == DIRECTS_ONLY
            before = dp.counters()
            assert backends_seen(SLOW_ONE_VIP, in_cg) == DIRECTS_ONLY
            after = dp.counters()  # the slow-path service was routed in user space
            assert after["fast"] == before["fast"] and after["route_user"] > before["route_user"]
            assert backends_seen(KERNEL_VIP, in_cg) == ALL_THREE
            assert backends_seen(L4_ONE_VIP, in_cg) == DIRECTS_ONLY  # connect4 chose it

            relay = BareRelay(None, eps[:1], 1)
            targets = {"direct": eps[0], "floor": ("127.0.0.1", relay.port),
                       "kernel": KERNEL_ONE_VIP, "l4": L4_ONE_VIP}
            try:
                before = dp.counters()
                low = paired.run(in_cg, targets, paired.response_body(eps[0]), requests=20,
                                 pace_ms=0, cpu=None, relay=relay, block=10, block_warm=2)
                after = dp.counters()
            finally:
                relay.close()
            assert set(low) == set(targets)
            for name, w in low.items():
                assert w["requests"] == 20 and 0 < w["p50_us"] <= w["p99_us"], (name, w)
            assert after["fast"] - before["fast"] == 2 * (10 + 2)  # the kernel target's
        finally:
            dp.close()
            shutil.rmtree(pin_dir_for(cg), ignore_errors=True)
