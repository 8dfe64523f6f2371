"""bpf/ logic that needs no kernel: host selection, the WRR ring, regex prefixes, id and range
allocation, the FNV hash and the limits parsed from sockmesh.h."""

from __future__ import annotations

from collections import Counter
from math import gcd

from hypothesis import given
from hypothesis import strategies as st

from bpf.encoder import IdAllocator, RangeAllocator, regex_literal_prefix
from bpf.hashing import fnv1a64
from bpf.lb import smooth_wrr_ring, usable_hosts
from bpf.limits import LIMITS, limit
from translator.tables import Cluster, Endpoint, Health, LbPolicy


def _eps(weights: list[int]) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", 1000 + i, weight=w) for i, w in enumerate(weights)]


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8))
def test_wrr_ring_is_exactly_proportional(weights: list[int]) -> None:
    hosts = _eps(weights)
    ring = smooth_wrr_ring(hosts)
    counts = Counter(h.port for h in ring)
    total = sum(weights)
    g = 0
    for w in weights:
        g = gcd(g, w)
    assert len(ring) == total // g
    for h, w in zip(hosts, weights, strict=True):
        assert counts[h.port] == w // g


def test_usable_hosts_health_priority_and_panic() -> None:
    a, b, c, d = _eps([1, 1, 1, 1])
    sick = Endpoint(c.address, c.port, health=Health.UNHEALTHY)
    drain = Endpoint(d.address, d.port, health=Health.DRAINING)
    cl = Cluster("x", LbPolicy.ROUND_ROBIN, (a, b, sick, drain), panic_threshold=40)
    assert usable_hosts(cl) == [a, b]  # 50% healthy >= 40%: no panic
    # DRAINING does not count (Envoy excludes it): 1 of 2 healthy = 50% < 51%: panic uses
    # every host, the draining one too
    cl = Cluster("x", LbPolicy.ROUND_ROBIN, (a, sick, drain), panic_threshold=51)
    assert usable_hosts(cl) == [a, sick, drain]
    p1 = Endpoint(b.address, b.port, priority=1)
    cl = Cluster("x", LbPolicy.ROUND_ROBIN, (sick, p1))
    assert usable_hosts(cl) == [p1]  # level 0 has no healthy host
    assert usable_hosts(Cluster("x", LbPolicy.ROUND_ROBIN, (a,), has_endpoints=False)) == []


def test_regex_literal_prefix() -> None:
    assert regex_literal_prefix("/re/[0-9]+") == "/re/"
    assert regex_literal_prefix("/ab?c") == "/a"
    assert regex_literal_prefix("/x{2}") == "/"
    assert regex_literal_prefix("(?i)/x") == ""
    assert regex_literal_prefix("/a|/b") == ""
    assert regex_literal_prefix("/plain") == "/plain"


def test_ids_are_stable_and_quarantined_before_reuse() -> None:
    ids = IdAllocator(10)
    a, b = ids.get("a"), ids.get("b")
    assert (a, b) == (1, 2) and ids.get("a") == 1
    ids.keep_only({"b"})
    assert ids.get("c") == 3  # "a"'s id waits one apply
    ids.keep_only({"b", "c"})
    assert ids.get("d") == 1


def test_ranges_keep_their_place_and_reuse_freed_space() -> None:
    r = RangeAllocator(100)
    assert r.get("v1", 3) == 1 and r.get("v2", 2) == 4
    r.finish({"v1", "v2"})
    assert r.get("v1", 3) == 1  # same length: same place
    assert r.get("v1", 5) == 6  # grew: moved
    r.finish({"v1", "v2"})
    assert r.get("v3", 3) == 1  # the freed range is reused by a later apply


def test_fnv_and_limits() -> None:
    assert fnv1a64(b"") == limit("FNV_OFFSET")
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C  # the published FNV-1a 64 test vector
    assert LIMITS["SM_MAX_SLOTS"] == limit("MAX_ENDPOINTS") * limit("POOL_PER_ENDPOINT")
    assert limit("REQ_BUF") & (limit("REQ_BUF") - 1) == 0
