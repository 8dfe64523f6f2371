"""The demo's bookinfo-like mesh as xDS resources (Istio-shaped, built in code).

Four services on fake VIPs 127.10.0.x:9080, each a per-VIP listener whose HTTP connection
manager names the shared route configuration "9080" (RDS over ADS), routed by Host header:

* productpage -> cluster ``productpage`` (ROUND_ROBIN, 1 endpoint)
* details     -> cluster ``details`` (RANDOM, 2 endpoints)
* reviews     -> ``end-user: jason`` goes to ``reviews-v2``; everything else is split 50/50
  between ``reviews-v1`` and ``reviews-v3`` (weighted_clusters)
* ratings     -> cluster ``ratings`` (LEAST_REQUEST, 3 endpoints, one of them slow)

Every route carries the retry policy istiod gives outbound routes by default (ISTIO_RETRY):
a refused connect is retried on another host, as in an Istio mesh.

Endpoints live on 127.20.0.0/16 with ports chosen by the backends at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from translator.resources import ResourceSet, parse_resource

TYPE = "type.googleapis.com/"
ROUTE_CONFIG = "9080"
PORT = 9080


@dataclass(frozen=True)
class BackendSpec:
    """One identity backend: its name (what it answers), address and artificial delay."""

    name: str
    cluster: str
    host: str
    delay_ms: float = 0.0


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    vip: str


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("productpage", "127.10.0.1"),
    ServiceSpec("details", "127.10.0.2"),
    ServiceSpec("reviews", "127.10.0.3"),
    ServiceSpec("ratings", "127.10.0.4"),
)

# cluster -> LB policy
CLUSTERS: dict[str, str] = {
    "productpage": "ROUND_ROBIN",
    "details": "RANDOM",
    "reviews-v1": "ROUND_ROBIN",
    "reviews-v2": "ROUND_ROBIN",
    "reviews-v3": "ROUND_ROBIN",
    "ratings": "LEAST_REQUEST",
}

SLOW_RATINGS_DELAY_MS = 25.0


def backends(slow_ms: float = SLOW_RATINGS_DELAY_MS) -> tuple[BackendSpec, ...]:
    """The demo's backends; ``ratings-3`` answers ``slow_ms`` late."""
    return (
        BackendSpec("productpage-1", "productpage", "127.20.1.1"),
        BackendSpec("details-1", "details", "127.20.2.1"),
        BackendSpec("details-2", "details", "127.20.2.2"),
        BackendSpec("reviews-v1-1", "reviews-v1", "127.20.3.1"),
        BackendSpec("reviews-v2-1", "reviews-v2", "127.20.3.2"),
        BackendSpec("reviews-v3-1", "reviews-v3", "127.20.3.3"),
        BackendSpec("ratings-1", "ratings", "127.20.4.1"),
        BackendSpec("ratings-2", "ratings", "127.20.4.2"),
        BackendSpec("ratings-3", "ratings", "127.20.4.3", delay_ms=slow_ms),
    )


# istiod's default retry policy for outbound HTTP routes (as istiod 1.29 writes it)
ISTIO_RETRY: dict[str, Any] = {
    "retryOn": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "numRetries": 2,
    "retryHostPredicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typedConfig": {"@type": TYPE + "envoy.extensions.retry.host.previous_hosts.v3."
                                        "PreviousHostsPredicate"}}],
    "hostSelectionRetryMaxAttempts": "5",
}


