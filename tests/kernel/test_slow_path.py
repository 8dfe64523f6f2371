"""Every reason the kernel hands a request to user space, each with correct routing, and the
connection returning to the kernel path afterwards."""

from __future__ import annotations

import ctypes as C

import pytest

from bpf.limits import limit
from tests.kernel.backend import EchoBackend
from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost
from translator.tables import (
    Action,
    ActionKind,
    Endpoint,
    Health,
    LbPolicy,
    PathKind,
    StringKind,
    ValueMatch,
)
from translator.tables import Cluster as TCluster

VIP, PORT = "127.10.0.2", 8081
HOST = "svc.test"


@pytest.fixture
def routed(mesh: Mesh, backends):
    b1, b2, b3 = make_backends(backends, "b1", "b2", "b3")
    echo = EchoBackend()
    rules = [
        rule("/", action=to("c1")),
        rule("/api", action=to("c2")),
        rule(r"/re/[0-9]+", PathKind.REGEX, action=to("c3")),
        rule("/special", PathKind.PREFIX, action=to("c3"), needs_slow_path=("retry_policy",)),
        rule("/teapot", PathKind.EXACT,
             action=Action(ActionKind.DIRECT_RESPONSE, status=418, body="short and stout")),
        rule("/dead", action=to("c_dead")),
        rule("/q", action=to("c3"),
             query=(ValueMatch("v", StringKind.EXACT, "3"),)),
    ]
    many = [rule(f"/many/{i}", PathKind.EXACT, action=to("c1")) for i in range(300)]
    many.append(rule("/many/x", PathKind.EXACT, action=to("c2")))
    # panic off: with Envoy's default 50% a cluster of only unhealthy hosts panics and
    # routes to them anyway
    dead = TCluster("c_dead", LbPolicy.ROUND_ROBIN,
                    (Endpoint(b1.host, b1.port, health=Health.UNHEALTHY),), panic_threshold=0)
    tables = http_tables(VIP, PORT, [
        vhost("svc", [HOST], rules),
        vhost("many", ["many.test"], many),
        vhost("raw", ["*"], [rule("/", action=to("c_echo"))]),
    ], [cluster("c1", [b1]), cluster("c2", [b2]), cluster("c3", [b3]), dead,
        cluster("c_echo", [echo])])
    mesh.apply(tables)
    yield b1, b2, b3, echo
    echo.close()


def _delta(mesh: Mesh, before: dict[str, int]) -> dict[str, int]:
    after = mesh.counters()
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def _then_fast(mesh: Mesh, client: Client, local: tuple[str, int]) -> None:
    """After a hand-off the connection goes back to the kernel for the next request."""
    mesh.wait_released(local)
    before = mesh.counters()
    r = client.request("a", http("GET", "/api/back", HOST))
    assert r["headers"]["x-backend"] == "b2"
    assert _delta(mesh, before).get("fast") == 1


CASES = [
    # (reason, request, expected backend or status)
    ("not_http", b"GET /api/old HTTP/1.0\r\nHost: svc.test\r\n\r\n", "b2"),
    ("parse_limit", http("GET", "/api/" + "x" * (limit("PATH_MAX") + 10), HOST), "b2"),
    ("parse_limit", http("GET", "/api/h", HOST, {f"x-h{i}": "v" * 40 for i in range(30)}), "b2"),
    ("rule_user", http("GET", "/re/123", HOST), "b3"),
    ("rule_user", http("GET", "/q?v=3", HOST), "b3"),
    ("route_user", http("GET", "/special/1", HOST), "b3"),
    ("route_user", http("GET", "/teapot", HOST), 418),
    ("limit", http("GET", "/many/x", "many.test"), "b2"),
    # a length and a chunked coding together (a smuggling vector): user space refuses it
    # with 400 and closes, as Envoy does by default (tests/reliability: the HTTP corpus)
    ("chunked_req", http("POST", "/api/up", HOST, {"Content-Length": "3"}, body=b"z" * 5000,
                         chunked=True), 400),
    ("no_host", http("GET", "/dead", HOST), 503),
]


@pytest.mark.parametrize("reason,raw,want", CASES, ids=[c[0] for c in CASES])
def test_hand_off_routes_like_the_model(mesh: Mesh, client: Client, routed, reason: str,
                                        raw: bytes, want: object) -> None:
    local = client.connect("a", VIP, PORT)
    before = mesh.counters()
    r = client.request("a", raw)
    d = _delta(mesh, before)
    assert d.get(reason, 0) >= 1, d
    if isinstance(want, int):
        assert r["status"] == want
    else:
        assert r["headers"]["x-backend"] == want
    if want == 400:  # refused and closed: the next connection is the kernel's again
        assert r["headers"].get("connection") == "close"
        client.cmd(op="close", conn="a")
        local = client.connect("a", VIP, PORT)
    _then_fast(mesh, client, local)


