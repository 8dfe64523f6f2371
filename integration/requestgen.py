"""Requests around the routes of any Envoy route config: boundary paths and host probes.

``sockmesh ab`` replays these through Envoy and the datapath for a real (Istio) config; the
tests' route config generator (tests/support/routegen.py) builds on the same pieces.  For
every route: the paths just inside and just outside its match, each sent with every virtual
host domain and its near misses (case flip, port toggled, trailing dot, wildcard fills),
plus hosts no virtual host names.  Requests carry no expected answer: Envoy labels them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# regex, paths it fully matches, paths it does not (RE2 syntax, matched on the path only)
REGEX_TEMPLATES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (r"/api/v[0-9]+/users", ("/api/v1/users", "/api/v22/users"),
     ("/api/v/users", "/api/v1/users/", "/API/v1/users")),
    (r"/reviews/[0-9]+", ("/reviews/1", "/reviews/42"), ("/reviews/", "/reviews/a", "/reviews/1/x")),
    (r"/static/.*\.css", ("/static/a.css", "/static/x/y.css"), ("/static/a.cssx", "/static/a_css")),
    (r"/(login|logout)", ("/login", "/logout"), ("/log", "/loginx", "/Login")),
    (r"/get.*", ("/get", "/getx", "/get/a"), ("/ge", "/GET")),
    (r"/[a-z]+", ("/api", "/get"), ("/api/v1", "/API", "/")),
)

UNKNOWN_HOSTS = ("unknown.test", "example.com", "api", "reviews.other.svc.cluster.local")


@dataclass
class GeneratedRequest:
    """One request in the explain jsonl shape, with a note saying why it was generated."""

    method: str
    authority: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    note: str = ""
    # sent after ``headers``; may repeat a name (Envoy joins repeated values with ",")
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    def header_pairs(self) -> list[tuple[str, str]]:
        """Every header in wire order."""
        return [*self.headers.items(), *self.extra_headers]

    def to_dict(self) -> dict[str, Any]:
        """The explain ``--requests`` line for this request."""
        headers: Any = dict(self.headers)
        if self.extra_headers:
            headers = [list(p) for p in self.header_pairs()]
        return {"method": self.method, "authority": self.authority, "path": self.path,
                "headers": headers}


def flip_case(s: str) -> str:
    """``s`` with its case swapped (with an X added when that changes nothing)."""
    flipped = s.swapcase()
    return flipped if flipped != s else s + "X"


def authority_probes(domains: list[str], port: int) -> list[tuple[str, str]]:
    """Host values near each domain: literal, case flip, port added/removed, wildcard fill."""
    out: list[tuple[str, str]] = []
    for d in domains:
        if d == "*":
            out.append(("anything.at.all:1234", "catch-all"))
        elif d.startswith("*"):
            suffix = d[1:]
            out += [(f"foo{suffix}", "wildcard suffix"), (f"a.b{suffix}", "deep suffix"),
                    (suffix.lstrip(".-"), "suffix without label"),
                    (f"foo{suffix}:{port}", "wildcard suffix + port"),
                    (f"FOO{suffix.upper()}", "wildcard suffix upper")]
        elif d.endswith("*"):
            stem = d[:-1]
            out += [(f"{stem}example.org", "wildcard prefix"),
                    (f"{stem}x:{port}", "wildcard prefix + port"),
                    (stem.rstrip("."), "prefix without dot")]
        else:
            host, _, p = d.partition(":")
            out.append((d, "domain"))
            out.append((flip_case(d), "domain case flip"))
            out.append((host if p else f"{d}:{port}", "port toggled"))
            out.append((f"{host}.:{p}" if p else f"{d}.", "trailing dot"))
            if p:
                out.append((f"{host}:{int(p) + 1}", "other port"))
    return out


def boundary_paths(match: dict[str, Any]) -> list[str]:
    """Paths just inside and just outside an Envoy route match (any config, not only ours)."""
    for kind in ("prefix", "path", "path_separated_prefix"):
        if kind in match:
            p = str(match[kind])
            t = p.rstrip("/")
            out = [p, f"{p}?a=1", flip_case(p), f"{p}x", f"{t}/x", f"{t}/"]
            if len(p) > 1:
                out.append(p[:-1])
            return list(dict.fromkeys(out))
    if "safe_regex" in match:
        regex = str(match["safe_regex"].get("regex", ""))
        for pattern, good, bad in REGEX_TEMPLATES:
            if pattern == regex:
                return [*good, *bad]
    return ["/", "/x"]


def boundary_requests(route_config: dict[str, Any]) -> list[GeneratedRequest]:
    """Requests around every route of ``route_config`` for every domain form of its host.

    For real configs (the Istio dumps): each route's boundary paths, sent with each virtual
    host's domains and their near misses (case flip, port toggled), plus unknown hosts.
    """
    out: list[GeneratedRequest] = []
    for vh in route_config.get("virtual_hosts", []):
        domains = [str(d) for d in vh.get("domains", [])]
        probes = authority_probes(domains, 80)
        for i, r in enumerate(vh.get("routes", [])):
            tag = r.get("name") or f"{vh.get('name')}/#{i}"
            for path in boundary_paths(r.get("match", {})):
                for host, note in probes:
                    out.append(GeneratedRequest("GET", host, path, {}, f"{tag}: {note} {path}"))
    for host in UNKNOWN_HOSTS:
        out.append(GeneratedRequest("GET", host, "/", {}, "unknown host"))
    return out
