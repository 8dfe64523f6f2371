"""The three real Istio config dumps (shared testdata), translated and routed.

Expectations are reasoned from Envoy's semantics for each file's exact routes; see
testdata/istio/SOURCE.md for what each dump holds.
"""

from __future__ import annotations

import json

import pytest

from tests.support.testdata import istio_dump
from translator import translate
from translator.model import Request, route
from translator.resources import parse_config_dump
from translator.tables import ActionKind, LbPolicy, Tables


def load(name: str) -> Tables:
    with open(istio_dump(name)) as f:
        return translate(parse_config_dump(json.load(f)))


PRODUCTPAGE = "outbound|9080||productpage.default.svc.cluster.local"
HTTPBIN = "outbound|8000||httpbin.default.svc.cluster.local"


@pytest.mark.parametrize(("path", "envoy_index"), [
    ("/productpage", 0),
    ("/productpage?u=normal", 0),
    ("/productpage/", None),  # exact
    ("/Productpage", None),  # case-sensitive
    ("/static", 1),
    ("/static/css/x.css", 1),
    ("/staticx", 1),  # plain prefix
    ("/login", 2),
    ("/logout", 3),
    ("/logout/x", None),
    ("/api/v1/products", 4),
    ("/api/v1/products/0/reviews", 4),
    ("/api/v1/product", None),
    ("/", None),
])
def test_bookinfo_gateway(path: str, envoy_index: int | None) -> None:
    t = load("istio_bookinfo_gateway_rds_cds.json")
    rt = t.route_tables["http.8080"]
    assert [vh.name for vh in rt.virtual_hosts] == ["*:80"]
    assert [r.envoy_index for r in rt.virtual_hosts[0].rules] == [4, 3, 2, 1, 0]
    d = route(rt, Request(authority="bookinfo.example.com", path=path), t.clusters)
    assert d.virtual_host == "*:80"  # the only domain is '*'
    assert d.envoy_index == envoy_index
    if envoy_index is None:
        assert (d.action, d.status, d.rule) == (ActionKind.NO_ROUTE, 404, None)
        return
    assert d.rule == 4 - envoy_index
    assert (d.action, d.cluster) == (ActionKind.CLUSTER, PRODUCTPAGE)
    # the partial dump holds only the v1 subset cluster: Envoy answers 503 (no cluster)
    assert d.status == 503
    for f in ("retry_policy.retry_on.retriable-status-codes", "timeout", "max_grpc_timeout"):
        assert f in d.not_enforced


def test_bookinfo_cluster() -> None:
    t = load("istio_bookinfo_gateway_rds_cds.json")
    (c,) = t.clusters.values()
    assert c.name == "outbound|9080|v1|productpage.default.svc.cluster.local"
    assert (c.kind, c.lb_policy, c.has_endpoints) == ("EDS", LbPolicy.LEAST_REQUEST, False)
    assert "transport_socket_matches" in c.not_enforced  # Istio mTLS is carried, not enforced


@pytest.mark.parametrize(("authority", "path", "prefix_hit", "psp_hit"), [
    ("httpbin.example.com", "/get", True, True),
    ("httpbin.example.com", "/getx", True, False),  # prefix vs path_separated_prefix
    ("httpbin.example.com", "/get/anything", True, True),
    ("httpbin.example.com", "/get?show_env=1", True, True),
    ("httpbin.example.com:80", "/get", True, True),  # ignore_port_in_host_matching
    ("HTTPBIN.example.com:8080", "/get/", True, True),
    ("httpbin.example.com", "/ge", False, False),
    ("httpbin.example.com", "/GET", False, False),  # case_sensitive: true
])
def test_gateway_prefix_vs_path_separated_prefix(authority: str, path: str, prefix_hit: bool,
                                                 psp_hit: bool) -> None:
    for name, rc_name, hit, route_name, not_found in [
        ("istio_gateway_prefix_rds.json", "http.8080", prefix_hit, None, 503),
        ("istio_k8s_gateway_path_separated_prefix_rds.json", "http.80", psp_hit,
         "default.http.0", 500),
    ]:
        t = load(name)
        rt = t.route_tables[rc_name]
        assert rt.ignore_port_in_host_matching
        d = route(rt, Request(authority=authority, path=path), t.clusters)
        assert d.virtual_host == "httpbin.example.com:80"
        if hit:
            assert (d.action, d.cluster, d.route, d.envoy_index) == (
                ActionKind.CLUSTER, HTTPBIN, route_name, 0), name
            assert d.status is None  # route-only dump: nothing known about clusters
            assert rt.virtual_hosts[0].rules[0].action.cluster_not_found_status == not_found
        else:
            assert (d.action, d.status) == (ActionKind.NO_ROUTE, 404), name


def test_gateway_unknown_host_has_no_virtual_host() -> None:
    t = load("istio_gateway_prefix_rds.json")
    d = route(t.route_tables["http.8080"], Request(authority="other.example.com", path="/get"))
    assert (d.virtual_host, d.action, d.status) == (None, ActionKind.NO_ROUTE, 404)


def test_unnamed_static_route_configs_are_not_tables() -> None:
    t = load("istio_k8s_gateway_path_separated_prefix_rds.json")
    assert list(t.route_tables) == ["http.80"]
