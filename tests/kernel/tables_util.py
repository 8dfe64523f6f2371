"""Hand-built translator tables for kernel tests."""

from __future__ import annotations

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
    ValueMatch,
    VirtualHost,
    WeightedCluster,
)


def to(cluster: str) -> Action:
    return Action(ActionKind.CLUSTER, cluster=cluster)


def weighted(*pairs: tuple[str, int]) -> Action:
    return Action(ActionKind.WEIGHTED_CLUSTERS,
                  weighted=tuple(WeightedCluster(c, w) for c, w in pairs),
                  total_weight=sum(w for _, w in pairs))


def rule(path: str = "/", kind: PathKind = PathKind.PREFIX, action: Action | None = None,
         headers: tuple[ValueMatch, ...] = (), query: tuple[ValueMatch, ...] = (),
         name: str = "", case_sensitive: bool = True, **kw: object) -> Rule:
    return Rule(envoy_index=0, name=name, path=PathMatch(kind, path, case_sensitive),
                headers=headers, query=query, action=action or to("c1"), **kw)  # type: ignore[arg-type]


def cluster(name: str, backends: list, policy: LbPolicy = LbPolicy.ROUND_ROBIN,
            weights: list[int] | None = None, **kw: object) -> Cluster:
    eps = tuple(Endpoint(b.host, b.port, weight=(weights[i] if weights else 1))
                for i, b in enumerate(backends))
    return Cluster(name, policy, eps, **kw)  # type: ignore[arg-type]


def http_tables(vip: str, port: int, vhosts: list[VirtualHost], clusters: list[Cluster],
                rt_name: str = "rt", extra_services: tuple[Service, ...] = (),
                **rt_kw: object) -> Tables:
    rt = RouteTable(rt_name, tuple(vhosts), **rt_kw)  # type: ignore[arg-type]
    return Tables(services=(Service(vip, port, ServiceKind.HTTP, route_table=rt_name),)
                  + extra_services,
                  route_tables={rt_name: rt}, clusters={c.name: c for c in clusters})


def vhost(name: str, domains: list[str], rules: list[Rule]) -> VirtualHost:
    return VirtualHost(name, tuple(domains), tuple(rules))
