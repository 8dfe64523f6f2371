"""The Python routing model: evaluates a request on the tables exactly as the kernel does.

It is the oracle for kernel tests, the engine of ``sockmesh explain`` and of the slow path.
Semantics follow Envoy's router (source/common/router/config_impl.cc, header_utility.cc,
http/utility.cc); each rule below names the Envoy behaviour it reproduces.

* Virtual host: Host lower-cased (port stripped with ``ignore_port_in_host_matching``),
  then exact domain, longest ``*suffix``, longest ``prefix*``, then ``*``; a wildcard must
  cover at least one character.
* Rules are walked from index 0 to the end and the *last* match is kept (the tables are
  written reversed), exactly like the kernel; there is no early exit.
* Paths: the fragment is stripped first (Istio's setting; a default Envoy rejects a path
  with a fragment with 400); path matchers see the path without query; ``:path`` header
  matchers and query matchers see path + query.
* Headers are first processed as Envoy's HTTP/1 codec and connection manager do
  (translator.envoy_request: whitespace trimmed, inline headers joined, hop-by-hop and
  internal headers removed, x-forwarded-proto and x-request-id added); a repeated header
  matches when any one value matches; a ``host`` matcher sees the Host value.
* gRPC requests (content-type application/grpc[+...]) get Envoy's local replies as HTTP 200
  (the code travels in grpc-status), so ``status`` is 200 for them.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import re2

from translator import envoy_request
from translator.tables import (
    ANY_PORT,
    WILDCARD_VIP,
    Action,
    ActionKind,
    Cluster,
    PathKind,
    RouteTable,
    Rule,
    Service,
    ServiceKind,
    StringKind,
    Tables,
    ValueMatch,
    VirtualHost,
    WeightedCluster,
)

# Envoy's route matcher parses the query string without percent-decoding
# (QueryParamsMulti::parseQueryString); flip here if a real Envoy shows otherwise.
QUERY_PARAMS_DECODED = False
_INT64 = (-(2**63), 2**63 - 1)
# absl::SimpleAtoi: optional surrounding ASCII whitespace, optional sign, decimal digits
_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_PATH_PARAMS = re.compile(r";[^/]*")


class RequestError(ValueError):
    """A request line (``sockmesh explain`` input) that is not a valid request."""


@dataclass(frozen=True)
class Request:
    """One HTTP/1.1 request as the router sees it."""

    method: str = "GET"
    authority: str = ""
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    scheme: str = "http"

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Request:
        """Build from a ``sockmesh explain`` jsonl line.

        ``{"method", "authority", "path", "headers": {name: value | [values]}, "scheme"}``;
        a ``host`` header stands in for a missing ``authority``.
        """
        if not isinstance(obj, Mapping):
            raise RequestError(f"request: expected an object, got {type(obj).__name__}")
        unknown = set(obj) - {"method", "authority", "path", "headers", "scheme"}
        if unknown:
            raise RequestError(f"request: unknown field(s) {sorted(unknown)}")
        raw = obj.get("headers") or {}
        pairs: list[tuple[str, str]] = []
        items = raw.items() if isinstance(raw, Mapping) else raw
        for item in items:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise RequestError(f"request: headers: bad entry {item!r}")
            name, value = item
            values = value if isinstance(value, list) else [value]
            for v in values:
                if not isinstance(name, str) or not isinstance(v, str):
                    raise RequestError(f"request: headers: {name!r} must map to strings")
                pairs.append((name.lower(), v))
        authority = obj.get("authority")
        if authority is None:
            authority = next((v for n, v in pairs if n == "host"), "")
        pairs = [(n, v) for n, v in pairs if n != "host"]
        fields = {k: obj[k] for k in ("method", "path", "scheme") if k in obj}
        for k, v in fields.items():
            if not isinstance(v, str):
                raise RequestError(f"request: {k} must be a string")
        if not isinstance(authority, str):
            raise RequestError("request: authority must be a string")
        return cls(authority=authority, headers=tuple(pairs), **fields)


@dataclass(frozen=True)
class Decision:
    """What the router does with one request (the ``explain`` output line)."""

    route_config: str
    virtual_host: str | None
    route: str | None  # Envoy route name; None when unnamed
    envoy_index: int | None  # index of the route in Envoy's order
    rule: int | None  # index in the last-match table
    action: ActionKind
    cluster: str | None
    candidates: tuple[WeightedCluster, ...]
    status: int | None
    location: str | None
    not_enforced: tuple[str, ...]
    body: str | None = None  # direct_response body, for whoever writes the local reply

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with exactly the documented keys."""
        return {
            "route_config": self.route_config,
            "virtual_host": self.virtual_host,
            "route": self.route,
            "envoy_index": self.envoy_index,
            "rule": self.rule,
            "action": self.action.value,
            "cluster": self.cluster,
            "candidates": [{"cluster": c.cluster, "weight": c.weight} for c in self.candidates],
            "status": self.status,
            "location": self.location,
            "not_enforced": list(self.not_enforced),
        }


# ---------------------------------------------------------------- virtual host selection


@dataclass
class _VhostIndex:
    exact: dict[str, VirtualHost]
    suffix: list[tuple[int, dict[str, VirtualHost]]]  # longest first
    prefix: list[tuple[int, dict[str, VirtualHost]]]
    default: VirtualHost | None


_index_cache: dict[int, tuple[weakref.ref[RouteTable], _VhostIndex]] = {}


def _build_index(table: RouteTable) -> _VhostIndex:
    exact: dict[str, VirtualHost] = {}
    suffix: dict[int, dict[str, VirtualHost]] = {}
    prefix: dict[int, dict[str, VirtualHost]] = {}
    default = None
    for vh in table.virtual_hosts:
        for d in vh.domains:
            d = d.lower()
            if d == "*":
                default = default or vh
            elif d.startswith("*"):
                suffix.setdefault(len(d) - 1, {}).setdefault(d[1:], vh)
            elif d.endswith("*"):
                prefix.setdefault(len(d) - 1, {}).setdefault(d[:-1], vh)
            else:
                exact.setdefault(d, vh)
    return _VhostIndex(exact, sorted(suffix.items(), reverse=True),
                       sorted(prefix.items(), reverse=True), default)


def _index(table: RouteTable) -> _VhostIndex:
    key = id(table)
    hit = _index_cache.get(key)
    if hit is not None and hit[0]() is table:
        return hit[1]
    idx = _build_index(table)

    def _forget(_ref: weakref.ref[RouteTable], k: int = key) -> None:
        _index_cache.pop(k, None)

    _index_cache[key] = (weakref.ref(table, _forget), idx)
    return idx


def port_start(host: str) -> int:
    """Index of the ':' before a port in ``host`` (IPv6 brackets respected), or -1."""
    colon = host.rfind(":")
    if colon < 0:
        return -1
    bracket = host.rfind("]")
    if bracket < 0 or bracket < colon:
        return colon
    return -1


def select_virtual_host(table: RouteTable, authority: str) -> VirtualHost | None:
    """Envoy's virtual host selection for a Host/:authority value."""
    idx = _index(table)
    if not idx.exact and not idx.suffix and not idx.prefix:
        return idx.default
    host = authority
    if table.ignore_port_in_host_matching:
        p = port_start(host)
        if p >= 0:
            host = host[:p]
    host = host.lower()
    vh = idx.exact.get(host)
    if vh is not None:
        return vh
    n = len(host)
    for length, names in idx.suffix:
        if length < n and (vh := names.get(host[n - length:])) is not None:
            return vh
    for length, names in idx.prefix:
        if length < n and (vh := names.get(host[:length])) is not None:
            return vh
    return idx.default


# ---------------------------------------------------------------- matching


@functools.lru_cache(maxsize=4096)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern)


def _string_matches(m: ValueMatch, value: str) -> bool:
    kind = m.kind
    if kind is StringKind.REGEX:
        return _regex(m.value).fullmatch(value) is not None
    if kind is StringKind.RANGE:
        got = _ATOI.fullmatch(value)
        if got is None:
            return False
        v = int(got.group(1))
        return _INT64[0] <= v <= _INT64[1] and m.range_start <= v < m.range_end
    expected = m.value
    if m.ignore_case:
        value, expected = value.lower(), expected.lower()
    if kind is StringKind.EXACT:
        return value == expected
    if kind is StringKind.PREFIX:
        return value.startswith(expected)
    if kind is StringKind.SUFFIX:
        return value.endswith(expected)
    if kind is StringKind.CONTAINS:
        return expected in value
    if kind is StringKind.PRESENT:
        return m.present
    raise AssertionError(f"unhandled string kind {kind}")


