"""The routing model on translated tables: every match kind, domain precedence, actions.

Expectations are Envoy's semantics (config_impl.cc, header_utility.cc, http/utility.cc),
written out by hand per case; each route config is built from JSON like an xDS server sends.
"""

from __future__ import annotations

from typing import Any

import pytest

from translator import translate_route_config
from translator.model import Request, pick_weighted, route, select_virtual_host
from translator.resources import ROUTE_CONFIGURATION, parse_resource
from translator.tables import ActionKind, Cluster, LbPolicy, RouteTable


def table(routes: list[dict[str, Any]], domains: list[str] | None = None,
          **rc_fields: Any) -> RouteTable:
    """A one-virtual-host route config; route i goes to cluster c<i> unless it has an action."""
    built = []
    for i, r in enumerate(routes):
        r = dict(r)
        if not {"route", "redirect", "direct_response"} & r.keys():
            r["route"] = {"cluster": f"c{i}"}
        built.append(r)
    obj = {"@type": ROUTE_CONFIGURATION, "name": "rc",
           "virtual_hosts": [{"name": "vh", "domains": domains or ["*"], "routes": built}],
           **rc_fields}
    return translate_route_config(parse_resource(obj))


def cluster_for(t: RouteTable, path: str = "/", method: str = "GET", authority: str = "h",
                headers: dict[str, str | list[str]] | None = None, scheme: str = "http") -> str | None:
    req = Request.from_dict({"method": method, "authority": authority, "path": path,
                             "headers": headers or {}, "scheme": scheme})
    return route(t, req).cluster


def matches(match: dict[str, Any], path: str = "/", **kw: Any) -> bool:
    """Whether a single route with ``match`` matches the request."""
    return cluster_for(table([{"match": match}]), path, **kw) == "c0"


# ---------------------------------------------------------------- path matching


@pytest.mark.parametrize(("path", "expected"), [
    ("/get", True), ("/getx", True), ("/get/a", True), ("/get?x=1", True),
    ("/ge", False), ("/a/get", False), ("/GET", False),
])
def test_prefix_is_anchored_and_case_sensitive(path: str, expected: bool) -> None:
    assert matches({"prefix": "/get"}, path) is expected


def test_prefix_case_insensitive() -> None:
    assert matches({"prefix": "/Get", "case_sensitive": False}, "/gEtX")
    assert not matches({"prefix": "/Get", "case_sensitive": False}, "/ge")


@pytest.mark.parametrize(("path", "expected"), [
    ("/a", True), ("/a?x=1", True), ("/a#frag", True), ("/a/", False), ("/ab", False),
    ("/A", False),
])
def test_exact_path_ignores_query_and_fragment(path: str, expected: bool) -> None:
    assert matches({"path": "/a"}, path) is expected


def test_exact_path_case_insensitive() -> None:
    assert matches({"path": "/Ab", "case_sensitive": False}, "/aB?q")


@pytest.mark.parametrize(("path", "expected"), [
    ("/get", True), ("/get/", True), ("/get/a", True), ("/get?x=1", True), ("/get#f", True),
    ("/getx", False), ("/ge", False), ("/GET", False),
])
def test_path_separated_prefix(path: str, expected: bool) -> None:
    assert matches({"path_separated_prefix": "/get"}, path) is expected


def test_path_separated_prefix_case_insensitive() -> None:
    assert matches({"path_separated_prefix": "/Get", "case_sensitive": False}, "/gET/x")
    assert not matches({"path_separated_prefix": "/Get", "case_sensitive": False}, "/getx")


@pytest.mark.parametrize(("path", "expected"), [
    ("/a/12", True), ("/a/12?x=y", True), ("/a/12x", False), ("/b/a/12", False), ("/a/", False),
])
def test_safe_regex_is_full_match_on_path_without_query(path: str, expected: bool) -> None:
    assert matches({"safe_regex": {"regex": "/a/[0-9]+"}}, path) is expected


def test_safe_regex_ignores_case_sensitive_flag() -> None:
    assert not matches({"safe_regex": {"regex": "/a"}, "case_sensitive": False}, "/A")


def test_connect_matcher_matches_only_connect() -> None:
    t = table([{"match": {"connect_matcher": {}}}])
    assert cluster_for(t, "/", method="CONNECT") == "c0"
    assert cluster_for(t, "/", method="GET") is None


