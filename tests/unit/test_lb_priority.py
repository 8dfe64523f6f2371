"""bpf.lb's priority load, degraded hosts and panic against the tables in Envoy's docs
(arch_overview/upstream/load_balancing: priority levels, degraded endpoints, panic threshold)
and against Envoy's integer arithmetic where the docs round differently."""

from __future__ import annotations

from collections import Counter

import pytest

from bpf.lb import SPILL_WEIGHT, Picker, plan, priority_slots
from translator.tables import Cluster, Endpoint, Health, LbPolicy

H, D, U = Health.HEALTHY, Health.DEGRADED, Health.UNHEALTHY


def level(priority: int, healthy: int, degraded: int = 0,
          unhealthy: int | None = None) -> list[Endpoint]:
    """100 hosts (percentages are host counts) unless ``unhealthy`` is given."""
    if unhealthy is None:
        unhealthy = 100 - healthy - degraded
    kinds = [H] * healthy + [D] * degraded + [U] * unhealthy
    base = 10000 + 1000 * priority
    return [Endpoint("127.0.0.1", base + i, health=k, priority=priority)
            for i, k in enumerate(kinds)]


def loads(cluster: Cluster) -> dict[tuple[int, bool], int]:
    return {(s.priority, s.degraded): s.load for s in priority_slots(cluster)}


def split(cluster: Cluster) -> list[int]:
    """Percent of the traffic per level (healthy + degraded)."""
    n = max(e.priority for e in cluster.endpoints) + 1
    out = [0] * n
    for (p, _), load in loads(cluster).items():
        out[p] += load
    return out


def rr(*levels: list[Endpoint], **kw) -> Cluster:
    return Cluster("c", LbPolicy.ROUND_ROBIN, tuple(e for lv in levels for e in lv), **kw)


# The "Priority levels" tables describe the load without panic (threshold 0 here): with the
# default 50%, a total below 100 puts levels under half healthy in panic (tests below).

# Envoy docs, "Priority levels": two levels, P=1 100% healthy
@pytest.mark.parametrize("p0, want", [(100, [100, 0]), (72, [100, 0]), (71, [99, 1]),
                                      (50, [70, 30]), (25, [35, 65]), (0, [0, 100])])
def test_priority_two_levels_p1_healthy(p0: int, want: list[int]) -> None:
    assert split(rr(level(0, p0), level(1, 100), panic_threshold=0)) == want


# Envoy docs, "Priority levels": both levels degrade (normalized total health)
@pytest.mark.parametrize("p0, p1, want", [(100, 100, [100, 0]), (72, 72, [100, 0]),
                                          (71, 71, [99, 1]), (50, 50, [70, 30]),
                                          (25, 100, [35, 65]), (25, 25, [50, 50])])
def test_priority_normalized_total_health(p0: int, p1: int, want: list[int]) -> None:
    assert split(rr(level(0, p0), level(1, p1), panic_threshold=0)) == want


# Envoy docs, "Priority levels": three levels (the last row reads 36/36/28 in the docs;
# Envoy's integer arithmetic gives 35/35/28 and the 2% remainder to the first level)
@pytest.mark.parametrize("hs, want", [((100, 100, 100), [100, 0, 0]),
                                      ((72, 72, 100), [100, 0, 0]),
                                      ((71, 71, 100), [99, 1, 0]),
                                      ((50, 50, 100), [70, 30, 0]),
                                      ((25, 100, 100), [35, 65, 0]),
                                      ((25, 25, 100), [35, 35, 30]),
                                      ((25, 25, 20), [37, 35, 28])])
def test_priority_three_levels(hs: tuple[int, int, int], want: list[int]) -> None:
    assert split(rr(*(level(p, h) for p, h in enumerate(hs)), panic_threshold=0)) == want


# Envoy docs, "Degraded endpoints": P=0 healthy/degraded/unhealthy -> healthy, degraded load
@pytest.mark.parametrize("h, d, u, want", [(100, 0, 0, (100, 0)), (71, 0, 29, (100, 0)),
                                           (71, 29, 0, (99, 1)), (25, 65, 10, (35, 65)),
                                           (5, 0, 95, (100, 0))])
def test_degraded_hosts_take_the_rest(h: int, d: int, u: int, want: tuple[int, int]) -> None:
    got = loads(rr(level(0, h, d, u)))
    assert (got.get((0, False), 0), got.get((0, True), 0)) == want


def test_degraded_load_goes_to_degraded_hosts_only() -> None:
    slots = priority_slots(rr(level(0, 25, 65, 10)))
    healthy, degraded = slots
    assert {e.health for e in healthy.hosts} == {H} and not healthy.panic
    assert {e.health for e in degraded.hosts} == {D} and degraded.degraded


# Envoy's own comment: health 10/20/10 and degraded 20/10/0 give 16/28/14 healthy and
# 28/14/0 degraded (the first healthy level takes the rounding remainder); panic off, or
# every level (30% available) would be in panic
def test_envoy_rounding_remainder_to_first_healthy_level() -> None:
    c = Cluster("c", LbPolicy.ROUND_ROBIN,
                tuple(level(0, 10, 20) + level(1, 20, 10) + level(2, 10, 0)),
                overprovisioning_factor=100, panic_threshold=0)
    assert loads(c) == {(0, False): 16, (1, False): 28, (2, False): 14,
                        (0, True): 28, (1, True): 14}


# Envoy docs, "Panic threshold" (default 50%): the panic flags and the normalized total;
# where the docs' traffic column disagrees with Envoy's arithmetic (50/60, 25/100, 5/65),
# the loads asserted are Envoy's integer results.
@pytest.mark.parametrize("p0, p1, want, panic", [
    (72, 72, [100, 0], (False, False)), (71, 71, [99, 1], (False, False)),
    (50, 60, [70, 30], (False, False)), (25, 100, [35, 65], (False, False)),
    (25, 25, [50, 50], (True, True)), (5, 65, [8, 92], (True, False))])
