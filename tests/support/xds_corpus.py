"""The bad-xDS corpus, as data: resources a control server might send that must be NACKed.

Each :class:`XdsCase` names the xDS type it is served as, how to build the response from the
good snapshot (replace one resource, add one, or send raw bytes), and the words the NACK's
``error_detail`` must contain to name the problem (case-insensitive, any one of them).

Builders receive the good snapshot as ``{type_url: {name: message}}`` (copies: mutate freely)
and return the full list of ``Any`` payloads for the response of that type.  ``REPLACE``
cases take the named good resource (``target``), change it, and serve it instead; ``ADD``
cases serve every good resource plus the bad one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from translator.resources import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION

Good = dict[str, dict[str, Message]]
Mutation = Callable[[Message], None]

ROUTE_NAME = "9080"
LISTENER_NAME = "127.10.0.3_9080"
CLUSTER_NAME = "reviews-v1"


def pack(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg, deterministic=True)
    return a


@dataclass(frozen=True)
class XdsCase:
    """One bad response and what the NACK must say."""

    name: str
    family: str
    type_url: str
    build: Callable[[Good], list[any_pb2.Any]]
    expect: tuple[str, ...]


def _copy(msg: Message) -> Message:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def replace(type_url: str, target: str, mutate: Mutation) -> Callable[[Good], list[any_pb2.Any]]:
    """Serve the good resources of ``type_url`` with ``target`` changed by ``mutate``."""
    def build(good: Good) -> list[any_pb2.Any]:
        out = []
        for name, msg in sorted(good[type_url].items()):
            m = _copy(msg)
            if name == target:
                mutate(m)
            out.append(pack(m))
        return out
    return build


def add(type_url: str, extra: Callable[[Good], list[any_pb2.Any]]
        ) -> Callable[[Good], list[any_pb2.Any]]:
    """Serve the good resources of ``type_url`` plus ``extra(good)``."""
    def build(good: Good) -> list[any_pb2.Any]:
        return [pack(m) for _, m in sorted(good[type_url].items())] + extra(good)
    return build


def _copy_of(type_url: str, name: str, mutate: Mutation | None = None
             ) -> Callable[[Good], list[any_pb2.Any]]:
    def extra(good: Good) -> list[any_pb2.Any]:
        m = _copy(good[type_url][name])
        if mutate is not None:
            mutate(m)
        return [pack(m)]
    return extra


def _garbage(type_url: str) -> Callable[[Good], list[any_pb2.Any]]:
    def extra(good: Good) -> list[any_pb2.Any]:
        return [any_pb2.Any(type_url=type_url, value=b"\x0a\xff\xff\xff\xff\x0f\x12garbage")]
    return extra


def _wrong_type(other_type: str, name: str) -> Callable[[Good], list[any_pb2.Any]]:
    def extra(good: Good) -> list[any_pb2.Any]:
        return [pack(_copy(good[other_type][name]))]
    return extra


# ---- mutations -------------------------------------------------------------------------

def _hcm(listener: Message) -> hcm_pb2.HttpConnectionManager:
    assert isinstance(listener, listener_pb2.Listener)
    h = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(h)
    return h


def _set_hcm(listener: Message, h: hcm_pb2.HttpConnectionManager) -> None:
    assert isinstance(listener, listener_pb2.Listener)
    listener.filter_chains[0].filters[0].typed_config.Pack(h)


def _hcm_edit(edit: Callable[[hcm_pb2.HttpConnectionManager], None]) -> Mutation:
    def mutate(listener: Message) -> None:
        h = _hcm(listener)
        edit(h)
        _set_hcm(listener, h)
    return mutate


def _tcp_proxy_without_cluster(listener: Message) -> None:
    assert isinstance(listener, listener_pb2.Listener)
    f = listener.filter_chains[0].filters[0]
    f.name = "envoy.filters.network.tcp_proxy"
    f.typed_config.Pack(tcp_proxy_pb2.TcpProxy(stat_prefix="tcp"))


def _field(path: str, value: object) -> Mutation:
    """Set a dotted field path (``a.b.c``; ``[i]`` indexes repeated fields)."""
    def mutate(msg: Message) -> None:
        obj: object = msg
        parts = path.split(".")
        for p in parts[:-1]:
            name, _, idx = p.partition("[")
            obj = getattr(obj, name)
            if idx:
                obj = obj[int(idx.rstrip("]"))]  # type: ignore[index]
        setattr(obj, parts[-1], value)
    return mutate


def _route(i: int, vh: int = 2) -> str:
    return f"virtual_hosts[{vh}].routes[{i}]"


def _rc(edit: Callable[[Message], None]) -> Mutation:
    return edit


def _clear(path: str, field: str) -> Mutation:
    def mutate(msg: Message) -> None:
        obj: object = msg
        for p in path.split("."):
            name, _, idx = p.partition("[")
            obj = getattr(obj, name)
            if idx:
                obj = obj[int(idx.rstrip("]"))]  # type: ignore[index]
        obj.ClearField(field)  # type: ignore[attr-defined]
    return mutate


def _weighted(clusters: list[tuple[str, int]]) -> Mutation:
    def mutate(rc: Message) -> None:
        r = rc.virtual_hosts[2].routes[3].route  # type: ignore[attr-defined]
        r.ClearField("cluster")
        for name, w in clusters:
            wc = r.weighted_clusters.clusters.add(name=name)
            wc.weight.value = w
    return mutate


def _validate_and_route_to(cluster: str) -> Mutation:
    def mutate(rc: Message) -> None:
        rc.validate_clusters.value = True  # type: ignore[attr-defined]
        rc.virtual_hosts[2].routes[3].route.cluster = cluster  # type: ignore[attr-defined]
    return mutate


def _dup_domain(rc: Message) -> None:
    rc.virtual_hosts[1].domains.append(rc.virtual_hosts[0].domains[0])  # type: ignore[attr-defined]


def _header_regex(regex: str) -> Mutation:
    def mutate(rc: Message) -> None:
        h = rc.virtual_hosts[2].routes[3].match.headers.add(name="x-a")  # type: ignore[attr-defined]
        h.string_match.safe_regex.regex = regex
    return mutate


def _query_regex(rc: Message) -> None:
    q = rc.virtual_hosts[2].routes[3].match.query_parameters.add(name="q")  # type: ignore[attr-defined]
    q.string_match.safe_regex.regex = "a(b"


def _eds_bad_ipv6(cla: Message) -> None:
    cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address = "::zz"  # type: ignore[attr-defined]


def _static_cluster_bad_address(c: Message) -> None:
    assert isinstance(c, cluster_pb2.Cluster)
    c.type = cluster_pb2.Cluster.STATIC
    c.ClearField("eds_cluster_config")
    c.load_assignment.cluster_name = c.name
    ep = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    ep.address.socket_address.address = "999.1.1.1"
    ep.address.socket_address.port_value = 80


def _listener_named(name: str) -> Callable[[Good], list[any_pb2.Any]]:
    """A Listener under the route config's name (servers filter SotW RDS/EDS by name)."""
    def build(good: Good) -> list[any_pb2.Any]:
        m = _copy(good[LISTENER][LISTENER_NAME])
        m.name = name  # type: ignore[attr-defined]
        return [pack(m)]
    return build


