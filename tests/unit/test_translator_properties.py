"""Property tests: random route configs never crash the translator, and the model's
last-match walk on the reversed table equals a first-match reference on Envoy's order.

The reference below is a second, deliberately plain implementation of Envoy's matching that
reads the route config JSON directly (Python ``re`` instead of RE2, a scoring domain
selection instead of the model's index) so the two cannot share a bug.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from translator import TranslationError, translate_route_config, validate_resource
from translator.model import Request, route
from translator.resources import ROUTE_CONFIGURATION, ResourceError, parse_resource

PATHS = ["/", "/a", "/a/", "/a/b", "/ab", "/A/b", "/a/b/c", "/b", "/a?x=1", "/a/b?y=2&x=3",
         "/ab#f", "/a;p=1/b", "/B"]
PREFIXES = ["", "/", "/a", "/a/", "/a/b", "/ab", "/A", "/b"]
SEP_PREFIXES = ["/a", "/a/b", "/A", "/b"]
REGEXES = ["/a/.*", "/[ab]+", "/a/b", "/.*", "/A/b"]
DOMAINS = ["*", "a.com", "a.com:80", "*.com", "*.a.com", "b.*", "b.a*", "x.b.com"]
AUTHORITIES = ["a.com", "A.COM:80", "z.a.com", "b.a.com", "x.b.com", "b.org", "q", "b.ax",
               "a.com:80"]
HEADER_NAMES = ["x-a", "x-b", ":method", ":authority", ":path"]
HEADER_VALUES = ["1", "10", "v1", "V1", "v1,2", "", "GET", "POST", "/a?x=1"]

header_spec = st.one_of(
    st.fixed_dictionaries({"exact_match": st.sampled_from(HEADER_VALUES[:6])}),
    st.fixed_dictionaries({"prefix_match": st.sampled_from(["v", "1", "G", "/a"])}),
    st.fixed_dictionaries({"suffix_match": st.sampled_from(["1", "T", "2"])}),
    st.fixed_dictionaries({"contains_match": st.sampled_from(["1", ","])}),
    st.fixed_dictionaries({"present_match": st.booleans()}),
    st.fixed_dictionaries({"safe_regex_match": st.fixed_dictionaries(
        {"regex": st.sampled_from(["v[0-9]", "[0-9]+", ".*"])})}),
    st.fixed_dictionaries({"range_match": st.fixed_dictionaries(
        {"start": st.sampled_from([0, 5, 10]), "end": st.sampled_from([2, 11, 100])})}
    ).filter(lambda d: d["range_match"]["start"] <= d["range_match"]["end"]),
    st.fixed_dictionaries({"string_match": st.fixed_dictionaries(
        {"exact": st.sampled_from(["v1", "get"]), "ignore_case": st.booleans()})}),
)


@st.composite
def header_matcher(draw: st.DrawFn) -> dict[str, Any]:
    spec = dict(draw(header_spec))
    spec["name"] = draw(st.sampled_from(HEADER_NAMES))
    if draw(st.booleans()):
        spec["invert_match"] = True
    if draw(st.integers(0, 3)) == 0:
        spec["treat_missing_header_as_empty"] = True
    return spec


@st.composite
def route_match(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["prefix", "path", "path_separated_prefix", "safe_regex"]))
    m: dict[str, Any]
    if kind == "prefix":
        m = {"prefix": draw(st.sampled_from(PREFIXES))}
    elif kind == "path":
        m = {"path": draw(st.sampled_from(PATHS[:9]))}
    elif kind == "path_separated_prefix":
        m = {"path_separated_prefix": draw(st.sampled_from(SEP_PREFIXES))}
    else:
        m = {"safe_regex": {"regex": draw(st.sampled_from(REGEXES))}}
    if draw(st.integers(0, 3)) == 0:
        m["case_sensitive"] = False
    m["headers"] = draw(st.lists(header_matcher(), max_size=2))
    qs = draw(st.lists(st.sampled_from([
        {"name": "x", "present_match": True},
        {"name": "x", "present_match": False},
        {"name": "x", "string_match": {"exact": "1"}},
        {"name": "y", "string_match": {"prefix": "2"}},
    ]), max_size=1))
    if qs:
        m["query_parameters"] = qs
    return m


@st.composite
def route_config(draw: st.DrawFn) -> dict[str, Any]:
    domains = draw(st.lists(st.sampled_from(DOMAINS), min_size=1, max_size=6, unique=True))
    n_vh = draw(st.integers(1, min(3, len(domains))))
    cuts = sorted(draw(st.lists(st.integers(1, len(domains) - 1), max_size=n_vh - 1,
                                unique=True))) if len(domains) > 1 else []
    groups = [domains[a:b] for a, b in zip([0, *cuts], [*cuts, len(domains)], strict=True)]
    vhosts = []
    for vi, group in enumerate(groups):
        routes = []
        for ri in range(draw(st.integers(0, 7))):
            routes.append({"name": f"r{vi}.{ri}", "match": draw(route_match()),
                           "route": {"cluster": f"c{vi}.{ri}"}})
        vhosts.append({"name": f"vh{vi}", "domains": group, "routes": routes})
    return {"@type": ROUTE_CONFIGURATION, "name": "gen", "virtual_hosts": vhosts,
            "ignore_port_in_host_matching": draw(st.booleans())}


@st.composite
def request(draw: st.DrawFn) -> Request:
    headers = draw(st.lists(st.tuples(st.sampled_from(["x-a", "x-b", "X-A"]),
                                      st.sampled_from(HEADER_VALUES)), max_size=3))
    return Request(method=draw(st.sampled_from(["GET", "POST"])),
                   authority=draw(st.sampled_from(AUTHORITIES)),
                   path=draw(st.sampled_from(PATHS)), headers=tuple(headers))


# ---------------------------------------------------------------- the reference


def ref_vhost(cfg: dict[str, Any], authority: str) -> dict[str, Any] | None:
    host = authority
    if cfg.get("ignore_port_in_host_matching") and ":" in host and "]" not in host:
        host = host[: host.rindex(":")]
    host = host.lower()
    best: tuple[tuple[int, int], dict[str, Any]] | None = None
    for vh in cfg["virtual_hosts"]:
        for d in vh["domains"]:
            d = d.lower()
            if d == "*":
                score = (0, 0)
            elif d.startswith("*") and host.endswith(d[1:]) and len(host) > len(d) - 1:
                score = (2, len(d))
            elif d.endswith("*") and host.startswith(d[:-1]) and len(host) > len(d) - 1:
                score = (1, len(d))
            elif d == host:
                score = (3, 0)
            else:
                continue
            if best is None or score > best[0]:
                best = (score, vh)
    return best[1] if best else None


def ref_header(req: Request, name: str) -> list[str] | None:
    pseudo = {":method": req.method, ":authority": req.authority,
              ":path": req.path.split("#")[0]}
    if name in pseudo:
        return [pseudo[name]]
    values = [v.strip(" \t") for n, v in req.headers if n.lower() == name]
    return values or None


def ref_header_ok(h: dict[str, Any], req: Request) -> bool:
    values = ref_header(req, h["name"])
    invert = h.get("invert_match", False)
    if "present_match" in h:
        return ((values is not None) == h["present_match"]) != invert
    if values is None:
        if not h.get("treat_missing_header_as_empty"):
            return False
        values = [""]
    return any(ref_value_ok(h, v) for v in values) != invert


def ref_value_ok(h: dict[str, Any], value: str) -> bool:
    if "exact_match" in h:
        ok = h["exact_match"] == "" or value == h["exact_match"]
    elif "prefix_match" in h:
        ok = value.startswith(h["prefix_match"])
    elif "suffix_match" in h:
        ok = value.endswith(h["suffix_match"])
    elif "contains_match" in h:
        ok = h["contains_match"] in value
    elif "safe_regex_match" in h:
        ok = re.fullmatch(h["safe_regex_match"]["regex"], value) is not None
    elif "range_match" in h:
        r = h["range_match"]
        ok = re.fullmatch(r"\s*[+-]?\d+\s*", value) is not None and \
            r["start"] <= int(value) < r["end"]
    else:
        sm = h["string_match"]
        ok = (value.lower() == sm["exact"].lower()) if sm.get("ignore_case") \
            else value == sm["exact"]
    return ok


def ref_route_ok(m: dict[str, Any], req: Request) -> bool:
    full = req.path.split("#")[0]
    p = full.split("?")[0]
    cs = m.get("case_sensitive", True)

    def n(s: str) -> str:
        return s if cs else s.lower()
    if "prefix" in m:
        ok = n(p).startswith(n(m["prefix"]))
    elif "path" in m:
        ok = n(p) == n(m["path"])
    elif "path_separated_prefix" in m:
        v = n(m["path_separated_prefix"])
        ok = n(p) == v or n(p).startswith(v + "/")
    else:
        ok = re.fullmatch(m["safe_regex"]["regex"], p) is not None
    if not ok or not all(ref_header_ok(h, req) for h in m.get("headers", [])):
        return False
    query: dict[str, str] = {}
    if "?" in full:
        for kv in full.split("?", 1)[1].split("&"):
            k, _, v = kv.partition("=")
            query.setdefault(k, v)
    for q in m.get("query_parameters", []):
        if "present_match" in q:
            if (q["name"] in query) != q["present_match"]:
                return False
            continue
        if q["name"] not in query:
            return False
        sm = q.get("string_match")
        if sm and "exact" in sm and query[q["name"]] != sm["exact"]:
            return False
        if sm and "prefix" in sm and not query[q["name"]].startswith(sm["prefix"]):
            return False
    return True


def ref_first_match(cfg: dict[str, Any], req: Request) -> tuple[str | None, int | None]:
    vh = ref_vhost(cfg, req.authority)
    if vh is None:
        return None, None
    for i, r in enumerate(vh["routes"]):
        if ref_route_ok(r["match"], req):
            return vh["name"], i
    return vh["name"], None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route_config(), st.lists(request(), min_size=1, max_size=8))
def test_last_match_on_reversed_table_equals_envoy_first_match(
        cfg: dict[str, Any], requests: list[Request]) -> None:
    table = translate_route_config(parse_resource(cfg))
    for vh_cfg, vh in zip(cfg["virtual_hosts"], table.virtual_hosts, strict=True):
        assert [r.envoy_index for r in vh.rules] == list(range(len(vh_cfg["routes"])))[::-1]
    for req in requests:
        d = route(table, req)
        vh_name, index = ref_first_match(cfg, req)
        assert (d.virtual_host, d.envoy_index) == (vh_name, index), req
        if index is not None:
            assert d.cluster == f"c{vh_name[2:]}.{index}"
            assert d.rule == len(table.virtual_hosts[int(vh_name[2:])].rules) - 1 - index


# ---------------------------------------------------------------- never crash

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000),
                      st.sampled_from(["", "*", "a(", "/", "x*y", "GET", "*.a", "[z-a]", "/a/"]))


def mutate(draw: st.DrawFn, obj: Any, depth: int = 0) -> Any:
    """Randomly replace, drop or keep parts of a valid config (keys stay valid fields)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            choice = draw(st.integers(0, 9))
            if choice == 0 and k != "@type":
                continue
            out[k] = draw(json_leaf) if choice == 1 and k != "@type" else mutate(draw, v, depth + 1)
        return out
    if isinstance(obj, list):
        return [mutate(draw, v, depth + 1) for v in obj if draw(st.integers(0, 9))]
    return draw(json_leaf) if draw(st.integers(0, 7)) == 0 else obj


