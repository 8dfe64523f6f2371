"""Translator: validation errors, clusters, listeners -> services, whole-set translation."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from translator import (
    TranslationError,
    services_from_listeners,
    translate,
    translate_cluster,
    translate_route_config,
    validate_resource,
)
from translator.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    ResourceSet,
    parse_resource,
)
from translator.tables import Health, LbPolicy, Service, ServiceKind

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def good_rc() -> dict[str, Any]:
    return {"@type": ROUTE_CONFIGURATION, "name": "rc", "virtual_hosts": [
        {"name": "vh", "domains": ["a.com", "a.com:80"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]},
        {"name": "vh2", "domains": ["*"], "routes": [
            {"match": {"path": "/x"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 1}]}}}]}]}


def rc_error(mutate: Any) -> TranslationError:
    obj = good_rc()
    mutate(obj)
    msg = parse_resource(obj)
    with pytest.raises(TranslationError) as info:
        validate_resource(ROUTE_CONFIGURATION, msg)
    return info.value


def route0(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["virtual_hosts"][0]["routes"][0]


# ---------------------------------------------------------------- route config validation


def test_good_route_config_validates() -> None:
    validate_resource(ROUTE_CONFIGURATION, parse_resource(good_rc()))


@pytest.mark.parametrize(("mutate", "field", "problem"), [
    (lambda o: route0(o).update(match={"safe_regex": {"regex": "a("}}),
     "virtual_hosts[0].routes[0].match.safe_regex.regex", "invalid regex"),
    (lambda o: route0(o).pop("match"), "virtual_hosts[0].routes[0].match", "required"),
    (lambda o: route0(o)["match"].pop("prefix"),
     "virtual_hosts[0].routes[0].match.path_specifier", "exactly one of"),
    (lambda o: route0(o).pop("route"), "virtual_hosts[0].routes[0].action", "exactly one of"),
    (lambda o: route0(o)["route"].pop("cluster"),
     "virtual_hosts[0].routes[0].route.cluster_specifier", "exactly one of"),
    (lambda o: o["virtual_hosts"][1]["domains"].append("A.com"),
     "virtual_hosts[1].domains[1]", "duplicate domain"),
    (lambda o: o["virtual_hosts"][0]["domains"].append("*"), "virtual_hosts[1].domains[0]",
     "duplicate domain"),
    (lambda o: o["virtual_hosts"][1]["routes"][0]["route"]["weighted_clusters"]["clusters"][0]
     .pop("weight"), "virtual_hosts[1].routes[0].route.weighted_clusters.clusters[0].weight",
     "missing"),
    (lambda o: o["virtual_hosts"][0].update(domains=[]), "virtual_hosts[0].domains",
     "at least 1"),
    (lambda o: o["virtual_hosts"][1]["routes"][0]["route"]["weighted_clusters"]["clusters"][0]
     .update(weight=0), "virtual_hosts[1].routes[0].route.weighted_clusters",
     "greater than 0"),
    (lambda o: route0(o)["match"].update(headers=[{"name": "x", "safe_regex_match": {
        "regex": "[z-a]"}}]), ("virtual_hosts[0].routes[0].match.headers[0].safe_regex_match"
     ".regex"), "invalid regex"),
    (lambda o: route0(o)["match"].update(headers=[{"exact_match": "v"}]),
     "virtual_hosts[0].routes[0].match.headers[0].name", "must not be empty"),
    (lambda o: route0(o)["match"].update(query_parameters=[{"name": "q", "string_match": {
        "safe_regex": {"regex": "(?=x)"}}}]),
     "virtual_hosts[0].routes[0].match.query_parameters[0].string_match.safe_regex.regex",
     "invalid regex"),
    (lambda o: route0(o)["match"].update(headers=[{"name": "x", "string_match": {
        "prefix": ""}}]), "virtual_hosts[0].routes[0].match.headers[0].string_match.prefix",
     "must not be empty"),
    (lambda o: route0(o).update(match={"path_separated_prefix": "/a/"}),
     "virtual_hosts[0].routes[0].match.path_separated_prefix", "does not match pattern"),
    (lambda o: route0(o).update(match={"path_separated_prefix": "/a?b"}),
     "virtual_hosts[0].routes[0].match.path_separated_prefix", "does not match pattern"),
    (lambda o: route0(o).update(route=None, direct_response={"status": 99}),
     "virtual_hosts[0].routes[0].direct_response.status", "must be >= 200 and < 600"),
    (lambda o: route0(o).update(route=None, redirect={"regex_rewrite": {
        "pattern": {"regex": "("}, "substitution": "x"}}),
     "virtual_hosts[0].routes[0].redirect.regex_rewrite.pattern", "invalid regex"),
    (lambda o: o["virtual_hosts"][0].pop("name"), "virtual_hosts[0].name", "must not be empty"),
    (lambda o: o["virtual_hosts"][0]["domains"].append("a\nb"), "virtual_hosts[0].domains[2]",
     "not a valid HTTP header value"),
    (lambda o: route0(o)["match"].update(headers=[{"name": "x", "prefix_match": ""}]),
     "virtual_hosts[0].routes[0].match.headers[0].prefix_match", "must not be empty"),
    (lambda o: route0(o).update(route=None, direct_response={"status": 200, "body": {
        "inline_string": "x" * 5000}}), "virtual_hosts[0].routes[0].direct_response.body",
     "max_direct_response_body_size_bytes"),
])
def test_bad_route_config_names_resource_and_field(mutate: Any, field: str,
                                                   problem: str) -> None:
    def apply(o: dict[str, Any]) -> None:
        mutate(o)
        r = route0(o)
        if r.get("route", 1) is None:
            del r["route"]
    err = rc_error(apply)
    assert err.where == "RouteConfiguration 'rc'"
    assert err.detail.startswith(field + ":"), err.detail
    assert problem in err.detail
    assert str(err).startswith(f"RouteConfiguration 'rc' {field}:")


def test_regex_over_envoys_program_size_limit_is_rejected() -> None:
    # measured on Envoy 1.40: [a-z]{90} (program size 94) loads, [a-z]{101} (105) does not
    ok = good_rc()
    route0(ok)["match"] = {"safe_regex": {"regex": "/[a-z]{90}"}}
    validate_resource(ROUTE_CONFIGURATION, parse_resource(ok))
    err = rc_error(lambda o: route0(o).update(match={"safe_regex": {"regex": "/[a-z]{101}"}}))
    assert err.detail.startswith("virtual_hosts[0].routes[0].match.safe_regex.regex: ")
    assert "program size" in err.detail
    raised = good_rc()
    route0(raised)["match"] = {"safe_regex": {"regex": "/[a-z]{101}", "google_re2": {
        "max_program_size": 200}}}
    validate_resource(ROUTE_CONFIGURATION, parse_resource(raised))


def test_route_config_without_name_is_rejected() -> None:
    obj = good_rc()
    del obj["name"]
    with pytest.raises(TranslationError, match="name: is required"):
        validate_resource(ROUTE_CONFIGURATION, parse_resource(obj))


def test_duplicate_domain_in_one_virtual_host_is_rejected() -> None:
    err = rc_error(lambda o: o["virtual_hosts"][0]["domains"].append("a.com"))
    assert "virtual_hosts[0].domains[2]" in err.detail


# ---------------------------------------------------------------- clusters


def eds_cluster(name: str = "outbound|9080|v1|reviews.default.svc.cluster.local",
                **extra: Any) -> dict[str, Any]:
    return {"@type": CLUSTER, "name": name, "type": "EDS",
            "eds_cluster_config": {"eds_config": {"ads": {}}, "service_name": name}, **extra}


def cla(name: str, *endpoints: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"@type": CLUSTER_LOAD_ASSIGNMENT, "cluster_name": name,
            "endpoints": list(endpoints), **extra}


def lb_ep(ip: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}},
            **extra}


def test_eds_cluster_waits_for_its_assignment() -> None:
    c = translate_cluster(parse_resource(eds_cluster(lb_policy="LEAST_REQUEST")), None)
    assert (c.kind, c.has_endpoints, c.endpoints, c.lb_policy) == (
        "EDS", False, (), LbPolicy.LEAST_REQUEST)


def test_eds_endpoints_weight_health_priority_locality() -> None:
    name = "outbound|9080|v1|reviews.default.svc.cluster.local"
    a = parse_resource(cla(name, {
        "locality": {"region": "r1", "zone": "z1", "sub_zone": "s1"},
        "lb_endpoints": [lb_ep("10.0.0.1", 9080),
                         lb_ep("10.0.0.2", 9080, load_balancing_weight=3,
                               health_status="UNHEALTHY")]},
        {"priority": 1, "lb_endpoints": [lb_ep("10.0.1.1", 9081, health_status="DRAINING")]}))
    c = translate_cluster(parse_resource(eds_cluster()), a)
    assert c.has_endpoints
    got = [(e.address, e.port, e.weight, e.health, e.priority, e.locality) for e in c.endpoints]
    assert got == [
        ("10.0.0.1", 9080, 1, Health.UNKNOWN, 0, "r1/z1/s1"),
        ("10.0.0.2", 9080, 3, Health.UNHEALTHY, 0, "r1/z1/s1"),
        ("10.0.1.1", 9081, 1, Health.DRAINING, 1, ""),
    ]


def test_static_cluster_and_least_request_config() -> None:
    obj = {"@type": CLUSTER, "name": "s", "type": "STATIC", "lb_policy": "LEAST_REQUEST",
           "least_request_lb_config": {"choice_count": 3, "active_request_bias": {
               "default_value": 0.5, "runtime_key": "k"}},
           "common_lb_config": {"healthy_panic_threshold": {"value": 20}},
           "load_assignment": cla("s", {"lb_endpoints": [lb_ep("127.10.0.1", 80)]})}
    obj["load_assignment"].pop("@type")
    c = translate_cluster(parse_resource(obj), None)
    assert (c.kind, c.has_endpoints, c.choice_count, c.active_request_bias, c.panic_threshold) \
        == ("STATIC", True, 3, 0.5, 20.0)
    assert [(e.address, e.port) for e in c.endpoints] == [("127.10.0.1", 80)]


@pytest.mark.parametrize(("policy", "expected", "exact"), [
    ("ROUND_ROBIN", LbPolicy.ROUND_ROBIN, True),
    ("RANDOM", LbPolicy.RANDOM, True),
    ("LEAST_REQUEST", LbPolicy.LEAST_REQUEST, True),
    ("RING_HASH", LbPolicy.RANDOM, False),
    ("MAGLEV", LbPolicy.RANDOM, False),
])
def test_lb_policies(policy: str, expected: LbPolicy, exact: bool) -> None:
    c = translate_cluster(parse_resource(eds_cluster(lb_policy=policy)), None)
    assert c.lb_policy is expected
    assert ("lb_policy" in c.not_enforced) is not exact


def test_unknown_lb_policy_value_is_an_error() -> None:
    msg = parse_resource(eds_cluster())
    msg.lb_policy = 42
    with pytest.raises(TranslationError, match=r"^Cluster '.*' lb_policy: unknown"):
        validate_resource(CLUSTER, msg)


def test_envoy_proto_constraints_are_enforced() -> None:
    for extra, field, problem in [
        ({"connect_timeout": "0s"}, "connect_timeout", "must be > 0"),
        ({"least_request_lb_config": {"choice_count": 1}},
         "least_request_lb_config.choice_count", "must be >= 2"),
    ]:
        with pytest.raises(TranslationError) as info:
            validate_resource(CLUSTER, parse_resource(eds_cluster(**extra)))
        assert info.value.detail.startswith(f"{field}: ")
        assert problem in info.value.detail
    msg = parse_resource(cla("c", {"priority": 129, "lb_endpoints": [lb_ep("10.0.0.1", 80)]}))
    with pytest.raises(TranslationError, match=r"endpoints\[0\]\.priority: 129 must be <= 128"):
        validate_resource(CLUSTER_LOAD_ASSIGNMENT, msg)


def test_istio_cluster_fields_are_carried_as_not_enforced() -> None:
    c = translate_cluster(parse_resource(eds_cluster(
        connect_timeout="10s", circuit_breakers={"thresholds": [{"max_connections": 1}]})), None)
    assert "connect_timeout" in c.not_enforced and "circuit_breakers" in c.not_enforced


@pytest.mark.parametrize(("ip", "port"), [("not-an-ip", 80), ("10.0.0.01", 80),
                                          ("1.2.3", 80), ("::g", 80)])
def test_malformed_endpoint_address(ip: str, port: int) -> None:
    msg = parse_resource(cla("c", {"lb_endpoints": [lb_ep("10.0.0.9", 1), lb_ep(ip, port)]}))
    with pytest.raises(TranslationError) as info:
        validate_resource(CLUSTER_LOAD_ASSIGNMENT, msg)
    assert info.value.where == "ClusterLoadAssignment 'c'"
    assert info.value.detail.startswith(
        "endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address:")
    assert "is not an IP address" in info.value.detail


@pytest.mark.parametrize(("ip", "port", "note"), [
    ("::1", 80, "endpoint [::1]:80 skipped: IPv6 not supported"),
    ("fd00::10", 0, "endpoint [fd00::10]:0 skipped: IPv6 not supported"),
    ("10.0.0.1", 0, "endpoint 10.0.0.1:0 skipped: port 0 not supported"),
])
def test_unreachable_endpoint_is_skipped_and_reported(ip: str, port: int, note: str) -> None:
    # dual-stack meshes send IPv6 endpoints next to IPv4 ones: one must not NACK the rest
    a = parse_resource(cla("c", {"lb_endpoints": [lb_ep("10.0.0.9", 1), lb_ep(ip, port),
                                                  lb_ep("10.0.0.8", 2)]}))
    validate_resource(CLUSTER_LOAD_ASSIGNMENT, a)
    c = translate_cluster(parse_resource(eds_cluster()), a)
    assert [(e.address, e.port) for e in c.endpoints] == [("10.0.0.9", 1), ("10.0.0.8", 2)]
    assert note in c.not_enforced
    static = translate_cluster(parse_resource({
        "@type": CLUSTER, "name": "s", "type": "STATIC", "load_assignment": {
            "cluster_name": "s", "endpoints": [
                {"lb_endpoints": [lb_ep(ip, port), lb_ep("10.0.0.7", 7)]}]}}), None)
    assert [e.address for e in static.endpoints] == ["10.0.0.7"]
    assert note in static.not_enforced


def test_non_socket_endpoint_is_skipped_and_reported() -> None:
    a = parse_resource(cla("c", {"lb_endpoints": [
        lb_ep("10.0.0.9", 1), {"endpoint": {"address": {"pipe": {"path": "/run/x.sock"}}}}]}))
    c = translate_cluster(parse_resource(eds_cluster()), a)
    assert [e.address for e in c.endpoints] == ["10.0.0.9"]
    assert "endpoint pipe skipped: only socket addresses supported" in c.not_enforced


def test_port_out_of_range_is_rejected_at_parse_or_translate() -> None:
    msg = parse_resource(cla("c", {"lb_endpoints": [lb_ep("10.0.0.9", 80)]}))
    msg.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value = 70000
    with pytest.raises(TranslationError, match="port_value: 70000"):
        validate_resource(CLUSTER_LOAD_ASSIGNMENT, msg)


def test_cluster_without_name() -> None:
    with pytest.raises(TranslationError, match="^Cluster '' name: must not be empty"):
        validate_resource(CLUSTER, parse_resource({"@type": CLUSTER, "type": "STATIC"}))


def test_strict_dns_hostnames_are_not_errors() -> None:
    obj = {"@type": CLUSTER, "name": "dns", "type": "STRICT_DNS",
           "load_assignment": {"cluster_name": "dns", "endpoints": [
               {"lb_endpoints": [lb_ep("example.com", 443)]}]}}
    c = translate_cluster(parse_resource(obj), None)
    assert c.endpoints == () and "dns_resolution" in c.not_enforced


# ---------------------------------------------------------------- listeners -> services


def hcm_rds(name: str) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": "s", "rds": {"route_config_name": name,
                                                  "config_source": {"ads": {}}}}}


def tcp(cluster: str) -> dict[str, Any]:
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": "s", "cluster": cluster}}


def listener(name: str, ip: str, port: int, chains: list[dict[str, Any]],
             **extra: Any) -> Any:
    return parse_resource({"@type": LISTENER, "name": name, "address": {"socket_address": {
        "address": ip, "port_value": port}}, "filter_chains": chains, **extra})


def test_istio_outbound_listeners() -> None:
    ls = [
        listener("0.0.0.0_9080", "0.0.0.0", 9080, [
            {"filter_chain_match": {"transport_protocol": "raw_buffer",
                                    "application_protocols": ["http/1.1", "h2c"]},
             "filters": [hcm_rds("9080")]},
            {"filter_chain_match": {"prefix_ranges": [{"address_prefix": "10.96.0.7",
                                                       "prefix_len": 32}]},
             "filters": [tcp("outbound|9080||db.default.svc.cluster.local")]},
            {"filter_chain_match": {"transport_protocol": "tls"},
             "filters": [tcp("PassthroughCluster")]},
        ], default_filter_chain={"filters": [tcp("PassthroughCluster")]},
            traffic_direction="OUTBOUND", bind_to_port=False),
        listener("10.96.0.10_53", "10.96.0.10", 53,
                 [{"filters": [tcp("outbound|53||kube-dns.kube-system.svc.cluster.local")]}]),
        listener("virtualOutbound", "0.0.0.0", 15001, [{"filters": [tcp("PassthroughCluster")]}],
                 use_original_dst=True),
        listener("virtualInbound", "0.0.0.0", 15006, [{"filters": [tcp("InboundPassthrough")]}],
                 traffic_direction="INBOUND"),
    ]
    assert services_from_listeners(ls) == (
        Service("10.96.0.10", 53, ServiceKind.TCP,
                cluster="outbound|53||kube-dns.kube-system.svc.cluster.local",
                listener="10.96.0.10_53"),
        Service("0.0.0.0", 9080, ServiceKind.HTTP, route_table="9080", listener="0.0.0.0_9080"),
        Service("10.96.0.7", 9080, ServiceKind.TCP,
                cluster="outbound|9080||db.default.svc.cluster.local", listener="0.0.0.0_9080"),
    )
    rs = ResourceSet()
    for lst in ls:
        rs.add(lst)
    skipped = dict(translate(rs).skipped_listeners)
    assert set(skipped) == {"virtualOutbound", "virtualInbound"}
    assert "inbound" in skipped["virtualInbound"]


def test_plain_listener_with_inline_route_config() -> None:
    inline = good_rc()
    inline.pop("@type")
    lst = listener("web", "127.10.0.1", 8080, [{"filters": [{
        "name": "hcm", "typed_config": {"@type": HCM, "stat_prefix": "s",
                                        "route_config": inline}}]}])
    rs = ResourceSet()
    rs.add(lst)
    t = translate(rs)
    assert t.services == (Service("127.10.0.1", 8080, ServiceKind.HTTP, route_table="rc",
                                  listener="web"),)
    assert [vh.name for vh in t.route_tables["rc"].virtual_hosts] == ["vh", "vh2"]


def test_destination_port_in_filter_chain_match() -> None:
    lst = listener("l", "0.0.0.0", 15001, [
        {"filter_chain_match": {"destination_port": 8080}, "filters": [hcm_rds("8080")]}])
    assert services_from_listeners([lst]) == (
        Service("0.0.0.0", 8080, ServiceKind.HTTP, route_table="8080", listener="l"),)


def test_listener_with_bad_port() -> None:
    lst = listener("l", "0.0.0.0", 80, [{"filters": [hcm_rds("80")]}])
    lst.address.socket_address.port_value = 70000
    with pytest.raises(TranslationError, match=r"^Listener 'l' address\.socket_address\."
                       r"port_value: 70000"):
        validate_resource(LISTENER, lst)
    lst.address.socket_address.port_value = 0  # valid in Envoy (ephemeral), but no service
    rs = ResourceSet()
    rs.add(lst)
    t = translate(rs)
    assert t.services == () and "port 0" in dict(t.skipped_listeners)["l"]


# ---------------------------------------------------------------- whole set


def test_translate_links_eds_by_service_name_and_is_deterministic() -> None:
    rs = ResourceSet()
    c = eds_cluster("outbound|80||a")
    c["eds_cluster_config"]["service_name"] = "svc-a"
    rs.add(parse_resource(c))
    rs.add(parse_resource(eds_cluster("outbound|80||b")))
    rs.add(parse_resource(cla("svc-a", {"lb_endpoints": [lb_ep("10.1.1.1", 80)]})))
    rs.add(parse_resource(good_rc()))
    t1 = translate(rs)
    assert t1.clusters["outbound|80||a"].has_endpoints
    assert not t1.clusters["outbound|80||b"].has_endpoints
    assert t1 == translate(copy.deepcopy(rs))
    assert list(t1.clusters) == sorted(t1.clusters)


def test_validate_clusters_true_rejects_unknown_cluster() -> None:
    rs = ResourceSet()
    rs.add(parse_resource(eds_cluster("other")))
    obj = good_rc()
    obj["validate_clusters"] = True
    rs.add(parse_resource(obj))
    with pytest.raises(TranslationError, match=r"^RouteConfiguration 'rc' validate_clusters: "
                       "unknown cluster 'a'"):
        translate(rs)
    obj["validate_clusters"] = False
    rs.route_configs["rc"] = parse_resource(obj)
    translate(rs)


def test_translate_route_config_reverses_every_virtual_host() -> None:
    obj = good_rc()
    obj["virtual_hosts"][0]["routes"].append({"match": {"path": "/z"},
                                              "route": {"cluster": "z"}})
    t = translate_route_config(parse_resource(obj))
    assert [r.envoy_index for r in t.virtual_hosts[0].rules] == [1, 0]
    assert [r.action.cluster for r in t.virtual_hosts[0].rules] == ["z", "c"]


def test_matcher_tree_virtual_host_is_rejected_not_ignored() -> None:
    obj = good_rc()
    obj["virtual_hosts"][0]["matcher"] = {"on_no_match": {"action": {
        "name": "route", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.route.v3.Route",
            "match": {"prefix": "/"}, "route": {"cluster": "c"}}}}}
    err = rc_error(lambda o: o.update(obj))
    assert err.detail.startswith("virtual_hosts[0].matcher: ")


def test_panic_threshold_is_enforced_the_rest_of_common_lb_config_is_listed() -> None:
    c = translate_cluster(parse_resource(eds_cluster(common_lb_config={
        "healthy_panic_threshold": {"value": 10}})), None)
    assert c.panic_threshold == 10.0
    assert not any(f.startswith("common_lb_config") for f in c.not_enforced)
    c = translate_cluster(parse_resource(eds_cluster(common_lb_config={
        "locality_weighted_lb_config": {}})), None)
    assert "common_lb_config.locality_weighted_lb_config" in c.not_enforced


def test_connection_manager_settings_and_filters_are_listed_per_service() -> None:
    lst = listener("l", "0.0.0.0", 80, [{"filters": [{"name": "hcm", "typed_config": {
        "@type": HCM, "stat_prefix": "s", "normalize_path": True,
        "rds": {"route_config_name": "80", "config_source": {"ads": {}}},
        "http_filters": [
            {"name": "envoy.filters.http.fault", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ]}}]}])
    (svc,) = services_from_listeners([lst])
    assert svc.not_enforced == ("hcm.normalize_path", "http_filters.envoy.filters.http.fault")
    (tcp_svc,) = services_from_listeners([listener("t", "10.0.0.1", 5432, [{"filters": [{
        "name": "tcp", "typed_config": {"@type": TCP_PROXY, "stat_prefix": "s",
                                        "cluster": "db", "idle_timeout": "5s"}}]}])])
    assert tcp_svc.not_enforced == ("tcp_proxy.idle_timeout",)


def test_star_inside_a_domain_is_literal_and_an_empty_range_matches_nothing() -> None:
    """Envoy accepts these (tests/diff/test_envoy_validation.py asks Envoy itself): a '*'
    that is not the first or last character is a literal, '*x*' is the suffix 'x*', and a
    range_match whose start is not below its end matches no value."""
    from translator.model import Request, route, select_virtual_host
    from translator.tables import ActionKind

    obj = good_rc()
    obj["virtual_hosts"].append({"name": "lit", "domains": ["a.*.b", "*x*", "*.*"], "routes": [
        {"match": {"prefix": "/", "headers": [{"name": "n", "range_match": {
            "start": 5, "end": 1}}]}, "route": {"cluster": "c"}}]})
    table = translate_route_config(parse_resource(obj))
    names = {h: (vh.name if vh else None) for h in
             ("a.*.b", "a.x.b", "qx*", "x", "host.*", "host.b")
             for vh in [select_virtual_host(table, h)]}
    assert names == {"a.*.b": "lit", "a.x.b": "vh2", "qx*": "lit", "x": "vh2",
                     "host.*": "lit", "host.b": "vh2"}
    for value in ("0", "1", "3", "5", "9"):
        d = route(table, Request(authority="a.*.b", path="/", headers=(("n", value),)))
        assert (d.virtual_host, d.action) == ("lit", ActionKind.NO_ROUTE), (value, d)
