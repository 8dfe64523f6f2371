"""Seeded generator of Istio-shaped Envoy route configs and boundary requests.

Each :class:`GeneratedConfig` is one ``RouteConfiguration`` (Envoy JSON) shaped the way istiod
writes outbound route configs: virtual hosts named ``host:port`` whose domains list the short,
namespaced and FQDN forms with and without the port, wildcard hosts (``*.x``, ``x.*``, ``*``),
and routes that overlap on purpose (the same prefix twice, exact vs prefix vs regex vs
path_separated_prefix, ``case_sensitive: false``), with header matchers of every kind (old
``exact_match`` forms and ``string_match`` with ``ignore_case``, ``present``, ``invert``,
pseudo-headers), query-parameter matchers and all four actions.

For every route the generator builds a request that satisfies it and near-misses around it
(one character more or less, a case flip, trailing slash, a query string, the port in Host, one
header condition broken at a time).  Requests carry no expected answer: a real Envoy labels
them.  Everything the generator emits must be accepted by Envoy; a rejection is a generator bug.

The request shape, the host probes and the boundary requests for any (real) route config are
the product's (``integration.requestgen``, used by ``sockmesh ab``), re-exported here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from integration.requestgen import (
    REGEX_TEMPLATES,
    UNKNOWN_HOSTS,
    GeneratedRequest,
    authority_probes,
    boundary_paths,
    boundary_requests,
)
from integration.requestgen import flip_case as _flip_case

__all__ = ["EXTRAS", "REGEX_TEMPLATES", "UNKNOWN_HOSTS", "GeneratedConfig", "GeneratedRequest",
           "WeightedProbe", "boundary_paths", "boundary_requests", "cluster_name",
           "config_dump", "generate"]

SERVICES = ("reviews", "ratings", "details", "productpage", "httpbin", "catalog")
NAMESPACES = ("default", "shop")
PORTS = (9080, 8000, 80)
WILDCARD_DOMAINS = ("*.example.com", "*-api.mesh.io", "api.*", "shop.*")

PATH_BASES = ("/api", "/api/v1", "/api/v1/users", "/static", "/get", "/login", "/Reviews", "/",
              "")  # an empty prefix matches every path

HEADER_NAMES = ("x-user", "end-user", "x-env", "x-canary", "x-version")
HEADER_VALUES = ("jason", "Jason", "beta-user", "v2", "canary", "QA")
# regex, values it fully matches, values it does not
HEADER_REGEXES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (r"v[0-9]+", ("v1", "v10"), ("v", "xv1", "V1")),
    (r"(jason|mike)", ("jason", "mike"), ("jasonx", "Jason")),
    (r".*-user", ("beta-user", "-user"), ("beta-users", "user")),
)
QUERY_NAMES = ("debug", "version", "user")

REDIRECT_CODES = {
    "MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303,
    "TEMPORARY_REDIRECT": 307, "PERMANENT_REDIRECT": 308,
}

# Named by some routes but defined nowhere (validate_clusters is off): Envoy answers with the
# route's cluster_not_found_response_code.  Explain sees the same cluster set as Envoy.
CLUSTER_HEADER = "x-route-to"  # cluster_header routes take the cluster name from it
GHOST_CLUSTER = "outbound|9999||ghost.default.svc.cluster.local"
NOT_FOUND_CODES = ("SERVICE_UNAVAILABLE", "NOT_FOUND", "INTERNAL_SERVER_ERROR")

# Wire-level cases generated only on request (see generate()), each tested on its own
# configs: the routing model first differed from Envoy 1.40 on all four.
EXTRAS = frozenset({
    "repeated_headers",  # the same header twice: Envoy matches if any one value matches
    "padded_values",  # whitespace around a header value: Envoy's HTTP/1 parser drops it
    "host_matcher",  # a header matcher named "host": Envoy gives it the Host value
    "grpc",  # grpc route matches and gRPC requests: Envoy's local replies become HTTP 200
})


def cluster_name(service: str, ns: str, port: int, subset: str = "") -> str:
    """An Istio outbound cluster name."""
    return f"outbound|{port}|{subset}|{service}.{ns}.svc.cluster.local"


@dataclass
class WeightedProbe:
    """A request that lands on a weighted_clusters route, for sampling the split."""

    request: GeneratedRequest
    route: str
    weights: dict[str, int]


@dataclass
class GeneratedConfig:
    """A route config, every cluster it names, and requests around each of its routes."""

    seed: int
    route_config: dict[str, Any]
    clusters: list[str]
    requests: list[GeneratedRequest]
    weighted: list[WeightedProbe]

    @property
    def name(self) -> str:
        """The route config's name (it carries the seed, so it is unique per seed)."""
        return str(self.route_config["name"])

    def config_dump(self) -> dict[str, Any]:
        """The route config (and its clusters) as an admin /config_dump document."""
        return config_dump([self.route_config], self.clusters)