def _cluster_named(name: str, mutate: Mutation | None = None
                   ) -> Callable[[Good], list[any_pb2.Any]]:
    def extra(good: Good) -> list[any_pb2.Any]:
        c = _copy(good[CLUSTER][CLUSTER_NAME])
        c.name = name  # type: ignore[attr-defined]
        if mutate is not None:
            mutate(c)
        return [pack(c)]
    return extra


L, R, C, E = LISTENER, ROUTE_CONFIGURATION, CLUSTER, CLUSTER_LOAD_ASSIGNMENT
SA = "address.socket_address"
EP0 = "endpoints[0].lb_endpoints[0]"


def corpus() -> list[XdsCase]:
    """Every bad-xDS case (at least 40), in serving order."""
    cases = [
        # ---- listeners (LDS) ----
        XdsCase("lds_wrong_type", "wrong type", L, add(L, _wrong_type(C, CLUSTER_NAME)),
                ("type",)),
        XdsCase("lds_undecodable_bytes", "wrong type", L, add(L, _garbage(L)),
                ("decode", "parse", "error")),
        XdsCase("lds_missing_name", "missing field", L,
                add(L, _copy_of(L, LISTENER_NAME, _field("name", ""))), ("name",)),
        XdsCase("lds_duplicate_name", "duplicate name", L,
                add(L, _copy_of(L, LISTENER_NAME, _field(f"{SA}.port_value", 9081))),
                ("duplicate",)),
        XdsCase("lds_bad_address", "bad address", L,
                replace(L, LISTENER_NAME, _field(f"{SA}.address", "not-an-ip")), ("address",)),
        XdsCase("lds_port_out_of_range", "bad address", L,
                replace(L, LISTENER_NAME, _field(f"{SA}.port_value", 70000)), ("port",)),
        XdsCase("lds_hcm_without_routes", "missing field", L,
                replace(L, LISTENER_NAME, _hcm_edit(lambda h: h.ClearField("rds"))),
                ("route",)),
        XdsCase("lds_hcm_empty_rds_name", "missing field", L,
                replace(L, LISTENER_NAME, _hcm_edit(
                    lambda h: setattr(h.rds, "route_config_name", ""))), ("route_config_name",)),
        XdsCase("lds_hcm_no_stat_prefix", "missing field", L,
                replace(L, LISTENER_NAME, _hcm_edit(lambda h: setattr(h, "stat_prefix", ""))),
                ("stat_prefix",)),
        XdsCase("lds_tcp_proxy_without_cluster", "dangling reference", L,
                replace(L, LISTENER_NAME, _tcp_proxy_without_cluster), ("cluster",)),
        XdsCase("lds_hcm_undecodable", "wrong type", L, replace(L, LISTENER_NAME, _field(
            "filter_chains[0].filters[0].typed_config.value", b"\xff\xff\xff")),
            ("decode", "parse", "error")),
        # ---- route configurations (RDS) ----
        XdsCase("rds_wrong_type", "wrong type", R, _listener_named(ROUTE_NAME), ("type",)),
        XdsCase("rds_invalid_regex", "invalid regex", R, replace(R, ROUTE_NAME, _rc(
            lambda rc: (rc.virtual_hosts[2].routes[3].match.ClearField("prefix"),  # type: ignore[attr-defined]
                        setattr(rc.virtual_hosts[2].routes[3].match.safe_regex,  # type: ignore[attr-defined]
                                "regex", "/(a")))), ("regex",)),
        XdsCase("rds_regex_backreference", "invalid regex", R, replace(R, ROUTE_NAME, _rc(
            lambda rc: (rc.virtual_hosts[2].routes[3].match.ClearField("prefix"),  # type: ignore[attr-defined]
                        setattr(rc.virtual_hosts[2].routes[3].match.safe_regex,  # type: ignore[attr-defined]
                                "regex", r"/(a)\1")))), ("regex",)),
        XdsCase("rds_oversized_regex", "oversized", R, replace(R, ROUTE_NAME, _rc(
            lambda rc: (rc.virtual_hosts[2].routes[3].match.ClearField("prefix"),  # type: ignore[attr-defined]
                        setattr(rc.virtual_hosts[2].routes[3].match.safe_regex,  # type: ignore[attr-defined]
                                "regex", "/(a{1000}){1000}")))), ("regex",)),
        XdsCase("rds_header_invalid_regex", "invalid regex", R,
                replace(R, ROUTE_NAME, _header_regex("[")), ("regex",)),
        XdsCase("rds_query_invalid_regex", "invalid regex", R,
                replace(R, ROUTE_NAME, _query_regex), ("regex",)),
        XdsCase("rds_route_without_action", "missing field", R, replace(R, ROUTE_NAME, _clear(
            _route(3), "route")), ("action",)),
        XdsCase("rds_route_without_match", "missing field", R, replace(R, ROUTE_NAME, _clear(
            _route(3), "match")), ("match",)),
        XdsCase("rds_match_without_path", "missing field", R, replace(R, ROUTE_NAME, _clear(
            f"{_route(3)}.match", "prefix")), ("path_specifier", "match")),
        XdsCase("rds_empty_cluster_name", "missing field", R, replace(R, ROUTE_NAME, _field(
            f"{_route(3)}.route.cluster", "")), ("cluster",)),
        XdsCase("rds_weighted_empty", "missing field", R,
                replace(R, ROUTE_NAME, _weighted([])), ("clusters",)),
        XdsCase("rds_weighted_all_zero", "bad value", R, replace(R, ROUTE_NAME, _weighted(
            [("reviews-v1", 0), ("reviews-v3", 0)])), ("weight",)),
        XdsCase("rds_vhost_without_domains", "missing field", R, replace(R, ROUTE_NAME, _clear(
            "virtual_hosts[1]", "domains")), ("domains",)),
        XdsCase("rds_vhost_without_name", "missing field", R, replace(R, ROUTE_NAME, _field(
            "virtual_hosts[1].name", "")), ("name",)),
        XdsCase("rds_duplicate_domain", "duplicate name", R,
                replace(R, ROUTE_NAME, _dup_domain), ("domain",)),
        XdsCase("rds_weighted_missing_weight", "missing field", R, replace(
            R, ROUTE_NAME, lambda rc: (_weighted([("reviews-v1", 1), ("reviews-v3", 1)])(rc),
                                       rc.virtual_hosts[2].routes[3].route  # type: ignore[attr-defined]
                                       .weighted_clusters.clusters[0].ClearField("weight"))),
            ("weight", "missing")),
        XdsCase("rds_dangling_cluster", "dangling reference", R,
                replace(R, ROUTE_NAME, _validate_and_route_to("no-such-cluster")),
                ("no-such-cluster",)),
        XdsCase("rds_dangling_weighted_cluster", "dangling reference", R, replace(
            R, ROUTE_NAME, lambda rc: (_weighted([("reviews-v1", 1), ("ghost", 1)])(rc),
                                       setattr(rc.validate_clusters, "value", True))),  # type: ignore[attr-defined]
            ("ghost",)),
        XdsCase("rds_header_matcher_no_name", "missing field", R, replace(R, ROUTE_NAME, _rc(
            lambda rc: rc.virtual_hosts[2].routes[3].match.headers.add(  # type: ignore[attr-defined]
                name="", present_match=True))), ("name",)),
        XdsCase("rds_direct_response_bad_status", "bad value", R, replace(R, ROUTE_NAME, _rc(
            lambda rc: (rc.virtual_hosts[2].routes[3].ClearField("route"),  # type: ignore[attr-defined]
                        setattr(rc.virtual_hosts[2].routes[3].direct_response,  # type: ignore[attr-defined]
                                "status", 42)))), ("status",)),
        XdsCase("cds_wrong_type", "wrong type", C, add(C, _wrong_type(E, CLUSTER_NAME)),
                ("type",)),
        XdsCase("cds_undecodable_bytes", "wrong type", C, add(C, _garbage(C)),
                ("decode", "parse", "error")),
        XdsCase("cds_missing_name", "missing field", C, add(C, _cluster_named("")), ("name",)),
        XdsCase("cds_duplicate_name", "duplicate name", C, add(C, _cluster_named(
            CLUSTER_NAME, _field("lb_policy", cluster_pb2.Cluster.RANDOM))), ("duplicate",)),
        XdsCase("cds_unknown_lb_policy", "unknown LB policy", C,
                add(C, _cluster_named("bad-lb", _field("lb_policy", 99))), ("lb_policy",)),
        XdsCase("cds_negative_connect_timeout", "bad value", C, add(C, _cluster_named(
            "neg", _field("connect_timeout.seconds", -1))), ("connect_timeout",)),
        XdsCase("cds_static_bad_address", "bad address", C, add(C, _cluster_named(
            "static-bad", _static_cluster_bad_address)), ("address",)),
        XdsCase("cds_least_request_choice_count_1", "bad value", C, add(C, _cluster_named(
            "lr", _field("least_request_lb_config.choice_count.value", 1))),
            ("choice_count",)),
        # ---- endpoints (EDS) ----
        XdsCase("eds_wrong_type", "wrong type", E, lambda g: [pack(_copy(g[C][CLUSTER_NAME]))],
                ("type",)),
        XdsCase("eds_bad_address", "bad address", E, replace(E, CLUSTER_NAME, _field(
            f"{EP0}.endpoint.{SA}.address", "not-an-ip")), ("address",)),
        XdsCase("eds_bad_ipv6_address", "bad address", E,
                replace(E, CLUSTER_NAME, _eds_bad_ipv6), ("address",)),
        XdsCase("eds_port_out_of_range", "bad address", E, replace(E, CLUSTER_NAME, _field(
            f"{EP0}.endpoint.{SA}.port_value", 70000)), ("port",)),
        XdsCase("eds_zero_weight", "bad value", E, replace(E, CLUSTER_NAME, _field(
            f"{EP0}.load_balancing_weight.value", 0)), ("weight",)),
        XdsCase("eds_missing_cluster_name", "missing field", E, replace(E, CLUSTER_NAME, _field(
            "cluster_name", "")), ("cluster_name", "name")),
        XdsCase("eds_duplicate_name", "duplicate name", E, add(E, _copy_of(
            E, CLUSTER_NAME, _field(f"{EP0}.endpoint.{SA}.port_value", 1))), ("duplicate",)),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases
