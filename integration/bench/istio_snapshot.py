"""An Istio-sized xDS snapshot for benchmarks, generated in Istio's shapes.

Per service-port EDS clusters with subsets (LEAST_REQUEST, circuit breakers, mTLS
transport_socket_matches), ClusterLoadAssignments, ``0.0.0.0_PORT`` HTTP listeners naming RDS
configs, per-VIP ``tcp_proxy`` listeners, virtualOutbound/virtualInbound, and per-port route
configs whose virtual hosts carry Istio's domain lists (``name``, ``name:port``, short names,
VIP) and istiod's default retry policy.  Sizes follow a real mesh of ~1,000 services:
3,186 clusters, 2,979 endpoint assignments, 551 listeners, 254 route configs.

Used by ``sockmesh bench`` (integration/bench/control.py) and scripts/bench_translator.py.
"""

from __future__ import annotations

import random
from typing import Any

from translator.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    ResourceSet,
    parse_resource,
)

TARGET = {"clusters": 3186, "endpoints": 2979, "listeners": 551, "route_configs": 254}
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
RETRY = {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,"
                     "retriable-status-codes",
         "num_retries": 2, "retriable_status_codes": [503],
         "host_selection_retry_max_attempts": "5",
         "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}]}


def eds_cluster(name: str, rng: random.Random) -> dict[str, Any]:
    return {"@type": CLUSTER, "name": name, "type": "EDS",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"},
                                   "service_name": name},
            "connect_timeout": "10s",
            "lb_policy": rng.choice(["LEAST_REQUEST", "ROUND_ROBIN", "LEAST_REQUEST"]),
            "circuit_breakers": {"thresholds": [{"max_connections": 4294967295,
                                                 "max_requests": 4294967295}]},
            "transport_socket_matches": [{"name": "tlsMode-istio", "match": {
                "tlsMode": "istio"}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer"}}],
            "metadata": {"filter_metadata": {"istio": {"default_original_port": 9080}}}}


def cla(name: str, n: int, salt: int) -> dict[str, Any]:
    return {"@type": CLUSTER_LOAD_ASSIGNMENT, "cluster_name": name, "endpoints": [{
        "locality": {"region": "r1", "zone": f"z{salt % 3}"},
        "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": f"10.{(salt >> 8) & 255}.{salt & 255}.{k + 1}", "port_value": 9080}}},
            "health_status": "HEALTHY", "load_balancing_weight": 1} for k in range(n)]}]}