def test_no_route_is_a_local_404(mesh: Mesh, client: Client, backends) -> None:
    (b1,) = make_backends(backends, "b1")
    mesh.apply(http_tables(VIP, PORT, [vhost("svc", [HOST], [rule("/api", action=to("c1"))])],
                              [cluster("c1", [b1])]))
    local = client.connect("a", VIP, PORT)
    for raw in (http("GET", "/", HOST), http("GET", "/api", "other.test")):
        before = mesh.counters()
        r = client.request("a", raw)
        assert r["status"] == 404
        assert _delta(mesh, before).get("no_route", 0) + _delta(mesh, before).get("sticky", 0) >= 1
        mesh.wait_released(local)
    assert client.request("a", http("GET", "/api/x", HOST))["headers"]["x-backend"] == "b1"


def test_pipelined_requests_answered_in_order(mesh: Mesh, client: Client, routed) -> None:
    local = client.connect("a", VIP, PORT)
    before = mesh.counters()
    raw = http("GET", "/api/1", HOST) + http("GET", "/", HOST) + http("GET", "/api/2", HOST)
    rs = client.pipeline("a", raw, ["GET", "GET", "GET"])
    assert [r["headers"]["x-backend"] for r in rs] == ["b2", "b1", "b2"]
    assert [r["headers"]["x-path"] for r in rs] == ["/api/1", "/", "/api/2"]
    assert _delta(mesh, before).get("pipelined", 0) >= 1
    _then_fast(mesh, client, local)


@pytest.mark.parametrize("payload", [
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)),  # TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 connection preface
], ids=["tls_client_hello", "h2_preface"])
def test_non_http_bytes_relayed_opaquely(mesh: Mesh, client: Client, routed,
                                         payload: bytes) -> None:
    client.connect("a", VIP, PORT)
    before = mesh.counters()
    client.send("a", payload)
    assert client.recv_n("a", len(payload)) == payload  # the catch-all route's echo backend
    assert _delta(mesh, before).get("not_http", 0) >= 1


def test_exhausted_pool_goes_to_user_space_then_grows(mesh: Mesh, client: Client,
                                                      routed) -> None:
    _, b2, *_ = routed
    pools = mesh.dp.pools
    ep = next(i for i, a in mesh.dp.encoder.endpoints().items() if a == (b2.host, b2.port))
    local = client.connect("a", VIP, PORT)
    with pools.paused():
        size = pools.size(ep)
        pools.eppool.set(ep, C.c_uint32(0))  # as if every pooled connection were busy
        before = mesh.counters()
        r = client.request("a", http("GET", "/api/p", HOST))
        assert r["headers"]["x-backend"] == "b2"
        assert _delta(mesh, before).get("pool_empty") == 1
        pools.eppool.set(ep, C.c_uint32(size))
    mesh.wait_released(local)
    before = mesh.counters()
    assert client.request("a", http("GET", "/api/q", HOST))["headers"]["x-backend"] == "b2"
    assert _delta(mesh, before).get("fast") == 1


def test_kept_upstream_closed_by_keepalive_timeout_is_not_reused(mesh: Mesh, client: Client,
                                                                 backends) -> None:
    """The slow path keeps its upstream connection per client connection; when the backend
    closes it (keep-alive timeout) the next request goes on a new one, sent exactly once,
    and a POST without a retry policy still succeeds (nothing was sent on the dead one)."""
    from integration.processes import poll_until
    from tests.kernel.backend import Backend

    kb = Backend("kb", idle_timeout=0.3)
    backends["kb"] = kb
    mesh.apply(http_tables(VIP, PORT, [vhost("svc", [HOST], [
        rule(r"/re/[0-9]+", PathKind.REGEX, action=to("ck"))])], [cluster("ck", [kb])]))
    client.connect("a", VIP, PORT)
    before = mesh.counters()
    r = client.request("a", http("POST", "/re/1", HOST, body=b"one"))
    assert r["status"] == 200
    # the kept upstream, not one of the kernel's pooled connections (they time out too)
    kept = int(r["headers"]["x-peer-port"])
    poll_until(lambda: kept in kb.closed_peers, 10, "the backend closing the idle kept connection")
    r = client.request("a", http("POST", "/re/2", HOST, body=b"two"))
    assert r["status"] == 200 and r["headers"]["x-backend"] == "kb", r
    assert kb.hits["/re/1"] == 1 and kb.hits["/re/2"] == 1, kb.hits
    assert _delta(mesh, before).get("rule_user", 0) >= 2