class _View:
    """A request prepared once for evaluating many rules."""

    __slots__ = ("full_path", "headers", "match_path", "path_only", "query", "req")

    def __init__(self, req: Request, table: RouteTable) -> None:
        self.req = req
        # Envoy strips the fragment before routing
        self.full_path = req.path.split("#", 1)[0]
        self.path_only = self.full_path.split("?", 1)[0]
        mp = self.path_only
        if table.ignore_path_parameters_in_path_matching:
            # each segment loses its ";params" (measured on Envoy 1.40: /a;x/b is /a/b)
            mp = _PATH_PARAMS.sub("", mp)
        self.match_path = mp
        self.query: dict[str, str] | None = None
        headers: dict[str, list[str]] = {}
        for name, value in req.headers:
            headers.setdefault(name.lower(), []).append(value)
        self.headers = headers

    def values(self, name: str) -> list[str] | None:
        """The values of a header (pseudo-headers included), None when absent."""
        if name.startswith(":") or name == "host":
            if name == ":method":
                return [self.req.method]
            if name in (":authority", "host"):  # Envoy answers "host" with the Host value
                return [self.req.authority] if self.req.authority else None
            if name == ":path":
                return [self.full_path]
            if name == ":scheme":
                return [self.req.scheme]
            return None
        return self.headers.get(name)

    def query_param(self, name: str) -> str | None:
        if self.query is None:
            self.query = parse_query(self.full_path)
        return self.query.get(name)


def _pct_decode(s: str) -> str:
    return _PCT.sub(lambda m: chr(int(m.group(1), 16)), s)


def parse_query(path: str) -> dict[str, str]:
    """First value of each query parameter, split like Envoy's parseQueryString."""
    q = path.find("?")
    out: dict[str, str] = {}
    if q < 0:
        return out
    for param in path[q + 1:].split("&"):
        name, sep, value = param.partition("=")
        if QUERY_PARAMS_DECODED:
            name, value = _pct_decode(name), _pct_decode(value)
        out.setdefault(name, value if sep else "")
    return out


def _header_matches(m: ValueMatch, view: _View) -> bool:
    values = view.values(m.name)
    if m.kind is StringKind.PRESENT:
        return ((values is not None) == m.present) != m.invert
    if values is None:
        if not m.missing_as_empty:
            return False  # Envoy: an absent header fails the match, inverted or not
        values = [""]
    # a repeated header matches when any one of its values does (measured on Envoy 1.40)
    return any(_string_matches(m, v) for v in values) != m.invert


def _path_matches(rule: Rule, view: _View) -> bool:
    pm = rule.path
    kind = pm.kind
    if kind is PathKind.CONNECT:
        return view.req.method == "CONNECT"
    path = view.match_path
    if kind is PathKind.REGEX:
        return _regex(pm.value).fullmatch(path) is not None
    value = pm.value
    if not pm.case_sensitive:
        path, value = path.lower(), value.lower()
    if kind is PathKind.PREFIX:
        return path.startswith(value)
    if kind is PathKind.EXACT:
        return path == value
    if kind is PathKind.PATH_SEPARATED_PREFIX:
        n = len(value)
        return path.startswith(value) and (len(path) == n or path[n] == "/")
    raise AssertionError(f"unhandled path kind {kind}")


def _rule_matches(rule: Rule, view: _View) -> bool:
    if rule.runtime_fraction == 0.0:
        return False  # a 0% runtime_fraction never matches (no runtime overrides here)
    if not _path_matches(rule, view):
        return False
    for m in rule.headers:
        if not _header_matches(m, view):
            return False
    for m in rule.query:
        value = view.query_param(m.name)
        if m.kind is StringKind.PRESENT:
            if (value is not None) != m.present:
                return False
        elif value is None or not _string_matches(m, value):
            return False
    return True


def rule_matches(table: RouteTable, rule: Rule, request: Request) -> bool:
    """Whether one rule's conditions all hold for ``request`` (as Envoy's router sees it)."""
    return _rule_matches(rule, _View(normalize(request), table))


def last_match(table: RouteTable, vh: VirtualHost, request: Request) -> int | None:
    """Index of the last matching rule of ``vh`` (the kernel's walk), or None."""
    return _last_match(table, vh, normalize(request))


def _last_match(table: RouteTable, vh: VirtualHost, prepared: Request) -> int | None:
    view = _View(prepared, table)
    found = None
    for i, rule in enumerate(vh.rules):
        if _rule_matches(rule, view):
            found = i
    return found


# ---------------------------------------------------------------- actions