def test_ignore_path_parameters_in_path_matching() -> None:
    t = table([{"match": {"path": "/a/b"}}], ignore_path_parameters_in_path_matching=True)
    assert cluster_for(t, "/a/b;v=1?x") == "c0"
    t2 = table([{"match": {"path": "/a/b"}}])
    assert cluster_for(t2, "/a/b;v=1") is None


# ---------------------------------------------------------------- header matching


def hm(spec: dict[str, Any], headers: dict[str, str | list[str]] | None = None,
       **kw: Any) -> bool:
    return matches({"prefix": "/", "headers": [spec]}, "/", headers=headers, **kw)


@pytest.mark.parametrize(("spec", "value", "expected"), [
    ({"exact_match": "v1"}, "v1", True),
    ({"exact_match": "v1"}, "V1", False),
    ({"exact_match": ""}, "anything", True),  # legacy: empty exact matches any value
    ({"prefix_match": "ab"}, "abc", True),
    ({"prefix_match": "ab"}, "cab", False),
    ({"suffix_match": "bc"}, "abc", True),
    ({"suffix_match": "bc"}, "bca", False),
    ({"contains_match": "b"}, "abc", True),
    ({"contains_match": "x"}, "abc", False),
    ({"safe_regex_match": {"regex": "v[0-9]"}}, "v7", True),
    ({"safe_regex_match": {"regex": "v[0-9]"}}, "v77", False),
    ({"range_match": {"start": 10, "end": 20}}, "10", True),
    ({"range_match": {"start": 10, "end": 20}}, "20", False),
    ({"range_match": {"start": -5, "end": 0}}, "-1", True),
    ({"range_match": {"start": 10, "end": 20}}, "15x", False),
    ({"range_match": {"start": 10, "end": 20}}, " 15 ", True),
    ({"string_match": {"exact": "Jason"}}, "jason", False),
    ({"string_match": {"exact": "Jason", "ignore_case": True}}, "jASON", True),
    ({"string_match": {"prefix": "Ja", "ignore_case": True}}, "jason", True),
    ({"string_match": {"suffix": "ON", "ignore_case": True}}, "jason", True),
    ({"string_match": {"contains": "AS", "ignore_case": True}}, "jason", True),
    ({"string_match": {"contains": "AS"}}, "jason", False),
    ({"string_match": {"safe_regex": {"regex": "j.*n"}}}, "jason", True),
    ({"string_match": {"exact": ""}}, "", True),
    ({"present_match": True}, "", True),
    ({"present_match": False}, "x", False),
    ({}, "x", True),  # no specifier: presence
])
def test_header_kinds_on_a_present_header(spec: dict[str, Any], value: str,
                                          expected: bool) -> None:
    assert hm({"name": "X-User", **spec}, {"x-user": value}) is expected
    assert hm({"name": "X-User", **spec, "invert_match": True}, {"x-user": value}) is not expected


@pytest.mark.parametrize(("spec", "expected"), [
    ({"exact_match": "v1"}, False),
    ({"exact_match": "v1", "invert_match": True}, False),  # absent fails even inverted
    ({"present_match": True}, False),
    ({"present_match": False}, True),
    ({"present_match": True, "invert_match": True}, True),
    ({"present_match": False, "invert_match": True}, False),
    ({}, False),
    ({"string_match": {"exact": ""}, "treat_missing_header_as_empty": True}, True),
    ({"exact_match": "v1", "invert_match": True, "treat_missing_header_as_empty": True}, True),
    ({"range_match": {"start": 0, "end": 9}, "treat_missing_header_as_empty": True}, False),
])
def test_header_kinds_on_a_missing_header(spec: dict[str, Any], expected: bool) -> None:
    assert hm({"name": "x-user", **spec}, {"other": "v1"}) is expected


def test_a_repeated_header_matches_when_any_value_does() -> None:
    # measured against Envoy 1.40 by the differential test (tests/diff)
    assert hm({"name": "x-a", "exact_match": "1"}, {"x-a": ["1", "2"]})
    assert hm({"name": "x-a", "exact_match": "2"}, {"x-a": ["1", "2"]})
    assert not hm({"name": "x-a", "exact_match": "3"}, {"x-a": ["1", "2"]})
    # invert applies to the any-value result
    assert not hm({"name": "x-a", "exact_match": "1", "invert_match": True}, {"x-a": ["1", "2"]})
    assert hm({"name": "x-a", "exact_match": "3", "invert_match": True}, {"x-a": ["1", "2"]})


def test_whitespace_around_header_values_is_dropped() -> None:
    assert hm({"name": "x-a", "exact_match": "v1"}, {"x-a": " v1\t"})
    assert hm({"name": ":authority", "exact_match": "h"}, authority=" h ")
    t = table([{"match": {"prefix": "/"}, "route": {"cluster_header": "x-c"}}])
    assert route(t, Request(headers=(("x-c", " blue "),))).cluster == "blue"


def test_header_names_are_case_insensitive() -> None:
    req = Request(path="/", headers=(("X-A", "1"),))
    t = table([{"match": {"prefix": "/", "headers": [{"name": "x-A", "exact_match": "1"}]}}])
    assert route(t, req).cluster == "c0"


def test_pseudo_headers() -> None:
    assert hm({"name": ":method", "exact_match": "POST"}, method="POST")
    assert not hm({"name": ":method", "exact_match": "POST"}, method="GET")
    assert hm({"name": ":authority", "exact_match": "svc:9080"}, authority="svc:9080")
    assert hm({"name": ":scheme", "exact_match": "https"}, scheme="https")
    # :path is the full path including the query (the fragment is gone before routing)
    assert matches({"prefix": "/", "headers": [{"name": ":path", "exact_match": "/p?q=1"}]},
                   "/p?q=1#frag")


def test_host_header_matcher_sees_the_host_value() -> None:
    assert hm({"name": "host", "exact_match": "a.com:80"}, authority="a.com:80")
    assert hm({"name": "Host", "present_match": True}, authority="a")
    assert not hm({"name": "host", "present_match": True}, authority="")


def test_grpc_match_needs_grpc_content_type() -> None:
    m = {"prefix": "/", "grpc": {}}
    assert matches(m, headers={"content-type": "application/grpc"})
    assert matches(m, headers={"content-type": "application/grpc+proto"})
    assert not matches(m, headers={"content-type": "application/grpc-web"})
    assert not matches(m)


# ---------------------------------------------------------------- query parameters


@pytest.mark.parametrize(("spec", "path", "expected"), [
    ({"string_match": {"exact": "1"}}, "/?v=1", True),
    ({"string_match": {"exact": "1"}}, "/?v=2", False),
    ({"string_match": {"exact": "1"}}, "/?v=1&v=2", True),  # first value counts
    ({"string_match": {"exact": "2"}}, "/?v=1&v=2", False),
    ({"string_match": {"exact": "A", "ignore_case": True}}, "/?x=0&v=a", True),
    ({"string_match": {"prefix": "ab"}}, "/?v=abc", True),
    ({"string_match": {"safe_regex": {"regex": "[0-9]+"}}}, "/?v=123", True),
    ({"string_match": {"exact": ""}}, "/?v", True),  # no '=' -> empty value
    ({"present_match": True}, "/?v", True),
    ({"present_match": True}, "/?w=1", False),
    ({"present_match": True}, "/", False),
    ({"present_match": False}, "/?w=1", True),  # measured: false means absent
    ({"present_match": False}, "/?v=1", False),
    ({}, "/?v=1", True),
    ({"string_match": {"exact": "a b"}}, "/?v=a%20b", False),  # not percent-decoded
    ({"string_match": {"exact": "a%20b"}}, "/?v=a%20b", True),
    ({"string_match": {"exact": "1"}}, "/?v=1#frag", True),
])
def test_query_parameters(spec: dict[str, Any], path: str, expected: bool) -> None:
    assert matches({"prefix": "/", "query_parameters": [{"name": "v", **spec}]}, path) \
        is expected


def test_grpc_local_replies_are_http_200() -> None:
    grpc = {"content-type": "application/grpc"}
    t = table([{"match": {"path": "/svc/M"}, "route": {"cluster": "svc"}},
               {"match": {"path": "/dr"}, "direct_response": {"status": 503}}])
    known = {"other": Cluster("other", LbPolicy.ROUND_ROBIN)}
    for path, status, grpc_status in [("/none", 404, 200), ("/dr", 503, 200),
                                      ("/svc/M", 503, 200)]:
        plain = route(t, Request.from_dict({"path": path}), known)
        over_grpc = route(t, Request.from_dict({"path": path, "headers": grpc}), known)
        assert (plain.status, over_grpc.status) == (status, grpc_status)
        assert plain.action == over_grpc.action
    ok = route(t, Request.from_dict({"path": "/svc/M", "headers": grpc}))
    assert (ok.cluster, ok.status) == ("svc", None)
    web = route(t, Request.from_dict({"path": "/none", "headers": {
        "content-type": "application/grpc-web"}}))
    assert web.status == 404


