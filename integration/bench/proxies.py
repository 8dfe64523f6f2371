"""Envoy bootstraps for the benchmark: one proxy hop, and the two halves of a sidecar pair.

A hop is a loopback listener ``bench`` (port 0, Envoy binds) whose HTTP connection manager
routes ``/`` to a STATIC ROUND_ROBIN cluster over the backends, and a second listener
``bench-one`` with the same route to a cluster whose only endpoint is the direct scenario's
backend (the low-rate latency runs go there; sockmesh's tables have the same two routes,
integration/bench/scenarios.py).  The sidecar pair chains two hops as Istio does: each
client-side listener's cluster is the server-side Envoy's listener of the same name.
Plain HTTP/1.1 between the two (no mTLS, no Istio filters), so the pair is a lower bound of
what an Istio sidecar pair costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LISTENER = "bench"
ONE_LISTENER = "bench-one"


def static_cluster(name: str, endpoints: Sequence[tuple[str, int]],
                   lb_policy: str = "ROUND_ROBIN") -> dict[str, Any]:
    """A STATIC cluster over loopback ``endpoints``."""
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "lb_policy": lb_policy,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
                for h, p in endpoints]}]}}


def hcm(route_config: dict[str, Any], stat_prefix: str,
        access_log: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An HTTP connection manager filter with ``route_config`` inline and the router."""
    typed: dict[str, Any] = {
        "@type": HCM_TYPE, "stat_prefix": stat_prefix, "route_config": route_config,
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER_TYPE}}]}
    if access_log:
        typed["access_log"] = access_log
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": typed}


def loopback_listener(name: str, filters: list[dict[str, Any]],
                      address: str = "127.0.0.1", port: int = 0) -> dict[str, Any]:
    """A listener on loopback (port 0: Envoy picks, read it back from the admin API)."""
    return {"name": name, "address": {"socket_address": {"address": address,
                                                         "port_value": port}},
            "filter_chains": [{"filters": filters}]}


def _route_config(name: str, cluster: str) -> dict[str, Any]:
    return {"name": name, "virtual_hosts": [{
        "name": "all", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}


def hop(endpoints: Sequence[tuple[str, int]], one: tuple[str, int],
        cluster: str = "backend") -> dict[str, Any]:
    """A one-hop proxy bootstrap: listener ``bench`` -> cluster ``cluster`` over
    ``endpoints`` (ROUND_ROBIN), listener ``bench-one`` -> cluster ``<cluster>-one`` whose
    only endpoint is ``one``."""
    one_cluster = f"{cluster}-one"
    return {"static_resources": {
        "listeners": [loopback_listener(LISTENER, [hcm(_route_config(LISTENER, cluster),
                                                       LISTENER)]),
                      loopback_listener(ONE_LISTENER, [hcm(_route_config(ONE_LISTENER,
                                                                         one_cluster),
                                                           ONE_LISTENER)])],
        "clusters": [static_cluster(cluster, endpoints), static_cluster(one_cluster, [one])]}}