@st.composite
def mangled_route_config(draw: st.DrawFn) -> dict[str, Any]:
    cfg = draw(route_config())
    for vh in cfg["virtual_hosts"]:
        for r in vh["routes"]:
            choice = draw(st.integers(0, 4))
            if choice == 0:
                r["route"] = {"weighted_clusters": {"clusters": [
                    {"name": "w1", "weight": draw(st.integers(0, 3))},
                    {"name": "w2", "weight": draw(st.integers(0, 3))}]}}
            elif choice == 1:
                del r["route"]
                r["redirect"] = {"path_redirect": "/x", "response_code": "FOUND"}
            elif choice == 2:
                del r["route"]
                r["direct_response"] = {"status": draw(st.integers(100, 700))}
    return mutate(draw, cfg)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled_route_config(), st.lists(request(), max_size=3))
def test_random_route_configs_never_crash(cfg: dict[str, Any], requests: list[Request]) -> None:
    try:
        msg = parse_resource(cfg)
    except ResourceError:
        return  # not a RouteConfiguration at all (wrong JSON types): the parser's job
    try:
        validate_resource(ROUTE_CONFIGURATION, msg)
        table = translate_route_config(msg)
    except TranslationError as exc:
        assert str(exc).startswith("RouteConfiguration '")
        return
    for req in requests:
        d = route(table, req)
        assert d.to_json()["route_config"] == table.name