def test_all_conditions_are_anded() -> None:
    m = {"prefix": "/api", "headers": [{"name": "x-a", "exact_match": "1"}],
         "query_parameters": [{"name": "q", "present_match": True}]}
    assert matches(m, "/api?q", headers={"x-a": "1"})
    assert not matches(m, "/api", headers={"x-a": "1"})
    assert not matches(m, "/api?q", headers={"x-a": "2"})
    assert not matches(m, "/x?q", headers={"x-a": "1"})


# ---------------------------------------------------------------- last-match-wins contract


def test_rules_are_reversed_and_the_last_match_is_envoys_first() -> None:
    t = table([
        {"name": "exact", "match": {"path": "/a/b"}},
        {"name": "pfx", "match": {"prefix": "/a"}},
        {"name": "all", "match": {"prefix": "/"}},
    ])
    rules = t.virtual_hosts[0].rules
    assert [r.envoy_index for r in rules] == [2, 1, 0]
    assert [r.name for r in rules] == ["all", "pfx", "exact"]
    d = route(t, Request(path="/a/b"))
    assert (d.route, d.envoy_index, d.rule, d.cluster) == ("exact", 0, 2, "c0")
    d = route(t, Request(path="/a/c"))
    assert (d.route, d.envoy_index, d.rule, d.cluster) == ("pfx", 1, 1, "c1")
    d = route(t, Request(path="/z"))
    assert (d.route, d.envoy_index, d.rule, d.cluster) == ("all", 2, 0, "c2")


def test_a_shadowed_route_is_never_chosen() -> None:
    t = table([{"match": {"prefix": "/"}}, {"match": {"path": "/a"}}])
    assert cluster_for(t, "/a") == "c0"


# ---------------------------------------------------------------- virtual host selection


def vhosts(*domain_lists: list[str], **rc_fields: Any) -> RouteTable:
    obj = {"@type": ROUTE_CONFIGURATION, "name": "rc", **rc_fields, "virtual_hosts": [
        {"name": f"v{i}", "domains": d, "routes": [{"match": {"prefix": "/"},
                                                   "route": {"cluster": f"c{i}"}}]}
        for i, d in enumerate(domain_lists)]}
    return translate_route_config(parse_resource(obj))


def vh_name(t: RouteTable, authority: str) -> str | None:
    vh = select_virtual_host(t, authority)
    return vh.name if vh else None


def test_domain_precedence() -> None:
    t = vhosts(["*"], ["foo*"], ["*.com"], ["*.foo.com"], ["www.foo.com"], ["*-bar.foo.com"])
    assert vh_name(t, "www.foo.com") == "v4"  # exact first
    assert vh_name(t, "WWW.Foo.Com") == "v4"  # case-insensitive
    assert vh_name(t, "a.foo.com") == "v3"  # longest suffix
    assert vh_name(t, "x-bar.foo.com") == "v5"  # longer suffix beats *.foo.com
    assert vh_name(t, "a.bar.com") == "v2"
    assert vh_name(t, "foo.org") == "v1"  # prefix after suffixes
    assert vh_name(t, "other") == "v0"  # then '*'
    assert vh_name(t, ".foo.com") == "v2"  # '*.foo.com' needs at least one char before


def test_suffix_beats_prefix_even_when_prefix_is_longer() -> None:
    t = vhosts(["foo.bar*"], ["*.org"])
    assert vh_name(t, "foo.bar.org") == "v1"


def test_wildcard_without_default_gives_no_virtual_host() -> None:
    t = vhosts(["a.com"])
    d = route(t, Request(authority="b.com"))
    assert (d.virtual_host, d.action, d.status) == (None, ActionKind.NO_ROUTE, 404)


def test_port_in_host_is_matched_literally() -> None:
    t = vhosts(["reviews"], ["reviews:9080"])
    assert vh_name(t, "reviews") == "v0"
    assert vh_name(t, "reviews:9080") == "v1"
    assert vh_name(t, "reviews:80") is None
    t2 = vhosts(["*.svc"])
    assert vh_name(t2, "a.svc:80") is None  # the port is part of the compared string
    t3 = vhosts(["api*"])
    assert vh_name(t3, "api.x:80") == "v0"


