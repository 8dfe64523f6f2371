"""sk_skb frames each response in a per-CPU window of its own nesting level.

sk_skb runs in softirq and, for a pooled socket whose backlog is processed at release_sock,
in process context with softirqs enabled: on one CPU a second run can start in the middle of
a first one's framing pass.  sm_skbdepth_v1 counts the passes in progress on each CPU, and
each pass frames in the window of its level (sm_skbwin_v2); a pass nested deeper than the
windows delivers its skb unframed and retires the pooled connection.  Nesting cannot be
produced on demand from user space, so these tests set the counter as a nested pass finds it.
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Iterator

import pytest

from bpf.limits import limit
from bpf.maps import PinnedMap
from integration.processes import poll_until
from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost

VIP, PORT = "127.10.0.13", 8093
HOST = "window.test"
LEVELS = limit("WIN_LEVELS")


@pytest.fixture
def depth(mesh: Mesh) -> Iterator[PinnedMap]:
    m = PinnedMap(mesh.dp.pin_dir / "sm_skbdepth_v1", C.c_uint32, C.c_uint64, percpu=True)
    try:
        yield m
    finally:
        _set(m, 0)
        m.close()


def _set(m: PinnedMap, value: int) -> None:
    m.set(0, [value] * len(m.get(0)))


def _values(m: PinnedMap) -> list[int]:
    return [int(v.value) for v in m.get(0)]


def _serve(mesh: Mesh, backends) -> None:
    (b,) = make_backends(backends, "w1")
    mesh.apply(http_tables(VIP, PORT, [vhost("window", [HOST], [rule("/", action=to("w"))])],
                           [cluster("w", [b])]))


def test_a_nested_pass_frames_in_its_own_window_and_gives_its_level_back(
        mesh: Mesh, client: Client, backends, depth: PinnedMap) -> None:
    _serve(mesh, backends)
    _set(depth, 1)  # every CPU as if inside another sk_skb pass
    before = mesh.counters()
    client.connect("a", VIP, PORT)
    # a head, a body over many skbs, a chunked body over tail-called passes, no body
    paths = ["/", "/big/1048576", "/chunked/200", "/status/204", "/"]
    rs = client.requests("a", [http("GET", p, HOST) for p in paths])
    assert [r["status"] for r in rs] == [200, 200, 200, 204, 200]
    assert len(rs[1]["body"]) == 1 << 20 and rs[1]["body"].startswith(b"w1-")
    assert rs[2]["body"] == b"".join(f"w1-{i};".encode() for i in range(200))
    after = mesh.counters()
    assert after["fast"] - before["fast"] == len(paths)
    assert after["resp_done"] - before["resp_done"] == len(paths)
    assert after["resp_lost"] == before["resp_lost"]
    assert _values(depth) == [1] * len(_values(depth))  # each pass gave its level back


def test_a_pass_nested_deeper_than_the_windows_delivers_unframed_and_retires(
        mesh: Mesh, client: Client, backends, depth: PinnedMap) -> None:
    _serve(mesh, backends)
    pools = mesh.dp.pools
    replaced = pools.replaced
    client.connect("a", VIP, PORT)
    _set(depth, LEVELS)
    before = mesh.counters()
    r = client.request("a", http("GET", "/", HOST))
    assert (r["status"], r["headers"]["x-backend"]) == (200, "w1")  # the bytes still arrive
    after = mesh.counters()
    assert after["resp_lost"] - before["resp_lost"] == 1  # not framed: connection retired
    assert after["resp_done"] == before["resp_done"]
    assert _values(depth) == [LEVELS] * len(_values(depth))
    poll_until(lambda: pools.replaced > replaced, 5, "the retired pooled connection replaced")

    _set(depth, 0)
    r = client.request("a", http("GET", "/", HOST))
    assert r["headers"]["x-backend"] == "w1"
    assert mesh.counters()["resp_done"] - after["resp_done"] == 1
