"""Load balancing in kernel with Envoy's semantics."""

from __future__ import annotations

import base64
import collections
from collections.abc import Iterator

import pytest

from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost
from translator.tables import (
    Cluster,
    Endpoint,
    Health,
    LbPolicy,
    Service,
    ServiceKind,
    Tables,
)

VIP, PORT = "127.10.0.3", 8082
L4_VIP, L4_PORT = "127.10.0.6", 9001
HOST = "lb.test"


def _apply(mesh: Mesh, c: Cluster) -> None:
    mesh.apply(http_tables(VIP, PORT, [vhost("lb", [HOST], [rule("/", action=to(c.name))])],
                              [c]))


def _hits(client: Client, n: int) -> collections.Counter[str]:
    client.connect("a", VIP, PORT)
    rs = client.requests("a", [http("GET", f"/r{i}", HOST) for i in range(n)])
    return collections.Counter(r["headers"]["x-backend"] for r in rs)


def _fast_only(mesh: Mesh, before: dict[str, int], n: int) -> None:
    after = mesh.counters()
    assert after["fast"] - before["fast"] == n


@pytest.fixture
def warm_pools(mesh: Mesh) -> Iterator[None]:
    """Enough pooled connections that concurrent tests stay on the kernel path."""
    old = mesh.dp.pools.warm
    mesh.dp.pools.warm = 12
    try:
        yield
    finally:
        mesh.dp.pools.warm = old


def test_round_robin_is_exactly_even(mesh: Mesh, client: Client, backends) -> None:
    bs = make_backends(backends, "r1", "r2", "r3")
    _apply(mesh, cluster("rr", bs))
    before = mesh.counters()
    hits = _hits(client, 300)
    assert hits == {"r1": 100, "r2": 100, "r3": 100}
    _fast_only(mesh, before, 300)


def test_weighted_round_robin_is_proportional_per_cycle(mesh: Mesh, client: Client,
                                                        backends) -> None:
    bs = make_backends(backends, "w1", "w2", "w3")
    _apply(mesh, cluster("wrr", bs, weights=[1, 2, 3]))
    before = mesh.counters()
    hits = _hits(client, 600)  # 100 cycles of the 6-entry ring
    assert hits == {"w1": 100, "w2": 200, "w3": 300}
    _fast_only(mesh, before, 600)


def test_random_passes_chi_square(mesh: Mesh, client: Client, backends) -> None:
    bs = make_backends(backends, "x1", "x2", "x3", "x4")
    _apply(mesh, cluster("rnd", bs, policy=LbPolicy.RANDOM))
    before = mesh.counters()
    n = 800
    hits = _hits(client, n)
    expected = n / 4
    chi2 = sum((hits[b.name] - expected) ** 2 / expected for b in bs)
    assert chi2 < 16.27, (chi2, hits)  # df=3, p=0.001
    # and it is not round robin in disguise: exact equality is unlikely (< 1%)
    assert len(set(hits.values())) > 1, hits
    _fast_only(mesh, before, n)


def test_unhealthy_and_draining_never_chosen(mesh: Mesh, client: Client, backends) -> None:
    bs = make_backends(backends, "h1", "h2", "h3", "sick", "drain")
    health = [Health.HEALTHY, Health.UNKNOWN, Health.HEALTHY, Health.UNHEALTHY, Health.DRAINING]
    c = Cluster("health", LbPolicy.ROUND_ROBIN,
                tuple(Endpoint(b.host, b.port, health=h) for b, h in zip(bs, health, strict=True)))
    _apply(mesh, c)
    hits = _hits(client, 150)
    assert hits == {"h1": 50, "h2": 50, "h3": 50}


def test_lowest_priority_with_healthy_hosts_takes_traffic(mesh: Mesh, client: Client,
                                                          backends) -> None:
    p0, p1 = make_backends(backends, "p0", "p1")
    c = Cluster("prio", LbPolicy.ROUND_ROBIN, (
        Endpoint(p0.host, p0.port, priority=0, health=Health.UNHEALTHY),
        Endpoint(p1.host, p1.port, priority=1)))
    _apply(mesh, c)
    assert _hits(client, 20) == {"p1": 20}
    c = Cluster("prio", LbPolicy.ROUND_ROBIN, (
        Endpoint(p0.host, p0.port, priority=0), Endpoint(p1.host, p1.port, priority=1)))
    _apply(mesh, c)  # a diff: only the host list changes
    client.cmd(op="close", conn="a")
    assert _hits(client, 20) == {"p0": 20}