def config_dump(route_configs: list[dict[str, Any]], clusters: list[str]) -> dict[str, Any]:
    """An admin /config_dump with ``route_configs`` and STATIC loopback ``clusters``."""
    return {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
         "static_clusters": [{"cluster": {
             "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
             "name": c, "type": "STATIC", "connect_timeout": "1s",
             "load_assignment": {"cluster_name": c, "endpoints": [{"lb_endpoints": [
                 {"endpoint": {"address": {"socket_address": {
                     "address": "127.0.0.1", "port_value": 1}}}}]}]}}}
             for c in sorted(set(clusters))]},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
         "dynamic_route_configs": [{"route_config": {
             "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", **rc}}
             for rc in route_configs]},
    ]}


def _add_query(path: str, query: str) -> str:
    if not query:
        return path
    return f"{path}{'&' if '?' in path else '?'}{query}"


@dataclass
class _Cond:
    """One header/query condition: its Envoy JSON and how to satisfy or break it."""

    envoy: dict[str, Any]
    name: str
    sat: str | None  # value that satisfies it (None: send without the header)
    breaks: list[tuple[str | None, str]]  # (value or None for absent, note)


class _Gen:
    def __init__(self, seed: int, extras: frozenset[str] = frozenset()) -> None:
        unknown = extras - EXTRAS
        if unknown:
            raise ValueError(f"unknown extras {sorted(unknown)}; known: {sorted(EXTRAS)}")
        self.seed = seed
        self.extras = extras
        self.rng = random.Random(seed)
        self.clusters: list[str] = []
        self.used_domains: set[str] = set()
        self.requests: list[GeneratedRequest] = []
        self.weighted: list[WeightedProbe] = []

    # --- virtual hosts -------------------------------------------------------------------
    def service_domains(self, svc: str, ns: str, port: int) -> list[str]:
        forms = [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local",
                 f"10.{self.rng.randrange(256)}.{self.rng.randrange(256)}.7"]
        out: list[str] = []
        for f in forms:
            for d in (f, f"{f}:{port}"):
                if self.rng.random() < 0.8 and d not in self.used_domains:
                    out.append(d)
        return out

    def virtual_hosts(self) -> list[tuple[str, list[str], int]]:
        hosts: list[tuple[str, list[str], int]] = []
        for svc in self.rng.sample(SERVICES, self.rng.randint(3, 5)):
            ns = self.rng.choice(NAMESPACES)
            port = self.rng.choice(PORTS)
            doms = self.service_domains(svc, ns, port)
            if not doms:
                continue
            self.used_domains.update(doms)
            hosts.append((f"{svc}.{ns}.svc.cluster.local:{port}", doms, port))
            for subset in ("", "v1", "v2", "v3")[: self.rng.randint(1, 4)]:
                self.clusters.append(cluster_name(svc, ns, port, subset))
        for w in self.rng.sample(WILDCARD_DOMAINS, self.rng.randint(1, 3)):
            self.used_domains.add(w)
            hosts.append((w, [w], 80))
        if self.rng.random() < 0.6:
            hosts.append(("allow_any", ["*"], 80))
        self.rng.shuffle(hosts)
        return hosts

    # --- matchers ------------------------------------------------------------------------
    def path_match(self) -> tuple[dict[str, Any], list[str], list[tuple[str, str]], str]:
        """(match JSON, satisfying paths, near-miss paths, kind)."""
        kind = self.rng.choice(("prefix", "prefix", "path", "path_separated_prefix",
                                "safe_regex"))
        if kind == "safe_regex":
            regex, rgood, rbad = self.rng.choice(REGEX_TEMPLATES)
            m: dict[str, Any] = {"safe_regex": {"regex": regex}}
            if self.rng.random() < 0.3:
                m["case_sensitive"] = False  # Envoy ignores it for regex: a boundary
            return m, list(rgood), [(b, "regex miss") for b in rbad] + [
                (_flip_case(rgood[0]), "regex case flip")], kind
        base = self.rng.choice(PATH_BASES)
        if kind != "prefix" and base in ("/", ""):
            base = "/api"
        m = {kind: base}
        if self.rng.random() < 0.3:
            m["case_sensitive"] = False
        trimmed = base.rstrip("/")
        if base == "":
            return m, ["/", "/x?y=1"], [("/Z", "anything")], kind
        good: list[str]
        near: list[tuple[str, str]]
        if kind == "prefix":
            good = [base, f"{trimmed}/x", f"{base}x", f"{base}?a=1"]
            near = [(_flip_case(base), "case flip")]
            if len(base) > 1:
                near.append((base[:-1], "one char short"))
        elif kind == "path":
            good = [base, f"{base}?q=1"]
            near = [(f"{trimmed}/" if base != "/" else "//", "trailing slash"),
                    (f"{base}x", "one char more"), (_flip_case(base), "case flip")]
        else:
            good = [base, f"{base}/", f"{base}/x", f"{base}?q"]
            near = [(f"{base}x", "no separator"), (base[:-1], "one char short"),
                    (_flip_case(base), "case flip")]
        return m, good, near, kind

    def string_cond(self, name: str, *, header: bool) -> _Cond:
        """A header or query condition of a random kind and form."""
        rng = self.rng
        breaks: list[tuple[str | None, str]]
        kinds = ("exact", "prefix", "suffix", "contains", "regex", "present")
        kind = rng.choice((*kinds, "range", "absent") if header else kinds)
        value = rng.choice(HEADER_VALUES)
        if kind == "absent":  # present_match: false
            return _Cond({"name": name, "present_match": False}, name, None,
                         [("x", "present"), ("", "present but empty")])
        if kind == "range":
            lo = rng.randint(-5, 10)
            hi = lo + rng.randint(1, 20)
            breaks = [
                (str(hi), "range end (exclusive)"), (str(lo - 1), "below range"),
                ("abc", "not a number"), (f" {lo} ", "number with spaces"),
                (f"+{lo}", "number with sign"), (None, "absent")]
            envoy_r: dict[str, Any] = {"name": name, "range_match": {"start": lo, "end": hi}}
            return _Cond(envoy_r, name, str(lo), breaks)
        ignore_case = kind != "present" and kind != "regex" and rng.random() < 0.3
        if kind == "exact":
            sat, breaks = value, [(value + "x", "value one char more")]
        elif kind == "prefix":
            sat, breaks = value + "-tail", [("z" + value, "prefix broken")]
        elif kind == "suffix":
            sat, breaks = "head-" + value, [(value + "z", "suffix broken")]
        elif kind == "contains":
            sat, breaks = "aa" + value + "bb", [(value[:-1], "contains broken")]
        elif kind == "regex":
            regex, good, bad = rng.choice(HEADER_REGEXES)
            value, sat = regex, rng.choice(good)
            breaks = [(b, "regex miss") for b in bad]
        else:
            sat, breaks = rng.choice(HEADER_VALUES), [("", "present but empty")]
        if kind != "present":
            flipped = _flip_case(sat)
            breaks.append((flipped, "value case flip"))  # satisfies when ignore_case
        breaks.append((None, "absent"))
        # Envoy compares header names case-insensitively, whatever case the config uses
        envoy: dict[str, Any] = {"name": name.title() if header and rng.random() < 0.1
                                 else name}
        old_form = header and not ignore_case and rng.random() < 0.4
        if kind == "present":
            envoy["present_match"] = True
        elif old_form:
            key = {"exact": "exact_match", "prefix": "prefix_match", "suffix": "suffix_match",
                   "contains": "contains_match", "regex": "safe_regex_match"}[kind]
            envoy[key] = {"regex": value} if kind == "regex" else value
        else:
            sm: dict[str, Any] = ({"safe_regex": {"regex": value}} if kind == "regex"
                                  else {kind: value})
            if ignore_case:
                sm["ignore_case"] = True
            envoy["string_match"] = sm
        if header and kind != "present" and rng.random() < 0.1:
            envoy["treat_missing_header_as_empty"] = True
        if header and rng.random() < 0.15:
            envoy["invert_match"] = True
            # inverted: a break satisfies it; keep the first break as the satisfying value
            new_sat = breaks[0][0] if kind != "present" else None
            inverted: list[tuple[str | None, str]] = [(sat, "inverted: original value")]
            breaks = inverted + [(v, n) for v, n in breaks[1:] if v is not None]
            if new_sat is not None:
                breaks.append((None, "inverted: absent"))
            return _Cond(envoy, name, new_sat, breaks)
        return _Cond(envoy, name, sat, breaks)

    def pseudo_cond(self, authority: str, method_holder: list[str]) -> _Cond | None:
        rng = self.rng
        which = rng.choice((":method", ":method", ":authority", ":path", ":scheme")
                           + (("host", "host") if "host_matcher" in self.extras else ()))
        if which == "host":
            if rng.random() < 0.5:
                return _Cond({"name": "host", "present_match": True}, "host", None, [])
            return _Cond({"name": "host", "string_match": {"exact": authority}}, "host", None,
                         [])
        if which == ":method":
            if rng.random() < 0.5:
                method_holder[0] = "POST"
                return _Cond({"name": ":method", "exact_match": "POST"}, ":method", "POST",
                             [("GET", "other method")])
            method_holder[0] = "PUT"
            return _Cond({"name": ":method", "string_match": {"safe_regex": {
                "regex": "PUT|DELETE"}}}, ":method", "PUT", [("GET", "other method")])
        if which == ":authority":
            host = authority.partition(":")[0]
            if not host or host.startswith("*"):
                return None
            return _Cond({"name": ":authority", "string_match": {"prefix": host[:3]}},
                         ":authority", authority, [])
        if which == ":path":
            return _Cond({"name": ":path", "string_match": {"contains": "trace=1"}},
                         ":path", "trace=1", [(None, "no trace query")])
        scheme = rng.choice(("http", "https"))
        return _Cond({"name": ":scheme", "exact_match": scheme}, ":scheme", scheme, [])

    # --- actions ---------------------------------------------------------------------------
    def action(self, route: dict[str, Any], path_kind: str, vh_clusters: list[str]) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.55:
            act: dict[str, Any] = {"cluster": rng.choice(vh_clusters)}
            if rng.random() < 0.06:
                act["cluster"] = GHOST_CLUSTER
                if rng.random() < 0.7:
                    act["cluster_not_found_response_code"] = rng.choice(NOT_FOUND_CODES)
            if rng.random() < 0.4:
                act["timeout"] = f"{rng.randint(1, 30)}s"
            if rng.random() < 0.3:
                act["retry_policy"] = {"retry_on": "connect-failure,refused-stream,unavailable",
                                       "num_retries": 2}
            if rng.random() < 0.15 and path_kind in ("prefix", "path_separated_prefix"):
                act["prefix_rewrite"] = "/rewritten"
            route["route"] = act
            return "cluster"
        if r < 0.58:
            route["route"] = {"cluster_header": CLUSTER_HEADER}
            return "cluster_header"
        if r < 0.72:
            picks = rng.sample(vh_clusters, min(len(vh_clusters), rng.randint(2, 3)))
            if len(picks) < 2:
                picks = picks + [c for c in self.clusters if c not in picks][:1]
            cuts = sorted(rng.sample(range(5, 96, 5), len(picks) - 1))
            weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
            route["route"] = {"weighted_clusters": {"clusters": [
                {"name": c, "weight": w} for c, w in zip(picks, weights, strict=True)]}}
            return "weighted_clusters"
        if r < 0.86:
            status = rng.choice((200, 201, 301, 302, 403, 418, 503))
            route["direct_response"] = {"status": status,
                                        "body": {"inline_string": f"generated {status}"}}
            return "direct_response"
        redirect: dict[str, Any] = {}
        choice = rng.random()
        if choice < 0.3:
            redirect["path_redirect"] = "/moved"
        elif choice < 0.5 and path_kind in ("prefix", "path_separated_prefix"):
            redirect["prefix_rewrite"] = "/v2"
        elif choice < 0.6:
            redirect["regex_rewrite"] = {"pattern": {"regex": "[aeiou]"}, "substitution": "_"}
        if rng.random() < 0.4:
            redirect["host_redirect"] = "new.example.com"
        if rng.random() < 0.3:
            redirect["port_redirect"] = rng.choice((8443, 8080))
        s = rng.random()
        if s < 0.25:
            redirect["https_redirect"] = True
        elif s < 0.4:
            redirect["scheme_redirect"] = "https"
        if rng.random() < 0.3:
            redirect["strip_query"] = True
        if rng.random() < 0.6:
            redirect["response_code"] = rng.choice(list(REDIRECT_CODES))
        if not redirect or set(redirect) <= {"strip_query", "response_code"}:
            redirect["path_redirect"] = "/moved"
        route["redirect"] = redirect
        return "redirect"

    # --- routes and requests ---------------------------------------------------------------
    def routes_for(self, vh_name: str, domains: list[str], port: int,
                   probes: list[tuple[str, str]]) -> list[dict[str, Any]]:
        rng = self.rng
        svc_clusters = [c for c in self.clusters if vh_name.split(":")[0] in c]
        vh_clusters = svc_clusters or self.clusters
        routes: list[dict[str, Any]] = []
        n = rng.randint(3, 8)
        authorities = [a for a, note in probes if note in ("domain", "wildcard suffix",
                                                           "wildcard prefix", "catch-all")]
        for i in range(n):
            route: dict[str, Any] = {}
            if rng.random() < 0.92:
                route["name"] = f"{vh_name}/r{i}"
            m, good, near, kind = self.path_match()
            authority = rng.choice(authorities)
            method = ["GET"]
            conds: list[_Cond] = []
            for _ in range(rng.choice((0, 0, 1, 1, 2))):
                name = rng.choice(HEADER_NAMES)
                if all(c.name != name for c in conds):
                    conds.append(self.string_cond(name, header=True))
            if rng.random() < 0.2:
                pc = self.pseudo_cond(authority, method)
                if pc is not None and all(c.name != pc.name for c in conds):
                    conds.append(pc)
            qconds: list[_Cond] = []
            if rng.random() < 0.25:
                qconds.append(self.string_cond(rng.choice(QUERY_NAMES), header=False))
            if conds:
                m["headers"] = [c.envoy for c in conds]
            if qconds:
                m["query_parameters"] = [c.envoy for c in qconds]
            if "grpc" in self.extras and rng.random() < 0.3:
                m["grpc"] = {}
                conds.append(_Cond({}, "content-type", "application/grpc", [
                    ("application/json", "not grpc"), ("application/grpc+proto", "grpc+proto"),
                    ("application/grpcx", "grpcx"), (None, "absent")]))
            route["match"] = m
            action = self.action(route, kind, vh_clusters)
            if action == "cluster_header":
                conds.append(_Cond({}, CLUSTER_HEADER, rng.choice(vh_clusters), [
                    (GHOST_CLUSTER, "unknown cluster"), ("", "empty"), (None, "absent")]))
            routes.append(route)
            self.requests_for(route, i, authority, method[0], good, near, conds, qconds,
                              action, vh_name)
            # Same match again later with another action: fully shadowed in Envoy order
            if rng.random() < 0.12:
                twin: dict[str, Any] = {"name": f"{vh_name}/r{i}-shadow", "match": dict(m)}
                self.action(twin, kind, vh_clusters)
                routes.append(twin)
        if rng.random() < 0.5:
            routes.append({"name": f"{vh_name}/default", "match": {"prefix": "/"},
                           "route": {"cluster": rng.choice(vh_clusters)}})
        return routes

    def requests_for(self, route: dict[str, Any], i: int, authority: str, method: str,
                     good: list[str], near: list[tuple[str, str]], conds: list[_Cond],
                     qconds: list[_Cond], action: str, vh_name: str) -> None:
        tag = route.get("name", f"{vh_name}/#{i}")
        base_headers: dict[str, str] = {}
        extra_query: list[str] = []
        req_method = method
        req_authority = authority
        for c in conds:
            if c.name == ":method":
                continue
            if c.name in (":authority", "host"):
                continue
            if c.name == ":path":
                extra_query.append(c.sat or "")
            elif c.name == ":scheme":
                continue
            elif c.sat is not None:
                base_headers[c.name] = c.sat
        for q in qconds:
            if q.sat is not None:
                extra_query.append(f"{q.name}={q.sat}" if q.sat else q.name)

        def path_with(p: str, qs: list[str]) -> str:
            for q in qs:
                p = _add_query(p, q)
            return p

        def add(path: str, headers: dict[str, str], note: str, m: str = req_method,
                auth: str = req_authority, extra: list[tuple[str, str]] | None = None) -> None:
            self.requests.append(GeneratedRequest(m, auth, path, dict(headers), f"{tag}: {note}",
                                                  list(extra or [])))

        base_path = path_with(self.rng.choice(good), extra_query)
        add(base_path, base_headers, "base")
        for g in good:
            add(path_with(g, extra_query), base_headers, "inside")
        for p, note in near:
            add(path_with(p, extra_query), base_headers, note)
        # header names are case-insensitive: send one upper-cased
        if base_headers:
            add(base_path, {k.upper(): v for k, v in base_headers.items()}, "header name upper")
        for c in conds:
            if c.name == ":method":
                for v, note in c.breaks:
                    add(base_path, base_headers, note, m=v or "GET")
                continue
            if c.name == ":path":
                add(path_with(self.rng.choice(good),
                              [q for q in extra_query if q != c.sat]), base_headers, "no trace")
                continue
            if c.name in (":authority", ":scheme", "host"):
                continue
            for v, note in c.breaks:
                h = {k: val for k, val in base_headers.items() if k != c.name}
                if v is not None:
                    h[c.name] = v
                add(base_path, h, f"{c.name} {note}")
        for q in qconds:
            others = [x for x in extra_query if not x.startswith(q.name)]
            p0 = self.rng.choice(good)
            for v, note in q.breaks:
                qs = others + ([f"{q.name}={v}"] if v is not None else [])
                add(path_with(p0, qs), base_headers, f"query {q.name} {note}")
            if q.sat is not None:
                add(path_with(p0, others + [f"{q.name.upper()}={q.sat}"]), base_headers,
                    f"query {q.name} name upper")
        self.tricky_requests(add, base_path, base_headers, good, extra_query, conds, qconds)
        if action == "weighted_clusters":
            w = {c["name"]: int(c["weight"])
                 for c in route["route"]["weighted_clusters"]["clusters"]}
            self.weighted.append(WeightedProbe(
                GeneratedRequest(req_method, req_authority, base_path, dict(base_headers),
                                 f"{tag}: weighted sample"), str(tag), w))

    def tricky_requests(self, add: Any, base_path: str, base_headers: dict[str, str],
                        good: list[str], extra_query: list[str], conds: list[_Cond],
                        qconds: list[_Cond]) -> None:
        """Wire-level edge cases: repeated headers/params, encodings, path parameters."""
        path, _, query = base_path.partition("?")
        qs = f"?{query}" if query else ""
        # percent-encoded first character: Envoy matches the path as sent (no normalisation)
        if len(path) > 1:
            add(f"/%{ord(path[1]):02X}{path[2:]}{qs}", base_headers, "path percent-encoded")
        # path parameters after the first segment
        seg_end = path.find("/", 1)
        if seg_end > 0:
            add(f"{path[:seg_end]};p=1{path[seg_end:]}{qs}", base_headers, "path parameter")
        add(f"{path};v=2{qs}", base_headers, "trailing path parameter")
        for c in conds:
            if c.name.startswith(":") or c.sat is None:
                continue
            h = {k: v for k, v in base_headers.items() if k != c.name}
            if "padded_values" in self.extras:
                add(base_path, {**h, c.name: f" {c.sat}\t"}, f"{c.name} value with whitespace")
            if "repeated_headers" not in self.extras:
                continue
            add(base_path, h, f"{c.name} repeated", extra=[(c.name, c.sat), (c.name, c.sat)])
            bad = next((v for v, _ in c.breaks if v is not None), None)
            if bad is not None:
                add(base_path, h, f"{c.name} repeated, second breaks",
                    extra=[(c.name, c.sat), (c.name, bad)])
                add(base_path, h, f"{c.name} repeated, first breaks",
                    extra=[(c.name, bad), (c.name, c.sat)])
        for q in qconds:
            others = [x for x in extra_query if not x.startswith(q.name)]
            p0 = good[0]
            sat = q.sat or ""
            variants = [(f"{q.name}", "bare name"), (f"{q.name}=", "empty value"),
                        (f"{q.name}=x&{q.name}={sat}", "repeated, first breaks"),
                        (f"{q.name}={sat}&{q.name}=x", "repeated, second breaks")]
            if sat:
                variants.append((f"{q.name}=%{ord(sat[0]):02X}{sat[1:]}", "value pct-encoded"))
                variants.append((f"%{ord(q.name[0]):02X}{q.name[1:]}={sat}",
                                 "name pct-encoded"))
            for v, note in variants:
                p = p0
                for x in [*others, v]:
                    p = _add_query(p, x)
                add(p, base_headers, f"query {note}")

    def generate(self) -> GeneratedConfig:
        rng = self.rng
        name = rng.choice(("80", "9080", "8000", "http.8080", "http.80"))
        name = f"{name}-seed{self.seed}"
        vhosts_json = []
        for vh_name, domains, port in self.virtual_hosts():
            probes = authority_probes(domains, port)
            routes = self.routes_for(vh_name, domains, port, probes)
            vhosts_json.append({"name": vh_name, "domains": domains, "routes": routes,
                                "include_request_attempt_count": True})
            for host, note in probes:
                self.requests.append(GeneratedRequest(
                    "GET", host, rng.choice(("/", "/api", "/get", "/static/a.css")), {},
                    f"{vh_name}: authority {note}"))
        for host in UNKNOWN_HOSTS:
            self.requests.append(GeneratedRequest("GET", host, "/", {}, "unknown host"))
        rc: dict[str, Any] = {"name": name, "virtual_hosts": vhosts_json,
                              "validate_clusters": False}
        if rng.random() < 0.3:
            rc["ignore_port_in_host_matching"] = True
        if rng.random() < 0.3:  # paths with ";param" are generated for every route
            rc["ignore_path_parameters_in_path_matching"] = True
        return GeneratedConfig(self.seed, rc, sorted(set(self.clusters)), self.requests,
                               self.weighted)


def generate(seed: int, extras: frozenset[str] = frozenset()) -> GeneratedConfig:
    """The route config and requests for ``seed`` (same seed and extras, same output).

    ``extras`` (a subset of :data:`EXTRAS`) adds wire-level cases, so that each can be
    tested on its own.
    """
    return _Gen(seed, extras).generate()
