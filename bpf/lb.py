"""What the kernel's load balancer (lb.h) needs, computed once per table change, and the same
policies for the user-space slow path.

Envoy semantics implemented here:
* hosts with health HEALTHY or UNKNOWN (no health checking) are usable; UNHEALTHY, DRAINING,
  TIMEOUT are not; DEGRADED hosts are used only when a level has no usable host;
* priority: the lowest level that has usable hosts takes all traffic (no partial spill
  across levels); in panic (usable share of that level below panic_threshold %) Envoy
  routes to all hosts of the level, and so does this;
* ROUND_ROBIN: equal weights -> the hosts in order; unequal -> a smooth weighted round-robin
  ring over the weights divided by their gcd, so one pass is exactly proportional (Envoy
  uses an EDF scheduler with the same per-cycle counts);
* RANDOM: uniform over the hosts, weights ignored (Envoy's random LB);
* LEAST_REQUEST: equal weights -> choice_count samples with replacement, fewest active wins;
  unequal -> weight / (active + 1) ^ active_request_bias (kernel: bias 0 or 1).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from translator.tables import Cluster, Endpoint, Health, LbPolicy

USABLE = (Health.HEALTHY, Health.UNKNOWN)
EXCLUDED = (Health.UNHEALTHY, Health.DRAINING, Health.TIMEOUT)


def usable_hosts(cluster: Cluster) -> list[Endpoint]:
    """The hosts of the level that takes traffic (see the module docstring)."""
    if not cluster.has_endpoints:
        return []
    levels = sorted({e.priority for e in cluster.endpoints})
    for level in levels:
        eps = [e for e in cluster.endpoints if e.priority == level and e.weight > 0]
        good = [e for e in eps if e.health in USABLE]
        if not good:
            continue
        if 100.0 * len(good) / len(eps) < cluster.panic_threshold:
            return eps  # panic: Envoy ignores health for this level
        return good
    for level in levels:
        degraded = [e for e in cluster.endpoints
                    if e.priority == level and e.health is Health.DEGRADED and e.weight > 0]
        if degraded:
            return degraded
    return []


def equal_weights(hosts: list[Endpoint]) -> bool:
    return len({h.weight for h in hosts}) <= 1


def smooth_wrr_ring(hosts: list[Endpoint]) -> list[Endpoint]:
    """One cycle of smooth weighted round robin over weights / gcd (exactly proportional)."""
    g = 0
    for h in hosts:
        g = math.gcd(g, h.weight)
    weights = [h.weight // g for h in hosts]
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


@dataclass(frozen=True)
class ClusterPlan:
    """What the encoder writes for one cluster."""

    policy: LbPolicy
    hosts: list[Endpoint]  # the RR ring for ROUND_ROBIN, else the usable hosts
    equal: bool
    user: str | None  # why the kernel must hand this cluster to user space, or None


def plan(cluster: Cluster, max_hosts: int, max_choices: int) -> ClusterPlan:
    """The kernel's view of ``cluster``; ``user`` says which limit it exceeds, if any."""
    hosts = usable_hosts(cluster)
    equal = equal_weights(hosts)
    user = None
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
        self._rr: dict[str, int] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._active = active or (lambda _e: 0)

    def pick(self, cluster: Cluster) -> Endpoint | None:
        """An endpoint of ``cluster`` or None when it has no usable host."""
        hosts = usable_hosts(cluster)
        if not hosts:
            return None
        equal = equal_weights(hosts)
        if cluster.lb_policy is LbPolicy.ROUND_ROBIN:
            ring = hosts if equal else smooth_wrr_ring(hosts)
            with self._lock:
                i = self._rr.get(cluster.name, 0)
                self._rr[cluster.name] = i + 1
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
