"""What the kernel's load balancer (lb.h) needs, computed once per table change, and the same
policies for the user-space slow path.

Envoy semantics implemented here (Envoy's load_balancer_impl: recalculatePerPriorityState,
recalculatePerPriorityPanic, recalculateLoadInTotalPanic, choosePriority):

* host classes: HEALTHY and UNKNOWN (no health checking) are healthy; DEGRADED is degraded;
  UNHEALTHY, TIMEOUT and DRAINING are unhealthy.  DRAINING hosts are also *excluded*: they
  do not count in a level's host total (Envoy >= 1.29), but panic still routes to them;
* priority load: each level's health is min(100, overprovisioning_factor x healthy / total)
  and its degraded availability the same with degraded hosts (integer arithmetic; counts of
  hosts, or sums of their weights with ``weighted_priority_health``).  The normalized total
  availability is min(100, sum of both over all levels).  100 percent of the traffic is
  handed out level by level in priority order, first to healthy hosts (each level
  min(left, health x 100 / total)), then what is left to degraded hosts the same way; a
  rounding remainder goes to the first level with healthy (else degraded) availability;
* panic: only when the normalized total availability is below 100, a level whose
  (healthy + degraded) share of its hosts is below the panic threshold routes to all its
  hosts; when every level is in panic, the load is split by the levels' host counts
  instead (remainder to the first non-empty level);
* a request picks its level with a number in 1..100 against the running sum of the healthy
  loads, then the degraded loads; the cluster's policy then picks inside that level:
* ROUND_ROBIN: equal weights -> the hosts in order; unequal -> a smooth weighted round-robin
  ring over the weights divided by their gcd, so one pass is exactly proportional (Envoy
  uses an EDF scheduler with the same per-cycle counts);
* RANDOM: uniform over the hosts, weights ignored (Envoy's random LB);
* LEAST_REQUEST: equal weights -> choice_count samples with replacement, fewest active wins;
  unequal -> weight / (active + 1) ^ active_request_bias (kernel: bias 0 or 1).

Kernel plan: when one level takes all the traffic (the usual case) the kernel gets that
level's hosts (or RR ring) as before.  When traffic spills over several levels, ROUND_ROBIN
and RANDOM get one ring whose entries are weighted by each host's exact share of the traffic
(level load x the host's share inside its level), so the kernel's ring walk or uniform index
gives Envoy's split.  LEAST_REQUEST gets such a ring too (shares by weight inside a level)
with every entry's weight set to SPILL_WEIGHT: Envoy picks the level before comparing active
requests, which sampling the ring cannot do, so sk_msg hands those requests to user space
(SM_R_LIMIT), while connect4 (L4, no live request counts) samples the ring.  Rings longer
than the kernel's host table go to user space (``ClusterPlan.user`` says why).
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from translator.tables import Cluster, Endpoint, Health, LbPolicy

HEALTHY = (Health.HEALTHY, Health.UNKNOWN)
# host weight in the kernel's host table marking a LEAST_REQUEST spill ring (real weights
# are >= 1); lb.h's sm_pick_endpoint checks it
SPILL_WEIGHT = 0
# EDS DRAINING hosts are excluded from a level's counts (but panic still routes to them)
EXCLUDED = (Health.DRAINING,)


@dataclass(frozen=True)
class Slot:
    """One share of a cluster's traffic: ``load`` percent of the requests go to ``hosts``
    (a level's healthy hosts, its degraded hosts, or all its hosts when it is in panic)."""

    priority: int
    degraded: bool
    load: int
    panic: bool
    hosts: tuple[Endpoint, ...]


def _distribute(out: list[int], avail: list[int], left: int, total: int) -> tuple[int, int]:
    """Envoy's distributeLoad: fill ``out`` level by level; (first available level, left)."""
    first = -1
    for i, a in enumerate(avail):
        if first < 0 and a > 0:
            first = i
        out[i] = min(left, a * 100 // total)
        left -= out[i]
    return first, left


def _in_panic(hosts: list[Endpoint], threshold: int) -> bool:
    count = sum(1 for h in hosts if h.health not in EXCLUDED)
    if count == 0:
        return 0.0 < threshold
    ok = sum(1 for h in hosts if h.health in HEALTHY or h.health is Health.DEGRADED)
    return 100.0 * ok / count < threshold


def priority_slots(cluster: Cluster) -> list[Slot]:
    """The cluster's traffic split over levels and host classes, in Envoy's pick order
    (healthy loads by level, then degraded loads by level); slots with no load are left
    out.  Empty when no host may be picked (no endpoints, or none usable with panic off)."""
    if not cluster.has_endpoints or not cluster.endpoints:
        return []
    n = max(e.priority for e in cluster.endpoints) + 1
    levels: list[list[Endpoint]] = [[] for _ in range(n)]
    for e in cluster.endpoints:
        levels[e.priority].append(e)
    factor = cluster.overprovisioning_factor
    health, degraded = [0] * n, [0] * n
    for i, hosts in enumerate(levels):
        counted = [h for h in hosts if h.health not in EXCLUDED]
        if not counted:
            continue
        def size(hs: list[Endpoint]) -> int:
            return sum(h.weight for h in hs) if cluster.weighted_priority_health else len(hs)
        total = size(counted)
        health[i] = min(100, factor * size([h for h in hosts if h.health in HEALTHY]) // total)
        degraded[i] = min(100, factor * size([h for h in hosts
                                              if h.health is Health.DEGRADED]) // total)
    available = min(100, sum(health) + sum(degraded))
    threshold = min(100, math.floor(cluster.panic_threshold + 0.5))
    hload, dload = [0] * n, [0] * n
    if available > 0:
        first_h, left = _distribute(hload, health, 100, available)
        first_d, left = _distribute(dload, degraded, left, available)
        if left:
            if first_h >= 0:
                hload[first_h] += left
            else:
                dload[first_d] += left
    elif threshold == 0:
        return []  # nothing healthy and panic disabled: Envoy answers "no healthy upstream"
    panic = [available != 100 and _in_panic(levels[i], threshold) for i in range(n)]
    if all(panic):
        # total panic: split by the levels' host counts, whatever their health
        count = len(cluster.endpoints)
        hload = [100 * len(hs) // count for hs in levels]
        dload = [0] * n
        hload[next(i for i, hs in enumerate(levels) if hs)] += 100 - sum(hload)
    if not any(hload) and not any(dload):
        hload[0] = 100  # Envoy's fallback when no load could be assigned
    slots = []
    for degraded_class, loads in ((False, hload), (True, dload)):
        for i, load in enumerate(loads):
            if not load:
                continue
            if panic[i]:
                hosts = levels[i]
            elif degraded_class:
                hosts = [h for h in levels[i] if h.health is Health.DEGRADED]
            else:
                hosts = [h for h in levels[i] if h.health in HEALTHY]
            if hosts:
                slots.append(Slot(i, degraded_class, load, panic[i], tuple(hosts)))
    return slots


def usable_hosts(cluster: Cluster) -> list[Endpoint]:
    """Every host that can receive traffic, in slot order, each once."""
    seen: dict[Endpoint, None] = {}
    for s in priority_slots(cluster):
        seen.update(dict.fromkeys(s.hosts))
    return list(seen)


def equal_weights(hosts: list[Endpoint] | tuple[Endpoint, ...]) -> bool:
    return len({h.weight for h in hosts}) <= 1


def _ring(hosts: list[Endpoint], weights: list[int]) -> list[Endpoint]:
    """One cycle of smooth weighted round robin over weights / gcd (exactly proportional)."""
    g = 0
    for w in weights:
        g = math.gcd(g, w)
    weights = [w // g for w in weights]
    total = sum(weights)
    current = [0] * len(hosts)
    ring: list[Endpoint] = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(hosts)), key=lambda i: (current[i], -i))
        current[best] -= total
        ring.append(hosts[best])
    return ring


def smooth_wrr_ring(hosts: list[Endpoint]) -> list[Endpoint]:
    """One cycle of smooth weighted round robin over the hosts' weights."""
    return _ring(hosts, [h.weight for h in hosts])


def spill_weights(policy: LbPolicy, slots: list[Slot]) -> tuple[list[Endpoint], list[int]]:
    """Integer weights proportional to each host's share of the traffic over all slots:
    load x (1 / hosts) for RANDOM, load x (weight / level weight) for ROUND_ROBIN; one
    entry per address:port (the kernel's endpoint id)."""
    def part(s: Slot) -> tuple[list[int], int]:
        if policy is LbPolicy.RANDOM:
            return [1] * len(s.hosts), len(s.hosts)
        ws = [h.weight for h in s.hosts]
        return ws, sum(ws)
    parts = [part(s) for s in slots]
    scale = math.lcm(*(total for _, total in parts))
    merged: dict[tuple[str, int], list] = {}
    for s, (ws, total) in zip(slots, parts, strict=True):
        for h, w in zip(s.hosts, ws, strict=True):
            entry = merged.setdefault((h.address, h.port), [h, 0])
            entry[1] += s.load * w * (scale // total)
    return [h for h, _ in merged.values()], [w for _, w in merged.values()]


@dataclass(frozen=True)
class ClusterPlan:
    """What the encoder writes for one cluster."""

    policy: LbPolicy
    # the RR ring for ROUND_ROBIN, a spill ring (weights SPILL_WEIGHT for LEAST_REQUEST),
    # else the usable hosts
    hosts: list[Endpoint]
    equal: bool
    user: str | None  # why the kernel must hand this cluster to user space, or None


def plan(cluster: Cluster, max_hosts: int, max_choices: int) -> ClusterPlan:
    """The kernel's view of ``cluster``; ``user`` says which limit it exceeds, if any."""
    slots = priority_slots(cluster)
    user = None
    if len(slots) > 1:
        loads = ", ".join(f"P{s.priority}{'d' if s.degraded else ''}={s.load}%" for s in slots)
        hosts = _ring(*spill_weights(cluster.lb_policy, slots))
        if cluster.lb_policy is LbPolicy.LEAST_REQUEST:
            hosts = [dataclasses.replace(h, weight=SPILL_WEIGHT) for h in hosts]
        if len(hosts) > max_hosts:
            user = f"priority spill ({loads}) needs {len(hosts)} ring entries > {max_hosts}"
        return ClusterPlan(cluster.lb_policy, hosts, True, user)
    hosts = list(slots[0].hosts) if slots else []
    equal = equal_weights(hosts)
    if cluster.lb_policy is LbPolicy.ROUND_ROBIN and not equal:
        hosts = smooth_wrr_ring(hosts)
    if len(hosts) > max_hosts:
        user = f"{len(hosts)} hosts (or ring entries) > {max_hosts}"
    if cluster.lb_policy is LbPolicy.LEAST_REQUEST:
        if equal and cluster.choice_count > max_choices:
            user = f"choice_count {cluster.choice_count} > {max_choices}"
        if not equal and cluster.active_request_bias not in (0.0, 1.0):
            user = f"active_request_bias {cluster.active_request_bias} not 0 or 1"
    return ClusterPlan(cluster.lb_policy, hosts, equal, user)


class Picker:
    """User-space endpoint choice with the same policies (slow path)."""

    def __init__(self, active: Callable[[Endpoint], int] | None = None) -> None:
        self._rr: dict[tuple[str, int, str], int] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._active = active or (lambda _e: 0)

    def choose_slot(self, slots: list[Slot]) -> Slot:
        """Envoy's choosePriority: 1..100 against the running sum of the slots' loads."""
        r = self._rng.randrange(100) + 1
        run = 0
        for s in slots:
            run += s.load
            if r <= run:
                return s
        return slots[0]

    def pick(self, cluster: Cluster) -> Endpoint | None:
        """An endpoint of ``cluster`` or None when it has no usable host."""
        slots = priority_slots(cluster)
        if not slots:
            return None
        slot = slots[0] if len(slots) == 1 else self.choose_slot(slots)
        hosts = list(slot.hosts)
        equal = equal_weights(hosts)
        if cluster.lb_policy is LbPolicy.ROUND_ROBIN:
            ring = hosts if equal else smooth_wrr_ring(hosts)
            # one scheduler per level and host source, as Envoy keeps them
            key = (cluster.name, slot.priority,
                   "all" if slot.panic else "degraded" if slot.degraded else "healthy")
            with self._lock:
                i = self._rr.get(key, 0)
                self._rr[key] = i + 1
            return ring[i % len(ring)]
        if cluster.lb_policy is LbPolicy.RANDOM:
            return self._rng.choice(hosts)
        if equal:
            best = None
            for _ in range(max(1, cluster.choice_count)):
                h = self._rng.choice(hosts)
                if best is None or self._active(h) < self._active(best):
                    best = h
            return best
        weights = [h.weight / (self._active(h) + 1) ** cluster.active_request_bias for h in hosts]
        return self._rng.choices(hosts, weights=weights)[0]