def _parallel(client: Client, conns: int, per_conn: int) -> collections.Counter[str]:
    raws = [base64.b64encode(http("GET", f"/p{i}", HOST)).decode() for i in range(per_conn)]
    out = client.cmd(op="parallel", n=conns, host=VIP, port=PORT, raws=raws)["results"]
    hits: collections.Counter[str] = collections.Counter()
    for res in out:
        assert isinstance(res, list), res
        for r in res:
            hits[r["headers"]["x-backend"]] += 1
    return hits


@pytest.mark.parametrize("weights,limit_share", [(None, 0.25), ([1, 1, 2], 0.4)],
                         ids=["p2c", "weighted"])
def test_least_request_steers_away_from_slow_endpoint(mesh: Mesh, client: Client, backends,
                                                      warm_pools, weights, limit_share) -> None:
    f1, f2, slow = make_backends(backends, "f1", "f2", "slow")
    slow.delay_s = 0.1
    _apply(mesh, cluster("lr", [f1, f2, slow], policy=LbPolicy.LEAST_REQUEST, weights=weights))
    before = mesh.counters()
    hits = _parallel(client, 8, 12)
    total = sum(hits.values())
    assert total == 96
    # round robin would give the slow endpoint 1/3 (1/2 weighted); least request far less
    assert hits["slow"] / total < limit_share, hits
    after = mesh.counters()
    assert after["fast"] - before["fast"] >= 0.9 * total


def _spill(bs: list, policy: LbPolicy) -> Cluster:
    """P=0: one or two healthy hosts and as many unhealthy ones (50% healthy: 70% of the
    traffic at overprovisioning 140); P=1: one healthy host takes the other 30%."""
    half = len(bs) - 1
    eps = [Endpoint(b.host, b.port, priority=0,
                    health=Health.HEALTHY if i < half // 2 else Health.UNHEALTHY)
           for i, b in enumerate(bs[:half])]
    eps.append(Endpoint(bs[-1].host, bs[-1].port, priority=1))
    return Cluster(f"spill-{policy.value.lower()}", policy, tuple(eps))


def test_round_robin_spills_over_priorities_exactly(mesh: Mesh, client: Client,
                                                    backends) -> None:
    bs = make_backends(backends, "s0", "down", "s1")
    _apply(mesh, _spill(bs, LbPolicy.ROUND_ROBIN))
    before = mesh.counters()
    hits = _hits(client, 300)  # 30 cycles of the 10-entry ring (7 x P=0, 3 x P=1)
    assert hits == {"s0": 210, "s1": 90}
    _fast_only(mesh, before, 300)


def test_random_spills_over_priorities_by_load(mesh: Mesh, client: Client, backends) -> None:
    bs = make_backends(backends, "q0", "q1", "down0", "down1", "q2")
    _apply(mesh, _spill(bs, LbPolicy.RANDOM))
    before = mesh.counters()
    n = 1000
    hits = _hits(client, n)
    expected = {"q0": 0.35 * n, "q1": 0.35 * n, "q2": 0.30 * n}
    assert set(hits) == set(expected), hits
    chi2 = sum((hits[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2 < 13.82, (chi2, hits)  # df=2, p=0.001
    _fast_only(mesh, before, n)


def test_least_request_spill_goes_to_user_space(mesh: Mesh, client: Client, backends) -> None:
    bs = make_backends(backends, "l0", "down", "l1")
    _apply(mesh, _spill(bs, LbPolicy.LEAST_REQUEST))
    before = mesh.counters()
    n = 400
    hits = _hits(client, n)
    after = mesh.counters()
    assert after["fast"] == before["fast"]
    assert after["limit"] > before["limit"]
    assert set(hits) == {"l0", "l1"} and sum(hits.values()) == n, hits
    sd = (n * 0.7 * 0.3) ** 0.5
    assert abs(hits["l0"] - 0.7 * n) < 5 * sd, hits


def test_l4_least_request_spill_samples_the_ring(mesh: Mesh, client: Client, backends) -> None:
    bs = make_backends(backends, "t0", "down", "t1")
    c = _spill(bs, LbPolicy.LEAST_REQUEST)
    mesh.apply(Tables(services=(Service(L4_VIP, L4_PORT, ServiceKind.TCP, cluster=c.name),),
                         clusters={c.name: c}))
    before = mesh.counters()
    n = 200
    hits: collections.Counter[str] = collections.Counter()
    for i in range(n):
        client.connect(f"l4-{i}", L4_VIP, L4_PORT)
        hits[client.request(f"l4-{i}", http("GET", "/", "l4"))["headers"]["x-backend"]] += 1
        client.cmd(op="close", conn=f"l4-{i}")
    assert mesh.counters()["l4"] - before["l4"] == n
    assert set(hits) == {"t0", "t1"}, hits
    sd = (n * 0.7 * 0.3) ** 0.5
    assert abs(hits["t0"] - 0.7 * n) < 5 * sd, hits
