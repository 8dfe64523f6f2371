"""The benchmark's own tables: one service on the kernel path, one forced to the slow path.

Both route ``/`` of any host to the cluster ``bench`` (ROUND_ROBIN over the nginx backends).
The slow-path service's rule carries a ``needs_slow_path`` field, so sk_msg hands each of its
requests to the agent's user-space path (counted as ``route_user``), which routes them with
the same tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from translator.tables import (
    Action,
    ActionKind,
    Cluster,
    Endpoint,
    LbPolicy,
    PathKind,
    PathMatch,
    RouteTable,
    Rule,
    Service,
    ServiceKind,
    Tables,
    VirtualHost,
)

KERNEL_VIP = ("127.10.9.1", 8090)
SLOW_VIP = ("127.10.9.2", 8090)
CLUSTER = "bench"
FORCED = "bench: forced slow path"


def _table(name: str, slow: bool, extra_rules: Sequence[Rule] = ()) -> RouteTable:
    rule = Rule(0, "all", PathMatch(PathKind.PREFIX, "/"),
                action=Action(ActionKind.CLUSTER, cluster=CLUSTER),
                needs_slow_path=(FORCED,) if slow else ())
    return RouteTable(name, (VirtualHost("all", ("*",), (rule, *extra_rules)),))


def bench_tables(endpoints: Sequence[tuple[str, int]], extra_rules: Sequence[Rule] = ()
                 ) -> Tables:
    """The benchmark's services; ``extra_rules`` are added to the kernel table (updates)."""
    return Tables(
        services=(Service(*KERNEL_VIP, ServiceKind.HTTP, route_table="bench-kernel"),
                  Service(*SLOW_VIP, ServiceKind.HTTP, route_table="bench-slow")),
        route_tables={"bench-kernel": _table("bench-kernel", False, extra_rules),
                      "bench-slow": _table("bench-slow", True)},
        clusters={CLUSTER: Cluster(CLUSTER, LbPolicy.ROUND_ROBIN,
                                   tuple(Endpoint(h, p) for h, p in endpoints))})


def update_rule(i: int) -> Rule:
    """The i-th route update: a prefix rule ``/update/<i>`` to the bench cluster."""
    return Rule(1, f"update-{i}", PathMatch(PathKind.PREFIX, f"/update/{i}"),
                action=Action(ActionKind.CLUSTER, cluster=CLUSTER))


def merged(*parts: Tables) -> Tables:
    """One Tables holding every part's services, route tables and clusters."""
    return Tables(
        services=tuple(s for t in parts for s in t.services),
        route_tables={k: v for t in parts for k, v in t.route_tables.items()},
        clusters={k: v for t in parts for k, v in t.clusters.items()})