def test_ignore_port_in_host_matching() -> None:
    t = vhosts(["reviews"], ["*.svc"], ignore_port_in_host_matching=True)
    assert vh_name(t, "Reviews:9080") == "v0"
    assert vh_name(t, "a.svc:80") == "v1"
    t6 = vhosts(["[::1]"], ignore_port_in_host_matching=True)
    assert vh_name(t6, "[::1]:80") == "v0"
    assert vh_name(t6, "[::1]") == "v0"


def test_only_default_vhost_matches_any_authority() -> None:
    t = vhosts(["*"])
    assert vh_name(t, "") == "v0"
    assert vh_name(t, "anything:1") == "v0"


# ---------------------------------------------------------------- actions


def one(action: dict[str, Any], path: str = "/p?q=1", authority: str = "h.com",
        scheme: str = "http", match: dict[str, Any] | None = None) -> Any:
    t = table([{"match": match or {"prefix": "/"}, **action}])
    return route(t, Request(path=path, authority=authority, scheme=scheme))


def test_cluster_action() -> None:
    d = one({"route": {"cluster": "svc"}})
    assert (d.action, d.cluster, d.status, d.candidates) == (ActionKind.CLUSTER, "svc", None, ())


def test_unknown_cluster_gets_cluster_not_found_status() -> None:
    known = {"other": Cluster("other", LbPolicy.ROUND_ROBIN)}
    for code, status in [(None, 503), ("NOT_FOUND", 404), ("INTERNAL_SERVER_ERROR", 500)]:
        ra: dict[str, Any] = {"cluster": "svc"}
        if code:
            ra["cluster_not_found_response_code"] = code
        t = table([{"match": {"prefix": "/"}, "route": ra}])
        d = route(t, Request(), known)
        assert (d.cluster, d.status) == ("svc", status)
        assert route(t, Request(), {"svc": known["other"]}).status is None
        assert route(t, Request()).status is None  # nothing known about clusters


def test_cluster_header_resolves_from_the_request() -> None:
    t = table([{"match": {"prefix": "/"}, "route": {"cluster_header": "X-Cluster"}}])
    d = route(t, Request(headers=(("x-cluster", "blue"),)))
    assert (d.cluster, d.status) == ("blue", None)
    assert t.virtual_hosts[0].rules[0].needs_slow_path == ("cluster_header",)
    d = route(t, Request())
    assert (d.cluster, d.status) == (None, 503)


def test_weighted_clusters_candidates_and_pick() -> None:
    d = one({"route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 10}, {"name": "b", "weight": 0}, {"name": "c", "weight": 30}]}}})
    assert d.action is ActionKind.WEIGHTED_CLUSTERS
    assert [(c.cluster, c.weight) for c in d.candidates] == [("a", 10), ("b", 0), ("c", 30)]
    assert d.cluster is None
    t = table([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 10}, {"name": "b", "weight": 0}, {"name": "c", "weight": 30}]}}}])
    action = t.virtual_hosts[0].rules[0].action
    assert action.total_weight == 40
    picks = [pick_weighted(action, v) for v in range(80)]
    assert picks[:10] == ["a"] * 10 and picks[10:40] == ["c"] * 30
    assert picks[40:50] == ["a"] * 10  # value % total
    assert "b" not in picks


def test_direct_response() -> None:
    d = one({"direct_response": {"status": 418, "body": {"inline_string": "teapot"}}})
    assert (d.action, d.status, d.location, d.cluster) == (ActionKind.DIRECT_RESPONSE, 418,
                                                            None, None)
    t = table([{"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body": {"inline_string": "ok"}}}])
    assert t.virtual_hosts[0].rules[0].action.body == "ok"


def test_direct_response_3xx_carries_the_request_url_as_location() -> None:
    d = one({"direct_response": {"status": 302}}, path="/x?y", authority="h:8080")
    assert (d.status, d.location) == (302, "http://h:8080/x?y")


