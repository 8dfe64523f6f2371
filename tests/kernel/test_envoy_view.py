"""Rules on what Envoy's router sees rather than the raw request bytes: the kernel decides
them only where its parsed slots hold exactly that (``host``, 0% runtime fractions), and
hands the rest to the slow path, where translator.model applies Envoy's view.

Every request is checked against translator.model (the oracle) and against the counters
that say whether the kernel or the slow path decided it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost
from translator.model import Request, route
from translator.tables import Rule, StringKind, Tables, ValueMatch

VIP, PORT = "127.10.0.7", 8080
HOST = "svc.test"


@dataclass(frozen=True)
class Case:
    """One request, built both as bytes for the kernel and as the model's Request."""

    path: str = "/"
    host: str = HOST
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    body: bytes | None = None

    def raw(self) -> bytes:
        return http(self.method, self.path, self.host, self.headers, self.body)

    def model(self) -> Request:
        hs = tuple((k.lower(), v) for k, v in self.headers.items())
        if self.body is not None:
            hs += (("content-length", str(len(self.body))),)
        return Request(method=self.method, authority=self.host, path=self.path, headers=hs)


def _tables(special: Rule, backends: dict) -> Tables:
    """A catch-all to c1 and ``special`` (to c2) after it, so it wins when it matches."""
    b1, b2 = make_backends(backends, "b1", "b2")
    return http_tables(VIP, PORT, [vhost("svc", [HOST, "other.test"], [
        rule("/", action=to("c1")), special])],
        [cluster("c1", [b1]), cluster("c2", [b2])])


def _run(mesh: Mesh, client: Client, tables: Tables, cases: list[Case]) -> dict[str, int]:
    """Send every case on one connection; each lands where the model says.  Returns how
    the counters moved."""
    mesh.apply(tables)
    rt = tables.route_tables["rt"]
    want = {"c1": "b1", "c2": "b2"}
    before = mesh.counters()
    client.connect("a", VIP, PORT)
    got = client.requests("a", [c.raw() for c in cases])
    for c, r in zip(cases, got, strict=True):
        decision = route(rt, c.model(), tables.clusters)
        assert r["headers"]["x-backend"] == want[decision.cluster or ""], (c, decision)
    after = mesh.counters()
    return {k: after[k] - before[k] for k in after}


def test_host_matcher_sees_the_host_value_in_kernel(mesh: Mesh, client: Client,
                                                    backends) -> None:
    """Envoy gives a ``host`` header matcher the Host value (:authority)."""
    special = rule("/", action=to("c2"), headers=(ValueMatch("host", StringKind.EXACT, HOST),))
    cases = [Case(), Case(host="other.test"), Case("/x"), Case(host="other.test")]
    moved = _run(mesh, client, _tables(special, backends), cases)
    assert moved["fast"] == len(cases)  # decided in kernel, not handed over
    assert moved["rule_user"] == 0


def test_present_host_and_inverted_host(mesh: Mesh, client: Client, backends) -> None:
    special = rule("/", action=to("c2"), headers=(
        ValueMatch("host", StringKind.PRESENT),
        ValueMatch("host", StringKind.EXACT, "other.test", invert=True)))
    cases = [Case(), Case(host="other.test")] * 2
    moved = _run(mesh, client, _tables(special, backends), cases)
    assert moved["fast"] == len(cases)


@pytest.mark.parametrize(("matcher", "cases"), [
    # absent in the request: Envoy adds x-forwarded-proto: <scheme> before routing
    (ValueMatch("x-forwarded-proto", StringKind.EXACT, "http"),
     [Case(), Case(headers={"X-Forwarded-Proto": "https"}), Case()]),
    (ValueMatch("x-forwarded-proto", StringKind.PRESENT, present=False), [Case()]),
    # ... and x-request-id
    (ValueMatch("x-request-id", StringKind.PRESENT, present=False),
     [Case(), Case(headers={"X-Request-Id": "abc"})]),
    # hop-by-hop: removed before routing
    (ValueMatch("keep-alive", StringKind.PRESENT), [Case(headers={"Keep-Alive": "5"}), Case()]),
    # te keeps only "trailers"
    (ValueMatch("te", StringKind.EXACT, "trailers"),
     [Case(headers={"TE": "trailers, deflate"}), Case(headers={"TE": "trailers"})]),
    # internal x-envoy-* headers are removed from a request from outside the mesh
    (ValueMatch("x-envoy-retry-on", StringKind.PRESENT),
     [Case(headers={"x-envoy-retry-on": "5xx"})]),
], ids=["xfp-added", "xfp-absent", "request-id-added", "keep-alive-removed", "te-reduced",
        "x-envoy-removed"])
def test_headers_envoy_adjusts_are_decided_like_the_model(mesh: Mesh, client: Client,
                                                          backends, matcher: ValueMatch,
                                                          cases: list[Case]) -> None:
    special = rule("/", action=to("c2"), headers=(matcher,))
    moved = _run(mesh, client, _tables(special, backends), cases)
    assert moved["fast"] == 0  # each one decided by the slow path


def test_content_length_matcher_is_not_read_from_an_unfilled_slot(mesh: Mesh, client: Client,
                                                                  backends) -> None:
    """The parser keeps Content-Length for itself; a rule on it goes to the model."""
    special = rule("/", action=to("c2"), headers=(ValueMatch("content-length",
                                                             StringKind.PRESENT),))
    cases = [Case(method="POST", body=b"hello"), Case()]
    _run(mesh, client, _tables(special, backends), cases)


@pytest.mark.parametrize(("fraction", "special_wins"), [(0.0, False), (1.0, True)])
def test_runtime_fraction_zero_never_matches_in_kernel(mesh: Mesh, client: Client, backends,
                                                       fraction: float,
                                                       special_wins: bool) -> None:
    special = rule("/", action=to("c2"), runtime_fraction=fraction)
    tables = _tables(special, backends)
    cases = [Case(), Case("/a/b"), Case(host="other.test")]
    moved = _run(mesh, client, tables, cases)
    assert moved["fast"] == len(cases)
    rt = tables.route_tables["rt"]
    assert all((route(rt, c.model(), tables.clusters).cluster == "c2") is special_wins
               for c in cases)


def test_value_with_trailing_whitespace_matches_like_envoy(mesh: Mesh, client: Client,
                                                           backends) -> None:
    """Envoy's HTTP/1 parser drops spaces and tabs after a value (and after the Host)."""
    special = rule("/", action=to("c2"), headers=(ValueMatch("x-canary", StringKind.EXACT,
                                                             "yes"),))
    cases = [Case(headers={"x-canary": "yes "}), Case(headers={"x-canary": "yes\t"}),
             Case(headers={"x-canary": "yes"}), Case(headers={"x-canary": "no "}),
             Case(host=HOST + " ", headers={"x-canary": "yes"}), Case(host="other.test\t")]
    _run(mesh, client, _tables(special, backends), cases)
