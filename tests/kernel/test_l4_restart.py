"""L4 services, pinned state across a loader restart, limits."""

from __future__ import annotations

import json
import subprocess

from tests.kernel.backend import Backend
from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost
from translator.tables import Service, ServiceKind, Tables

VIP, PORT = "127.10.0.4", 8083
L4_VIP, L4_PORT = "127.10.0.5", 9000
HOST = "r.test"


def test_l4_service_picks_endpoint_at_connect(mesh: Mesh, client: Client, backends) -> None:
    t1, t2 = make_backends(backends, "t1", "t2")
    c = cluster("tcp", [t1, t2])
    mesh.dp.apply(Tables(services=(Service(L4_VIP, L4_PORT, ServiceKind.TCP, cluster="tcp"),),
                         clusters={"tcp": c}))
    before = mesh.counters()
    seen = []
    for i in range(4):
        client.connect(f"c{i}", L4_VIP, L4_PORT)
        r = client.request(f"c{i}", http("GET", "/", "anything"))
        seen.append(r["headers"]["x-backend"])
        # no splice: the connection is not in the per-connection state of the L7 path
        st = client.cmd(op="close", conn=f"c{i}")
        assert st == {}
    assert seen == ["t1", "t2", "t1", "t2"] or seen == ["t2", "t1", "t2", "t1"]
    after = mesh.counters()
    assert after["l4"] - before["l4"] == 4
    assert after["fast"] == before["fast"]


def _prog_ids(mesh: Mesh) -> dict[str, int]:
    out = {}
    for p in mesh.dp.pin_dir.glob("prog_*"):
        info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(p)],
                                         check=True, capture_output=True, text=True).stdout)
        out[p.name] = info["id"]
    return out


def test_loader_restart_reuses_pins_and_connection_keeps_flowing(mesh: Mesh, client: Client,
                                                                  backends) -> None:
    b1, b2 = make_backends(backends, "b1", "b2")
    mesh.apply(http_tables(VIP, PORT, [vhost("r", [HOST], [
        rule("/", action=to("c1")), rule("/two", action=to("c2"))])],
        [cluster("c1", [b1]), cluster("c2", [b2])]))
    client.connect("a", VIP, PORT)
    assert client.request("a", http("GET", "/", HOST))["headers"]["x-backend"] == "b1"
    ids = _prog_ids(mesh)
    loader = mesh.dp.restart_loader()
    assert loader.reused
    assert _prog_ids(mesh) == ids  # the same programs, not recompiled
    before = mesh.counters()
    rs = client.requests("a", [http("GET", p, HOST) for p in ("/two", "/", "/two/x")])
    assert [r["headers"]["x-backend"] for r in rs] == ["b2", "b1", "b2"]
    assert mesh.counters()["fast"] - before["fast"] == 3
    client.connect("b", VIP, PORT)  # and new connections are spliced as before
    assert client.request("b", http("GET", "/two", HOST))["headers"]["x-backend"] == "b2"


def test_weighted_ring_over_the_limit_goes_to_user_space(mesh: Mesh, client: Client,
                                                          backends) -> None:
    w1, w2 = make_backends(backends, "w1", "w2")
    mesh.dp.apply(http_tables(VIP, PORT, [vhost("r", [HOST], [rule("/", action=to("big"))])],
                              [cluster("big", [w1, w2], weights=[1, 300])]))
    assert any("big" in r for r in mesh.dp.encoder.user_reasons)
    client.connect("a", VIP, PORT)
    before = mesh.counters()
    r = client.request("a", http("GET", "/", HOST))
    assert r["headers"]["x-backend"] in ("w1", "w2")
    assert mesh.counters()["limit"] - before["limit"] == 1


def test_pooled_connections_closed_by_the_backend_are_replaced(mesh: Mesh, client: Client,
                                                               backends) -> None:
    import time

    (b1,) = make_backends(backends, "b1")
    mesh.apply(http_tables(VIP, PORT, [vhost("r", [HOST], [rule("/", action=to("c1"))])],
                           [cluster("c1", [b1])]))
    client.connect("a", VIP, PORT)
    assert client.request("a", http("GET", "/", HOST))["body"] == b"b1"
    pools = mesh.dp.pools
    before, replaced = mesh.counters(), pools.replaced
    b1.drop_connections()  # every pooled connection sees a FIN (a zero-length skb in sk_skb)
    deadline = time.monotonic() + 5
    while pools.replaced - replaced < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert mesh.counters()["pool_fin"] - before["pool_fin"] >= 2
    assert pools.replaced - replaced >= 2
    rs = client.requests("a", [http("GET", f"/after{i}", HOST) for i in range(20)])
    assert all(r["body"] == b"b1" for r in rs)
    assert mesh.counters()["fast"] - before["fast"] >= 20


def test_removed_endpoint_finishes_its_in_flight_request(mesh: Mesh, client: Client,
                                                         backends) -> None:
    import time

    old, new = make_backends(backends, "old", "new")

    def tables(b: Backend) -> Tables:
        return http_tables(VIP, PORT, [vhost("r", [HOST], [rule("/", action=to("c1"))])],
                           [cluster("c1", [b])])

    mesh.dp.apply(tables(old))
    client.connect("a", VIP, PORT)
    client.send("a", http("GET", "/slow/300", HOST))
    deadline = time.monotonic() + 5
    while old.active == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert old.active == 1  # the request is on a pooled connection to "old"
    mesh.dp.apply(tables(new))  # EDS: "old" leaves the cluster while the request is in flight
    (r,) = client.pipeline("a", b"", ["GET"])
    assert (r["status"], r["body"]) == (200, b"old")
    assert client.request("a", http("GET", "/", HOST))["body"] == b"new"