@pytest.mark.parametrize(("redirect", "path", "authority", "scheme", "status", "location"), [
    ({"host_redirect": "new.com"}, "/p?q=1", "h.com", "http", 301, "http://new.com/p?q=1"),
    ({"https_redirect": True}, "/p", "h.com:80", "http", 301, "https://h.com/p"),
    ({"https_redirect": True}, "/p", "h.com:8080", "http", 301, "https://h.com:8080/p"),
    ({"scheme_redirect": "HTTPS"}, "/p", "h.com:80", "http", 301, "HTTPS://h.com/p"),
    ({"host_redirect": "n.com:9", "port_redirect": 81}, "/p", "h:1", "http", 301,
     "http://n.com:9:81/p"),
    ({"path_redirect": "new"}, "/p?q", "h", "http", 301, "http://h/new?q"),
    ({"scheme_redirect": "https", "port_redirect": 8443}, "/p", "h.com:80", "http", 301,
     "https://h.com:8443/p"),
    ({"port_redirect": 81}, "/p", "h.com:80", "http", 301, "http://h.com:81/p"),
    ({"path_redirect": "/new", "response_code": "FOUND"}, "/p?q=1", "h", "http", 302,
     "http://h/new?q=1"),
    ({"path_redirect": "/new?a=b", "strip_query": True}, "/p?q=1", "h", "http", 301,
     "http://h/new?a=b"),
    ({"path_redirect": "/new", "strip_query": True, "response_code": "SEE_OTHER"}, "/p?q=1",
     "h", "http", 303, "http://h/new"),
    ({"strip_query": True, "response_code": "TEMPORARY_REDIRECT"}, "/p?q=1", "h", "http", 307,
     "http://h/p"),
    ({"prefix_rewrite": "/v2", "response_code": "PERMANENT_REDIRECT"}, "/api/x?q", "h", "http",
     308, "http://h/v2/x?q"),
    ({"regex_rewrite": {"pattern": {"regex": "^/api/(.*)$"}, "substitution": "/b/\\1"}},
     "/api/x?q", "h", "http", 301, "http://h/b/x?q"),
])
def test_redirect_location(redirect: dict[str, Any], path: str, authority: str, scheme: str,
                           status: int, location: str) -> None:
    d = one({"redirect": redirect}, path=path, authority=authority, scheme=scheme,
            match={"prefix": "/api"} if "prefix_rewrite" in redirect else None)
    assert (d.action, d.status, d.location) == (ActionKind.REDIRECT, status, location)


def test_no_route_in_a_virtual_host() -> None:
    t = table([{"match": {"path": "/only"}}])
    d = route(t, Request(path="/other"))
    assert d.to_json() == {
        "route_config": "rc", "virtual_host": "vh", "route": None, "envoy_index": None,
        "rule": None, "action": "no_route", "cluster": None, "candidates": [], "status": 404,
        "location": None, "not_enforced": []}


@pytest.mark.parametrize(("numerator", "denominator", "matches", "listed"), [
    (0, "HUNDRED", False, False),  # measured: never matches
    (100, "HUNDRED", True, False),  # always
    (200, "HUNDRED", True, False),
    (50, "HUNDRED", True, True),  # random in Envoy: evaluated as matching, listed
    (1, "MILLION", True, True),
])
def test_runtime_fraction(numerator: int, denominator: str, matches: bool,
                          listed: bool) -> None:
    t = table([{"match": {"prefix": "/", "runtime_fraction": {"default_value": {
        "numerator": numerator, "denominator": denominator}, "runtime_key": "k"}}},
        {"match": {"path": "/x"}}])
    d = route(t, Request(path="/"))
    assert (d.cluster == "c0") is matches
    assert ("match.runtime_fraction" in d.not_enforced) is (listed and matches)


def test_not_enforced_fields_are_reported_per_rule() -> None:
    t = table([{"match": {"prefix": "/", "runtime_fraction": {"default_value": {
        "numerator": 50}}}, "route": {"cluster": "c", "timeout": "1s", "retry_policy": {
            "num_retries": 2, "per_try_timeout": "1s"}, "prefix_rewrite": "/x", "hash_policy": [{"header": {
                "header_name": "x"}}]},
        "request_headers_to_add": [{"header": {"key": "a", "value": "b"}}],
        "typed_per_filter_config": {"envoy.filters.http.fault": {
            "@type": "type.googleapis.com/google.protobuf.Struct", "value": {}}}}])
    d = route(t, Request())
    for f in ("match.runtime_fraction", "timeout", "retry_policy.per_try_timeout",
              "prefix_rewrite", "hash_policy", "request_headers_to_add",
              "typed_per_filter_config"):
        assert f in d.not_enforced
    assert d.cluster == "c"


def test_request_from_dict() -> None:
    r = Request.from_dict({"method": "POST", "path": "/a", "headers": {
        "Host": "svc:80", "X-A": ["1", "2"]}})
    assert r == Request("POST", "svc:80", "/a", (("x-a", "1"), ("x-a", "2")))
    with pytest.raises(ValueError, match="unknown field"):
        Request.from_dict({"pathh": "/"})