def pick_weighted(action: Action, rng_value: int) -> str:
    """Envoy's weighted_clusters pick: ``rng_value % total`` walked over the list in order."""
    total = sum(w.weight for w in action.weighted)
    if total <= 0:
        raise RequestError("weighted_clusters: total weight is 0")
    selected = rng_value % total
    end = 0
    for w in action.weighted:
        end += w.weight
        if selected < end:
            return w.cluster
    raise AssertionError("unreachable: selected < total")


def _request_host(req: Request, new_scheme: str, new_port: str) -> str:
    """Envoy's processRequestHost: drop the request's port when the redirect changes it."""
    host = req.authority
    if not host:
        return host
    if host.startswith("["):
        end = host.rfind("]:")
        end = end + 1 if end >= 0 else -1
    else:
        end = host.rfind(":")
    if end >= 0:
        port = host[end:]
        remove = bool(new_port)
        if new_scheme != req.scheme:
            remove |= req.scheme == "https" and port == ":443"
            remove |= req.scheme == "http" and port == ":80"
        if remove:
            return host[:end]
    return host


def _rewritten_path(rule: Rule, full_path: str) -> str:
    """The :path after a redirect's prefix_rewrite / regex_rewrite (query kept)."""
    spec = rule.action.redirect
    assert spec is not None
    if spec.prefix_rewrite is not None:
        pm = rule.path
        if pm.kind is PathKind.REGEX:
            matched = len(full_path.split("?", 1)[0])
        else:
            # with ignore_path_parameters the prefix may have matched a path whose ';params'
            # sit inside it: the path as sent does not start with the prefix, and Envoy then
            # leaves it unchanged
            if not full_path.lower().startswith(pm.value.lower()):
                return full_path
            matched = len(pm.value)
        return spec.prefix_rewrite + full_path[matched:]
    if spec.regex_rewrite is not None:
        just_path = full_path.split("?", 1)[0]
        rest = full_path[len(just_path):]
        return _regex(spec.regex_rewrite).sub(spec.regex_substitution or "", just_path) + rest
    return full_path


def redirect_location(rule: Rule, request: Request) -> str:
    """The Location header Envoy sends for a redirect (or a 201/3xx direct response)."""
    spec = rule.action.redirect
    full_path = request.path.split("#", 1)[0]
    if spec is None:  # direct_response: the request's own URL
        scheme, port, host, path = request.scheme, "", request.authority, full_path
    else:
        scheme = spec.scheme or request.scheme
        port = f":{spec.port}" if spec.port else ""
        host = spec.host if spec.host else _request_host(request, scheme, port)
        current = _rewritten_path(rule, full_path)
        if spec.path:
            if "?" in spec.path:
                path = spec.path  # its own query wins and is never stripped
            else:
                q = current.find("?")
                path = spec.path + (current[q:] if q >= 0 else "")
        else:
            path = current
    if not path.startswith("/"):
        path = "/" + path
    if spec is not None and spec.strip_query and not (spec.path and "?" in spec.path):
        path = path.split("?", 1)[0]
    return f"{scheme}://{host}{port}{path}"


def _not_enforced(table: RouteTable, vh: VirtualHost | None,
                  rule: Rule | None) -> tuple[str, ...]:
    out: list[str] = list(rule.not_enforced) if rule else []
    if vh is not None:
        out += [f"virtual_host.{f}" for f in vh.not_enforced]
    out += [f"route_config.{f}" for f in table.not_enforced]
    return tuple(out)


def decide(table: RouteTable, vh: VirtualHost | None, index: int | None, request: Request,
           clusters: Mapping[str, Cluster] | None = None) -> Decision:
    """The Decision for rule ``index`` of ``vh`` (None: no route)."""
    if vh is None or index is None:
        no_route = 200 if is_grpc(request) else 404  # gRPC: 200, grpc-status UNIMPLEMENTED
        return Decision(table.name, vh.name if vh else None, None, None, None,
                        ActionKind.NO_ROUTE, None, (), no_route, None,
                        _not_enforced(table, vh, None))
    rule = vh.rules[index]
    action = rule.action
    cluster: str | None = None
    candidates: tuple[WeightedCluster, ...] = ()
    status: int | None = None
    location: str | None = None
    body: str | None = None
    if action.kind is ActionKind.CLUSTER:
        if action.cluster_header is not None:
            # Envoy uses the first value of the header; a missing header names no cluster
            values = [v for n, v in request.headers if n.lower() == action.cluster_header]
            cluster = values[0] if values and values[0] else None
        else:
            cluster = action.cluster
        if cluster is None or (clusters and cluster not in clusters):
            status = action.cluster_not_found_status
    elif action.kind is ActionKind.WEIGHTED_CLUSTERS:
        candidates = action.weighted
        live = [w.cluster for w in candidates if w.weight > 0]
        if clusters and not any(c in clusters for c in live):
            status = action.cluster_not_found_status
    elif action.kind is ActionKind.DIRECT_RESPONSE:
        status = action.status
        body = action.body
        if status is not None and (status == 201 or 300 <= status < 400):
            location = redirect_location(rule, request)
    elif action.kind is ActionKind.REDIRECT:
        status = action.status
        location = redirect_location(rule, request)
    if status is not None and is_grpc(request):
        # Envoy answers a gRPC request's local replies (redirect, direct response, missing
        # cluster) with HTTP 200 and the code in grpc-status
        status = 200
    return Decision(
        route_config=table.name,
        virtual_host=vh.name,
        route=rule.name or None,
        envoy_index=rule.envoy_index,
        rule=index,
        action=action.kind,
        cluster=cluster,
        candidates=candidates,
        status=status,
        location=location,
        not_enforced=_not_enforced(table, vh, rule),
        body=None if is_grpc(request) else body,
    )