_FIXED = translate_route_config(parse_resource({
    "@type": ROUTE_CONFIGURATION, "name": "fixed", "virtual_hosts": [
        {"name": "a", "domains": ["a.com", "*.a.com", "b*"], "routes": [
            {"match": {"safe_regex": {"regex": "/r/[^/]+"}, "headers": [
                {"name": "x-n", "range_match": {"start": 0, "end": 9}}]},
             "route": {"cluster": "r"}},
            {"match": {"prefix": "/p", "case_sensitive": False, "query_parameters": [
                {"name": "q", "string_match": {"contains": "é", "ignore_case": True}}]},
             "redirect": {"prefix_rewrite": "/n", "strip_query": True}},
            {"match": {"path_separated_prefix": "/s"}, "route": {"cluster_header": "x-c"}}]},
        {"name": "d", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 302}}]}],
    "ignore_path_parameters_in_path_matching": True}))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.text(max_size=20), st.text(max_size=12),
       st.lists(st.tuples(st.sampled_from(["x-n", "x-c", "X-N", "te", "connection", "host",
                                           "content-type"]), st.text(max_size=8)),
                max_size=4))
def test_model_never_crashes_on_arbitrary_requests(method: str, path: str, authority: str,
                                                   headers: list[tuple[str, str]]) -> None:
    d = route(_FIXED, Request(method=method, authority=authority, path=path,
                              headers=tuple(headers)))
    assert d.to_json()["route_config"] == "fixed"
    if d.action.value == "redirect":
        assert d.location is not None and "://" in d.location