def test_panic_per_level(p0: int, p1: int, want: list[int], panic: tuple[bool, bool]) -> None:
    c = rr(level(0, p0), level(1, p1))
    slots = priority_slots(c)
    assert split(c) == want
    by_level = {s.priority: s.panic for s in slots}
    assert tuple(by_level.get(i, False) for i in (0, 1)) == tuple(
        p and load > 0 for p, load in zip(panic, want, strict=True))
    for s in slots:  # a level in panic routes to all its hosts, else to healthy ones
        assert len(s.hosts) == (100 if s.panic else [p0, p1][s.priority])


def test_total_panic_splits_by_host_count() -> None:
    c = rr(level(0, 10, unhealthy=20), level(1, 0, unhealthy=10))
    slots = priority_slots(c)
    assert [(s.priority, s.load, s.panic, len(s.hosts)) for s in slots] == [
        (0, 75, True, 30), (1, 25, True, 10)]


def test_panic_disabled_and_nothing_healthy_picks_nothing() -> None:
    c = rr(level(0, 0), panic_threshold=0)
    assert priority_slots(c) == [] and Picker().pick(c) is None


def test_overprovisioning_factor_and_weighted_health() -> None:
    # 50% healthy at factor 200 is fully available
    assert split(rr(level(0, 50), level(1, 100), overprovisioning_factor=200)) == [100, 0]
    assert split(rr(level(0, 50), level(1, 100), overprovisioning_factor=100)) == [50, 50]
    # by weight: the one healthy host has weight 3 of 4
    eps = (Endpoint("127.0.0.1", 1, weight=3), Endpoint("127.0.0.1", 2, health=U),
           Endpoint("127.0.0.1", 3, priority=1))
    assert split(Cluster("c", LbPolicy.ROUND_ROBIN, eps)) == [70, 30]
    assert split(Cluster("c", LbPolicy.ROUND_ROBIN, eps, weighted_priority_health=True)) == [
        100, 0]


def test_draining_hosts_do_not_count_in_a_level() -> None:
    drained = [Endpoint("127.0.0.1", 1, health=Health.DRAINING)]
    assert split(rr(level(0, 60, unhealthy=0) + drained, level(1, 100))) == [100, 0]


def test_picker_follows_the_priority_load() -> None:
    c = rr(level(0, 25), level(1, 100))  # 35 / 65
    picker = Picker()
    n = 20000
    got = Counter(picker.pick(c).priority for _ in range(n))
    # binomial sd at p=0.35: sqrt(n * 0.35 * 0.65) ~ 67; 5 sd
    assert abs(got[0] - 0.35 * n) < 5 * 67


@pytest.mark.parametrize("policy", [LbPolicy.ROUND_ROBIN, LbPolicy.RANDOM])
def test_kernel_plan_encodes_the_spill_exactly(policy: LbPolicy) -> None:
    p0 = [Endpoint("127.0.0.1", 1, weight=1), Endpoint("127.0.0.1", 2, weight=3),
          Endpoint("127.0.0.1", 3, health=U), Endpoint("127.0.0.1", 4, health=U)]
    p1 = [Endpoint("127.0.0.1", 5, priority=1), Endpoint("127.0.0.1", 6, priority=1)]
    c = Cluster("c", policy, tuple(p0 + p1))  # P0: 70%, P1: 30%
    p = plan(c, 256, 8)
    assert p.user is None
    share = Counter(h.port for h in p.hosts)
    total = len(p.hosts)
    if policy is LbPolicy.ROUND_ROBIN:  # weights count inside a level
        want = {1: 70 * 1 / 4, 2: 70 * 3 / 4, 5: 15, 6: 15}
    else:  # random ignores weights
        want = {1: 35, 2: 35, 5: 15, 6: 15}
    assert {port: 100 * k / total for port, k in share.items()} == pytest.approx(want)


def test_kernel_plan_marks_a_least_request_spill_ring() -> None:
    p0 = [Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 2, health=U)]
    p1 = [Endpoint("127.0.0.1", 3, priority=1)]
    p = plan(Cluster("c", LbPolicy.LEAST_REQUEST, tuple(p0 + p1)), 256, 8)
    # weight 0: sk_msg hands it to user space, connect4 samples the exact 70/30 ring
    assert p.user is None and p.equal and {h.weight for h in p.hosts} == {SPILL_WEIGHT}
    assert Counter(h.port for h in p.hosts) == {1: 7, 3: 3}
    one = plan(Cluster("c", LbPolicy.LEAST_REQUEST, tuple(level(0, 10, unhealthy=0))), 256, 8)
    assert one.user is None and len(one.hosts) == 10


def test_kernel_plan_too_long_a_ring_goes_to_user_space() -> None:
    c = rr(level(0, 50), level(1, 100))
    p = plan(c, 256, 8)
    assert p.user and "ring entries" in p.user


def test_cla_policy_is_carried_into_the_cluster() -> None:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2

    from translator.cluster_table import translate_cluster
    from translator.errors import TranslationError

    c = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS)
    c.eds_cluster_config.SetInParent()
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="c")
    got = translate_cluster(c, cla)
    assert (got.overprovisioning_factor, got.weighted_priority_health) == (140, False)
    cla.policy.overprovisioning_factor.value = 200
    cla.policy.weighted_priority_health = True
    got = translate_cluster(c, cla)
    assert (got.overprovisioning_factor, got.weighted_priority_health) == (200, True)
    cla.policy.overprovisioning_factor.value = 0
    with pytest.raises(TranslationError, match="overprovisioning_factor"):
        translate_cluster(c, cla)