def normalize(request: Request) -> Request:
    """The request as Envoy's router sees it (translator.envoy_request.prepare)."""
    return envoy_request.prepare(request)


def is_grpc(request: Request) -> bool:
    """Envoy's gRPC request test: content-type application/grpc or application/grpc+..."""
    ct = next((v for n, v in request.headers if n.lower() == "content-type"), None)
    return ct is not None and (ct == "application/grpc" or ct.startswith("application/grpc+"))


def route(table: RouteTable, request: Request,
          clusters: Mapping[str, Cluster] | None = None) -> Decision:
    """Route ``request`` on ``table``: virtual host, then the last-match-wins rule walk.

    With a non-empty ``clusters`` (``Tables.clusters``; empty means a partial dump without
    clusters, so nothing is known about them) a route to a cluster that does not exist gets the
    route's ``cluster_not_found_response_code`` (503 by default) as its status, as Envoy's
    router answers at request time.
    """
    request = normalize(request)
    vh = select_virtual_host(table, request.authority)
    index = _last_match(table, vh, request) if vh is not None else None
    return decide(table, vh, index, request, clusters)


# connect4 never refuses a connect to 127.0.0.1 (Istio's iptables rules leave it alone)
NEVER_REFUSED = "127.0.0.1"


@dataclass(frozen=True)
class ConnectDecision:
    """What connect4 does with a TCP connect() from the mesh cgroup to ``vip:port``.

    ``verdict``: "http" (to the splice listener, routed per request on ``service``'s route
    table), "tcp" (to an endpoint of ``service``'s cluster; left alone when it has none),
    "refused" (a BLACKHOLE entry: connect() fails with EPERM) or "pass" (no entry, or an
    exempt address: the connect is left alone).
    """

    verdict: str
    service: Service | None
    why: str


def connect_target(services: Iterable[Service], vip: str, port: int) -> Service | None:
    """The entry connect4 takes for ``vip:port``: exact, then ``0.0.0.0:port``, then
    ``0.0.0.0:ANY_PORT`` (the policy for destinations nothing else matches)."""
    by_key = {(s.vip, s.port): s for s in services}
    for key in ((vip, port), (WILDCARD_VIP, port), (WILDCARD_VIP, ANY_PORT)):
        svc = by_key.get(key)
        if svc is not None:
            return svc
    return None


def decide_connect(tables: Tables, vip: str, port: int,
                   splice: tuple[str, int] | None = None) -> ConnectDecision:
    """connect4's decision for a TCP connect to ``vip:port`` (``splice``: the agent's splice
    listener, never refused)."""
    svc = connect_target(tables.services, vip, port)
    if svc is None:
        return ConnectDecision("pass", None, "no service entry: the connect is left alone")
    if svc.kind is ServiceKind.HTTP:
        return ConnectDecision("http", svc, f"to the splice listener; requests routed on route "
                                            f"table {svc.route_table}")
    if svc.kind is ServiceKind.TCP:
        return ConnectDecision("tcp", svc, f"to an endpoint of cluster {svc.cluster} (left "
                                           "alone when it has no usable endpoint)")
    if vip == NEVER_REFUSED or (vip, port) == splice:
        return ConnectDecision("pass", svc, f"{vip} is exempt from {svc.cluster}")
    return ConnectDecision("refused", svc, f"{svc.cluster} (listener {svc.listener}): "
                                           "connect() fails with EPERM")