def vhost(host: str, port: int, vip: str, rng: random.Random,
          subsets: list[str]) -> dict[str, Any]:
    short, ns = host.split(".")[:2]
    domains = [host, f"{host}:{port}", short, f"{short}:{port}", f"{short}.{ns}",
               f"{short}.{ns}:{port}", f"{short}.{ns}.svc", f"{short}.{ns}.svc:{port}",
               vip, f"{vip}:{port}"]
    default = f"outbound|{port}||{host}"
    routes: list[dict[str, Any]] = []
    if rng.random() < 0.25:  # a VirtualService with a few rules
        routes.append({"name": "jason", "match": {"prefix": "/", "headers": [
            {"name": "end-user", "string_match": {"exact": "jason"}}]},
            "route": {"cluster": subsets[0], "timeout": "0s", "retry_policy": RETRY}})
        routes.append({"name": "api", "match": {"path_separated_prefix": "/api/v1"},
                       "route": {"weighted_clusters": {"clusters": [
                           {"name": s, "weight": 100 // len(subsets)} for s in subsets]},
                           "timeout": "0s", "retry_policy": RETRY}})
        routes.append({"name": "legacy", "match": {"safe_regex": {"regex": "/v[0-9]+/old/.*"}},
                       "redirect": {"path_redirect": "/new", "response_code": "FOUND"}})
    routes.append({"name": "default", "match": {"prefix": "/"}, "route": {
        "cluster": default, "timeout": "0s", "retry_policy": RETRY,
        "max_grpc_timeout": "0s"}, "decorator": {"operation": f"{host}:{port}/*"}})
    return {"name": f"{host}:{port}", "domains": domains, "routes": routes,
            "include_request_attempt_count": True}


def snapshot(seed: int) -> tuple[ResourceSet, list[tuple[str, str]]]:
    """An Istio-sized ResourceSet and (route config, authority) pairs that exist in it."""
    rng = random.Random(seed)
    objs: list[dict[str, Any]] = []
    n_ports = TARGET["route_configs"]
    ports = [9000 + i for i in range(n_ports)]
    eds_names: list[str] = []
    by_port: dict[int, list[tuple[str, str, list[str]]]] = {p: [] for p in ports}
    svc = 0
    # 993 services x (default + 2 subsets) = 2,979 EDS clusters, each with a CLA
    while len(eds_names) < TARGET["endpoints"]:
        port = ports[svc % n_ports]
        host = f"svc{svc}.ns{svc % 40}.svc.cluster.local"
        vip = f"10.96.{svc >> 8}.{svc & 255}"
        names = [f"outbound|{port}||{host}", f"outbound|{port}|v1|{host}",
                 f"outbound|{port}|v2|{host}"]
        for n in names:
            objs.append(eds_cluster(n, rng))
            objs.append(cla(n, rng.randint(1, 6), len(eds_names)))
            eds_names.append(n)
        by_port[port].append((host, vip, names[1:]))
        svc += 1
    # the rest: inbound/static clusters without EDS, as Istio has
    for i in range(TARGET["clusters"] - len(eds_names)):
        objs.append({"@type": CLUSTER, "name": f"inbound|{8000 + i}||", "type": "STATIC",
                     "load_assignment": {"cluster_name": f"inbound|{8000 + i}||", "endpoints": [
                         {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                             "address": "127.0.0.6", "port_value": 8000 + i}}}}]}]}})
    pairs: list[tuple[str, str]] = []
    for port in ports:
        vhs = [vhost(h, port, vip, rng, subs) for h, vip, subs in by_port[port]]
        vhs.append({"name": "allow_any", "domains": ["*"], "routes": [
            {"name": "allow_any", "match": {"prefix": "/"},
             "route": {"cluster": "PassthroughCluster"}}]})
        objs.append({"@type": ROUTE_CONFIGURATION, "name": str(port), "virtual_hosts": vhs,
                     "validate_clusters": False})
        pairs += [(str(port), f"{h}:{port}") for h, _, _ in by_port[port]]
        objs.append({"@type": LISTENER, "name": f"0.0.0.0_{port}", "address": {
            "socket_address": {"address": "0.0.0.0", "port_value": port}},
            "traffic_direction": "OUTBOUND", "bind_to_port": False,
            "filter_chains": [{"filter_chain_match": {
                "transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
                "filters": [{"name": "envoy.filters.network.http_connection_manager",
                             "typed_config": {"@type": HCM, "stat_prefix": f"outbound_{port}",
                                              "rds": {"route_config_name": str(port),
                                                      "config_source": {"ads": {}}}}}]}]})
    n_tcp = TARGET["listeners"] - n_ports - 2
    for i in range(n_tcp):
        vip, port = f"10.97.{i >> 8}.{i & 255}", 5000 + i % 50
        objs.append({"@type": LISTENER, "name": f"{vip}_{port}", "address": {
            "socket_address": {"address": vip, "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                            "typed_config": {"@type": TCP_PROXY,
                                                             "stat_prefix": "t",
                                                             "cluster": eds_names[i]}}]}]})
    catch_all: list[tuple[str, int, dict[str, Any]]] = [
        ("virtualOutbound", 15001, {"use_original_dst": True}),
        ("virtualInbound", 15006, {"traffic_direction": "INBOUND"})]
    for name, port, extra in catch_all:
        objs.append({"@type": LISTENER, "name": name, "address": {"socket_address": {
            "address": "0.0.0.0", "port_value": port}}, **extra, "filter_chains": [{
                "filters": [{"name": "tcp", "typed_config": {
                    "@type": TCP_PROXY, "stat_prefix": "p", "cluster": "PassthroughCluster"}}]}]})
    rs = ResourceSet()
    for obj in objs:
        rs.add(parse_resource(obj))
    return rs, pairs
