"""The benchmark's own tables: services on the kernel path, and the same forced to the slow path.

Two routes, as Envoy's bench listeners have them (integration/bench/proxies.py):
``KERNEL_VIP``/``SLOW_VIP`` route ``/`` of any host to the cluster ``bench``
(ROUND_ROBIN over every nginx backend: the saturation runs, and the low-rate runs that show
the spread cost); ``KERNEL_ONE_VIP``/``SLOW_ONE_VIP`` route it to ``bench-one``, whose only
endpoint is the first backend, the one the direct scenario calls (the low-rate latency runs
the targets use, so they compare the proxy's cost on the same backend work).
``L4_ONE_VIP`` is a TCP service (tcp_proxy) on ``bench-one``: connect4 picks the endpoint at
connect time and rewrites the connection to it, so its requests take no redirect at all
(the alternative to per-request routing, measured beside it at the low rate).
The slow-path services' rules carry a ``needs_slow_path`` field, so sk_msg hands each of
their requests to the agent's user-space path (counted as ``route_user``), which routes them
with the same tables.
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
KERNEL_ONE_VIP = ("127.10.9.3", 8090)
SLOW_ONE_VIP = ("127.10.9.4", 8090)
L4_ONE_VIP = ("127.10.9.5", 8090)
CLUSTER = "bench"
ONE_CLUSTER = "bench-one"
FORCED = "bench: forced slow path"


def _table(name: str, slow: bool, cluster: str, extra_rules: Sequence[Rule] = ()
           ) -> RouteTable:
    rule = Rule(0, "all", PathMatch(PathKind.PREFIX, "/"),
                action=Action(ActionKind.CLUSTER, cluster=cluster),
                needs_slow_path=(FORCED,) if slow else ())
    return RouteTable(name, (VirtualHost("all", ("*",), (rule, *extra_rules)),))


def bench_tables(endpoints: Sequence[tuple[str, int]], extra_rules: Sequence[Rule] = ()
                 ) -> Tables:
    """The benchmark's services; ``extra_rules`` are added to the kernel table (updates).

    ``bench-one`` holds ``endpoints[0]`` only (the direct scenario's backend)."""
    routes = {"bench-kernel": (KERNEL_VIP, False, CLUSTER, extra_rules),
              "bench-slow": (SLOW_VIP, True, CLUSTER, ()),
              "bench-kernel-one": (KERNEL_ONE_VIP, False, ONE_CLUSTER, ()),
              "bench-slow-one": (SLOW_ONE_VIP, True, ONE_CLUSTER, ())}
    return Tables(
        services=(*(Service(*vip, ServiceKind.HTTP, route_table=name)
                    for name, (vip, _, _, _) in routes.items()),
                  Service(*L4_ONE_VIP, ServiceKind.TCP, cluster=ONE_CLUSTER)),
        route_tables={name: _table(name, slow, cluster, extra)
                      for name, (_, slow, cluster, extra) in routes.items()},
        clusters={CLUSTER: Cluster(CLUSTER, LbPolicy.ROUND_ROBIN,
                                   tuple(Endpoint(h, p) for h, p in endpoints)),
                  ONE_CLUSTER: Cluster(ONE_CLUSTER, LbPolicy.ROUND_ROBIN,
                                       (Endpoint(*endpoints[0]),))})


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
