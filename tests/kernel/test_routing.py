"""Per-request routing on one keep-alive connection (the product)."""

from __future__ import annotations

from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost
from translator.tables import PathKind, StringKind, ValueMatch

VIP, PORT = "127.10.0.1", 8080


def test_each_request_lands_on_its_routes_backend(mesh: Mesh, client: Client, backends) -> None:
    b1, b2, b3 = make_backends(backends, "b1", "b2", "b3")
    tables = http_tables(VIP, PORT, [vhost("svc", ["svc.test", "svc.test:8080"], [
        # last-match-wins order: the catch-all first
        rule("/", action=to("c1")),
        rule("/api", action=to("c2")),
        rule("/api/special", PathKind.EXACT, action=to("c3")),
        rule("/", action=to("c3"),
             headers=(ValueMatch("x-canary", StringKind.EXACT, "yes"),)),
    ])], [cluster("c1", [b1]), cluster("c2", [b2]), cluster("c3", [b3])])
    mesh.apply(tables)
    before = mesh.counters()
    client.connect("a", VIP, PORT)
    cases = [
        (http("GET", "/", "svc.test"), "b1"),
        (http("GET", "/api/x", "svc.test"), "b2"),
        (http("GET", "/api/special", "svc.test"), "b3"),
        (http("GET", "/api/special/x", "svc.test"), "b2"),
        (http("GET", "/other", "svc.test:8080", {"x-canary": "yes"}), "b3"),
        (http("GET", "/api", "svc.test", {"x-canary": "no"}), "b2"),
        (http("GET", "/", "SVC.TEST"), "b1"),
    ] * 5
    got = client.requests("a", [raw for raw, _ in cases])
    assert [r["headers"]["x-backend"] for r in got] == [want for _, want in cases]
    after = mesh.counters()
    assert after["fast"] - before["fast"] == len(cases)
    assert after["resp_done"] - before["resp_done"] == len(cases)
    slow = {k: after[k] - before[k] for k in ("not_http", "parse_limit", "pipelined",
                                              "pool_empty", "rule_user", "no_route")}
    assert not any(slow.values()), slow


def test_apply_writes_only_what_changed_and_dump_reads_it_back(mesh: Mesh, client: Client,
                                                                backends) -> None:
    b1, b2 = make_backends(backends, "b1", "b2")
    rules = [rule("/", action=to("c1")), rule("/api", action=to("c2"))]
    t1 = http_tables(VIP, PORT, [vhost("svc", ["svc.test"], rules)],
                     [cluster("c1", [b1]), cluster("c2", [b2])])
    mesh.apply(t1)
    assert mesh.apply(t1) == {"writes": 0, "deletes": 0}  # nothing changed
    # one rule's target changes: one rule entry is rewritten, nothing else
    changed = [rules[0], rule("/api", action=to("c1"))]
    t2 = http_tables(VIP, PORT, [vhost("svc", ["svc.test"], changed)],
                     [cluster("c1", [b1]), cluster("c2", [b2])])
    assert mesh.apply(t2) == {"writes": 1, "deletes": 0}
    local = client.connect("a", VIP, PORT)
    assert client.request("a", http("GET", "/api", "svc.test"))["headers"]["x-backend"] == "b1"
    d = mesh.dp.dump()
    assert {"vip": VIP, "port": PORT, "kind": "http", "id": d["services"][0]["id"],
            "name": "rt"} in d["services"]
    assert {c["name"] for c in d["clusters"]} >= {"c1", "c2"}
    me = next(c for c in d["clients"] if c["client"] == f"{local[0]}:{local[1]}")
    assert (me["service"], me["route_table"], me["requests"], me["last_cluster"]) == (
        f"{VIP}:{PORT}", "rt", 1, "c1")
    eps = {e["addr"]: e for e in d["endpoints"]}
    assert eps[f"{b1.host}:{b1.port}"]["pool"].count("idle") >= 2


def test_wildcard_service_and_specific_vip_precedence(mesh: Mesh, client: Client,
                                                      backends) -> None:
    """Istio's 0.0.0.0_PORT listeners: any VIP on the port, a specific VIP:port wins."""
    from dataclasses import replace

    b1, b2 = make_backends(backends, "b1", "b2")
    t = http_tables("0.0.0.0", 8099, [vhost("any", ["*"], [rule("/", action=to("c1"))])],
                    [cluster("c1", [b1]), cluster("c2", [b2])], rt_name="wild")
    specific = http_tables("127.10.0.99", 8099, [vhost("one", ["*"], [rule("/", action=to("c2"))])],
                           [], rt_name="one")
    t = replace(t, services=t.services + specific.services,
                route_tables={**t.route_tables, **specific.route_tables})
    mesh.apply(t)
    for i, vip in enumerate(("127.10.0.97", "127.10.0.98", "127.10.0.99")):
        client.connect(f"c{i}", vip, 8099)
        r = client.request(f"c{i}", http("GET", "/", f"{vip}:8099"))
        assert r["headers"]["x-backend"] == ("b2" if vip.endswith(".99") else "b1")
