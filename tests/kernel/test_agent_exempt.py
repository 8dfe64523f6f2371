"""connect4 never intercepts the datapath's own sockets, also when the agent runs inside the
attached cgroup's subtree (a DaemonSet attached to kubepods.slice, its own pod inside it).

A parent test cgroup P carries the programs; the socket keeper (the real one, which owns
the pools and the slow path's upstream sockets) runs in P/agent, a probe client in P/app:
  (a) an Istio ``0.0.0.0:PORT`` HTTP entry on the backend's port: the client's request to a
      VIP is served, and the pools' own connects to the backend reach the backend instead
      of being redirected to the splice listener (no loop);
  (b) REGISTRY_ONLY (the ``0.0.0.0:0`` blackhole entry): the pools still connect to an
      endpoint on a port no service names, while the client's unknown destination is
      refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf.loader import own_cgroup
from integration.kept_datapath import KeptDatapath
from tests.kernel.conftest import make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost
from tests.kernel.test_outbound_policy import probe
from translator.tables import BLACKHOLE_CLUSTER, Service, ServiceKind, Tables

VIP, PORT = "127.10.9.61", 8094  # (b)'s known service
ANY_VIP = "127.10.9.62"  # (a): no entry names it; the 0.0.0.0:PORT entry matches it
UNKNOWN = "127.30.0.2"
ENDPOINT_HOST = "127.0.0.2"  # not 127.0.0.1, which REGISTRY_ONLY exempts anyway
POOL_TIMEOUT_S = 10.0


@contextlib.contextmanager
def joined(cgroup: Path) -> Iterator[None]:
    """This process in ``cgroup`` for the block (what it starts is born there), then back."""
    home = own_cgroup()
    assert home is not None, "this process's cgroup v2 directory not found"
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield
    finally:
        (home / "cgroup.procs").write_text(str(os.getpid()))


def _addr(hexaddr: str) -> tuple[str, int]:
    ip, port = hexaddr.split(":")
    return socket.inet_ntoa(bytes.fromhex(ip)[::-1]), int(port, 16)


def peers_of(pid: int) -> list[tuple[str, int]]:
    """Remote addresses of the established IPv4 TCP sockets process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01" and f[9] in inodes:  # ESTABLISHED
            out.append(_addr(f[2]))
    return out


def wait_pool_connections(kd: KeptDatapath, backend_addr: tuple[str, int]) -> list:
    """Poll until the keeper holds an established connection to ``backend_addr``; returns
    the keeper's peers then (or at the deadline)."""
    assert kd.keeper is not None
    deadline = time.monotonic() + POOL_TIMEOUT_S
    while True:
        peers = peers_of(kd.keeper.pid)
        if backend_addr in peers or time.monotonic() > deadline:
            return peers
        time.sleep(0.02)


@pytest.fixture(scope="module")
def agent_inside() -> Iterator[tuple[KeptDatapath, Path]]:
    """The keeper's datapath attached to P, the keeper in P/agent; yields it and P/app."""
    from tests.support import cgroup as cgsupport

    cgsupport.sweep_leftovers()
    with cgsupport.test_cgroup() as parent:
        agent, app = parent / "agent", parent / "app"
        agent.mkdir()
        app.mkdir()
        kd = KeptDatapath([parent], cgsupport.pin_dir_for(parent))
        try:
            with joined(agent):
                kd.load()
            assert kd.keeper is not None
            assert str(kd.keeper.pid) in (agent / "cgroup.procs").read_text().split()
            yield kd, app
        finally:
            kd.close(detach=True)  # detaches, unpins, and the keeper (our child) exits
            for sub in (agent, app):
                for _ in range(250):  # its last processes are exiting
                    try:
                        sub.rmdir()
                        break
                    except OSError:
                        time.sleep(0.02)


def test_pool_connects_are_not_redirected_to_the_splice_listener(agent_inside, backends) -> None:
    kd, app = agent_inside
    (b,) = make_backends(backends, "b")  # 127.0.0.1:<port>
    assert kd.keeper is not None
    splice = tuple(kd.keeper.info["splice"])
    # Istio's 0.0.0.0_PORT HTTP listener on the backend's own port
    tables = http_tables("0.0.0.0", b.port, [vhost("r", ["*"], [rule("/", action=to("c"))])],
                         [cluster("c", [b])])
    kd.apply(tables)
    peers = wait_pool_connections(kd, b.addr)
    assert b.addr in peers, f"no pool connection reached the backend: {peers}"
    assert splice not in peers, "the keeper's own connect was redirected to its splice listener"
    fast = kd.counters()["fast"]
    got = probe(app, [("tcp", ANY_VIP, b.port)])
    assert got == [{"connect": 0, "status": 200, "backend": "b"}]
    assert kd.counters()["fast"] > fast, "the client's request did not take the kernel path"
    assert splice not in peers_of(kd.keeper.pid)


def test_pools_reach_unlisted_endpoints_under_registry_only(agent_inside, backends) -> None:
    kd, app = agent_inside
    (known,) = make_backends(backends, "known", host=ENDPOINT_HOST)
    (unknown,) = make_backends(backends, "unknown", host=UNKNOWN)
    policy = Service("0.0.0.0", 0, ServiceKind.BLACKHOLE, cluster=BLACKHOLE_CLUSTER)
    # the policy first: the pools connect to a new endpoint before the maps name it
    kd.apply(Tables(services=(policy,)))
    kd.apply(http_tables(VIP, PORT, [vhost("r", ["*"], [rule("/", action=to("c"))])],
                         [cluster("c", [known])], extra_services=(policy,)))
    # the endpoint's port is named by no entry: only the catch-all blackhole matches it
    peers = wait_pool_connections(kd, known.addr)
    assert known.addr in peers, f"the pools could not connect to the endpoint: {peers}"
    before = kd.counters()["blackhole"]
    got = probe(app, [("tcp", VIP, PORT), ("tcp", UNKNOWN, unknown.port)])
    assert got == [{"connect": 0, "status": 200, "backend": "known"}, {"connect": errno.EPERM}]
    assert kd.counters()["blackhole"] - before == 1  # the client's; none of the keeper's
    assert unknown.requests == 0


def test_an_agent_in_an_attached_cgroup_is_named_at_load(caplog: pytest.LogCaptureFixture) -> None:
    """The operator put the agent in the applications' cgroup: the loader says so (that
    cgroup's applications are exempt too) and records that cgroup's id."""
    import ctypes as C

    from bpf import layout
    from bpf.loader import Loader
    from bpf.maps import PinnedMap
    from tests.support import cgroup as cgsupport

    with cgsupport.test_cgroup() as cg:
        loader = Loader([cg], cgsupport.pin_dir_for(cg))
        try:
            with joined(cg), caplog.at_level("WARNING", logger="bpf.loader"):
                loader.load()
            cfg = PinnedMap(loader.map_path(layout.CONFIG_MAP), C.c_uint32, layout.Config)
            try:
                assert cfg.get(0).agent_cgroup == os.stat(cg).st_ino
            finally:
                cfg.close()
        finally:
            loader.close(detach=True)
    warned = [r.getMessage() for r in caplog.records if "attached cgroups" in r.getMessage()]
    assert len(warned) == 1 and str(cg) in warned[0], caplog.text