def with_istio_retry(route: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``route`` whose route action carries ISTIO_RETRY."""
    return {**route, "route": {**route["route"], "retryPolicy": ISTIO_RETRY}}


def _ads() -> dict[str, Any]:
    return {"ads": {}, "resourceApiVersion": "V3"}


def _listener(svc: ServiceSpec) -> dict[str, Any]:
    return {
        "@type": TYPE + "envoy.config.listener.v3.Listener",
        "name": f"{svc.vip}_{PORT}",
        "address": {"socketAddress": {"address": svc.vip, "portValue": PORT}},
        "trafficDirection": "OUTBOUND",
        "filterChains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typedConfig": {
                "@type": TYPE + "envoy.extensions.filters.network.http_connection_manager."
                                "v3.HttpConnectionManager",
                "statPrefix": f"outbound_{svc.vip}_{PORT}",
                "rds": {"routeConfigName": ROUTE_CONFIG, "configSource": _ads()},
                "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                    "@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    }


def _vhost(svc: ServiceSpec, routes: list[dict[str, Any]]) -> dict[str, Any]:
    fq = f"{svc.name}.default.svc.cluster.local"
    return {"name": f"{svc.name}.default.svc.cluster.local:{PORT}",
            "domains": [svc.name, f"{svc.name}:{PORT}", fq, f"{fq}:{PORT}", svc.vip,
                        f"{svc.vip}:{PORT}"],
            "routes": routes}


def _to(cluster: str, name: str) -> dict[str, Any]:
    return with_istio_retry({"name": name, "match": {"prefix": "/"},
                             "route": {"cluster": cluster}})


def route_config(reviews_routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The shared RDS config; ``reviews_routes`` replaces the reviews routes (tests; taken
    as they are, with or without a retry policy)."""
    by_name = {s.name: s for s in SERVICES}
    if reviews_routes is None:
        reviews_routes = [with_istio_retry(r) for r in (
            {"name": "reviews-jason",
             "match": {"prefix": "/", "headers": [
                 {"name": "end-user", "stringMatch": {"exact": "jason"}}]},
             "route": {"cluster": "reviews-v2"}},
            {"name": "reviews-split", "match": {"prefix": "/"},
             "route": {"weightedClusters": {"clusters": [
                 {"name": "reviews-v1", "weight": 50}, {"name": "reviews-v3", "weight": 50}]}}},
        )]
    return {
        "@type": TYPE + "envoy.config.route.v3.RouteConfiguration",
        "name": ROUTE_CONFIG,
        "validateClusters": False,
        "virtualHosts": [
            _vhost(by_name["productpage"], [_to("productpage", "productpage")]),
            _vhost(by_name["details"], [_to("details", "details")]),
            _vhost(by_name["reviews"], reviews_routes),
            _vhost(by_name["ratings"], [_to("ratings", "ratings")]),
        ],
    }


def _cluster(name: str, policy: str) -> dict[str, Any]:
    return {"@type": TYPE + "envoy.config.cluster.v3.Cluster", "name": name, "type": "EDS",
            "edsClusterConfig": {"edsConfig": _ads()}, "lbPolicy": policy,
            "connectTimeout": "1s"}


def _cla(cluster: str, addrs: Sequence[tuple[str, int]]) -> dict[str, Any]:
    return {"@type": TYPE + "envoy.config.endpoint.v3.ClusterLoadAssignment",
            "clusterName": cluster,
            "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": {"socketAddress": {"address": h, "portValue": p}}},
                 "healthStatus": "HEALTHY"} for h, p in addrs]}]}


def mesh_resources(endpoints: Mapping[str, Sequence[tuple[str, int]]],
                   reviews_routes: list[dict[str, Any]] | None = None) -> ResourceSet:
    """The mesh with ``endpoints`` (cluster -> [(ip, port)]) as a ResourceSet."""
    rs = ResourceSet()
    objs: list[dict[str, Any]] = [_listener(s) for s in SERVICES]
    objs.append(route_config(reviews_routes))
    for name, policy in CLUSTERS.items():
        objs.append(_cluster(name, policy))
        objs.append(_cla(name, endpoints.get(name, ())))
    for obj in objs:
        rs.add(parse_resource(obj, "demo mesh"))
    return rs


def endpoints_of(specs: Sequence[BackendSpec], ports: Mapping[str, int]
                 ) -> dict[str, list[tuple[str, int]]]:
    """cluster -> [(ip, port)] of running backends (``ports``: backend name -> port)."""
    out: dict[str, list[tuple[str, int]]] = {c: [] for c in CLUSTERS}
    for b in specs:
        out[b.cluster].append((b.host, ports[b.name]))
    return out
