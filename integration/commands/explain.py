"""`sockmesh explain`: route requests on a config dump with the routing model and say why.

Batch form (what the differential tests and migration scripts use)::

    sockmesh explain --config-dump dump.json --route-config 9080 --requests reqs.jsonl

prints one JSON decision per input line, in order.  Single form::

    sockmesh explain --config-dump dump.json --route-config 9080 -H 'x-user: jason' \\
        http://reviews:9080/api/v1

prints a readable explanation (``--json`` for the decision object).  ``--port PORT`` picks
the route config of the HTTP service on that port instead of naming it.  ``--connect IP:PORT``
says what connect4 does with a TCP connect there (spliced to a route table, an L4 endpoint,
refused by a BlackHoleCluster entry, or left alone) and, given requests, routes them on that
service's route table.

Routing is the translator's model, the same code the slow path runs; this module only reads
input, picks the route table and renders decisions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import urllib.parse
from collections.abc import Iterable
from typing import Any, TextIO

from integration.commands.tables import (
    CommandError,
    format_action,
    format_match,
    load_tables,
    write_stdout,
)
from translator.model import (
    ConnectDecision,
    Decision,
    Request,
    decide_connect,
    route,
    select_virtual_host,
)
from translator.route_table import domain_kind
from translator.tables import RouteTable, ServiceKind, Tables, VirtualHost

BATCH_LINES = 512
REQUEST_KEYS = {"method", "authority", "path", "headers", "scheme"}


def pick_route_table(tables: Tables, name: str | None, port: int | None) -> RouteTable:
    """The route table named ``name``, or the one the HTTP service on ``port`` uses."""
    if name is not None:
        rt = tables.route_tables.get(name)
        if rt is None:
            known = ", ".join(sorted(tables.route_tables)) or "(none)"
            raise CommandError(f"unknown route config {name!r}; known route configs: {known}")
        return rt
    assert port is not None
    on_port = [s for s in tables.services if s.port == port]
    http = [s for s in on_port if s.kind == ServiceKind.HTTP and s.route_table]
    if not http:
        if on_port:
            desc = ", ".join(f"{s.vip}:{s.port} {s.kind.value} ({s.listener})" for s in on_port)
            raise CommandError(f"no HTTP service with a route config on port {port}: {desc}")
        ports = sorted({s.port for s in tables.services})
        skipped = "".join(f"; listener {name} skipped: {why}"
                          for name, why in tables.skipped_listeners[:5])
        raise CommandError(
            f"no service listens on port {port}"
            + (f"; service ports: {', '.join(map(str, ports))}" if ports
               else "" if skipped else " (the config dump has no listeners)") + skipped)
    # Istio's outbound 0.0.0.0_PORT listener is the one a client on that port reaches
    wildcard = [s for s in http if s.vip == "0.0.0.0"]
    candidates = wildcard or http
    names = sorted({s.route_table for s in candidates if s.route_table})
    if len(names) > 1:
        raise CommandError(
            f"port {port} is ambiguous: route configs {', '.join(names)}; "
            "use --route-config")
    rt = tables.route_tables.get(names[0])
    if rt is None:
        raise CommandError(f"the service on port {port} names route config {names[0]!r}, "
                           "which is not in the config dump")
    return rt


def parse_connect(text: str) -> tuple[str, int]:
    """``--connect``: an IPv4 ``IP:PORT`` (what connect4 sees)."""
    from integration.commands._args import host_port, ipv4_addr

    try:
        host, port = host_port(text)
        return ipv4_addr(host), port
    except argparse.ArgumentTypeError as exc:
        raise CommandError(f"--connect: {exc}") from None


def connect_route_table(tables: Tables, dec: ConnectDecision, dest: str) -> RouteTable:
    """The route table requests on a connect to ``dest`` are routed on."""
    if dec.verdict != "http" or dec.service is None:
        raise CommandError(f"a connect to {dest} is not routed per request: {dec.verdict}, "
                           f"{dec.why}")
    rt = tables.route_tables.get(dec.service.route_table or "")
    if rt is None:
        raise CommandError(f"the service for {dest} names route config "
                           f"{dec.service.route_table!r}, which is not in the config dump")
    return rt


def print_connect(dest: str, dec: ConnectDecision, out: TextIO) -> None:
    """A readable account of connect4's decision."""
    svc = dec.service
    entry = (f"{svc.vip}:{svc.port} {svc.kind.value} (listener {svc.listener})" if svc
             else "none")
    out.write(f"connect        {dest}\n"
              f"service entry  {entry}\n"
              f"decision       {dec.verdict}: {dec.why}\n")


def request_from_obj(obj: Any, where: str) -> Request:
    """Validate one jsonl request object and build a model Request."""
    if not isinstance(obj, dict):
        raise CommandError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - REQUEST_KEYS)
    if unknown:
        raise CommandError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                           f"allowed: {', '.join(sorted(REQUEST_KEYS))}")
    for key in ("method", "authority", "path", "scheme"):
        if key in obj and not isinstance(obj[key], str):
            raise CommandError(f"{where}: field {key!r} must be a string")
    path = obj.get("path", "/")
    if not path.startswith("/"):
        raise CommandError(f"{where}: field 'path' must start with '/', got {path!r}")
    headers = obj.get("headers", {})
    if isinstance(headers, dict):
        # {"name": "value"} or {"name": ["value", "value"]} for a header sent twice
        pairs = [(n, v) for n, vs in headers.items()
                 for v in (vs if isinstance(vs, list) and vs else [vs])]
    elif isinstance(headers, list) and all(isinstance(h, list | tuple) and len(h) == 2
                                           for h in headers):
        pairs = [tuple(h) for h in headers]
    else:
        raise CommandError(f"{where}: field 'headers' must be an object or a list of "
                           "[name, value] pairs")
    for n, v in pairs:
        if not isinstance(n, str) or not isinstance(v, str):
            raise CommandError(f"{where}: header {n!r}: name and value must be strings")
    return Request.from_dict({**obj, "headers": [list(p) for p in pairs]})


def read_requests(path: str) -> list[Request]:
    """Parse a jsonl file ('-' is stdin) of requests; an error names the line number."""
    try:
        stream: Iterable[str]
        if path == "-":
            stream = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8") as f:
                stream = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    out: list[Request] = []
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{where}: malformed JSON at column {exc.colno}: {exc.msg}"
                               ) from None
        try:
            out.append(request_from_obj(obj, where))
        except (TypeError, ValueError, KeyError) as exc:
            raise CommandError(f"{where}: bad request: {exc}") from None
    return out


def request_from_url(url: str, method: str, header_args: list[str]) -> Request:
    """The single form's URL, -X and -H options as a Request (a Host header sets authority)."""
    headers: list[tuple[str, str]] = []
    for h in header_args:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise CommandError(f"-H {h!r}: expected 'name: value'")
        headers.append((name.strip().lower(), value.strip()))
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CommandError(f"URL {url!r}: expected http://AUTHORITY/PATH[?QUERY]")
    authority = parts.netloc
    host_headers = [v for n, v in headers if n == "host"]
    if host_headers:
        authority = host_headers[-1]
        headers = [(n, v) for n, v in headers if n != "host"]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    obj = {"method": method, "authority": authority, "path": path,
           "headers": [list(h) for h in headers], "scheme": parts.scheme}
    return request_from_obj(obj, "request")


def matched_domain(rt: RouteTable, vh: VirtualHost, authority: str) -> str | None:
    """Which of ``vh``'s domains selects it for ``authority`` (asks the model, one at a time)."""
    best: str | None = None
    rank = {"exact": 0, "suffix": 1, "prefix": 2, "default": 3}
    for d in vh.domains:
        one = RouteTable(rt.name, (VirtualHost(vh.name, (d,), ()),),
                         ignore_port_in_host_matching=rt.ignore_port_in_host_matching)
        if select_virtual_host(one, authority) is None:
            continue
        # Envoy's precedence between kinds; within a kind the longest wildcard wins
        if best is None or (rank[domain_kind(d)], -len(d)) < (rank[domain_kind(best)],
                                                                -len(best)):
            best = d
    return best


def print_explanation(rt: RouteTable, req: Request, d: Decision, out: TextIO) -> None:
    """A readable account of one decision: virtual host, rule, Envoy route, action."""
    j = d.to_json()
    w = out.write
    hdrs = ", ".join(f"{n}: {v}" for n, v in req.headers)
    w(f"request        {req.method} {req.scheme}://{req.authority}{req.path}\n")
    if hdrs:
        w(f"headers        {hdrs}\n")
    w(f"route config   {rt.name}"
      + ("  (ignore_port_in_host_matching)" if rt.ignore_port_in_host_matching else "")
      + "\n")
    vh = next((v for v in rt.virtual_hosts if v.name == j.get("virtual_host")), None)
    if vh is None:
        w(f"virtual host   none: no domain of {len(rt.virtual_hosts)} virtual host(s) "
          f"matches {req.authority!r} (Envoy answers 404)\n")
    else:
        dom = matched_domain(rt, vh, req.authority)
        why = f"domain {dom!r} ({domain_kind(dom)})" if dom is not None else "?"
        w(f"virtual host   {vh.name}\n"
          f"  chosen by    {why}; Envoy's precedence: exact, then longest '*suffix', "
          "then longest 'prefix*', then '*'\n"
          f"  domains      {', '.join(vh.domains)}\n")
        rule_idx = j.get("rule")
        if rule_idx is None:
            w(f"rule           none of {len(vh.rules)} rule(s) matches (Envoy answers 404)\n")
        else:
            rule = vh.rules[int(rule_idx)]
            name = f"{rule.name!r}" if rule.name else "(unnamed)"
            w(f"rule           #{rule_idx} of {len(vh.rules)} in the last-match table = "
              f"Envoy route {name}, #{rule.envoy_index} in Envoy order "
              "(the first Envoy route that matches)\n"
              f"  match        {format_match(rule)}\n"
              f"  action       {format_action(rule.action)}\n")
            if rule.needs_slow_path:
                w(f"  slow path    {', '.join(rule.needs_slow_path)} (the kernel hands these "
                  "requests to user space)\n")
            if rule.retry is not None:
                w(f"  retry        {rule.retry.summary()}\n")
    w(f"decision       {j.get('action')}")
    if j.get("cluster"):
        w(f" -> {j['cluster']}")
    if j.get("candidates"):
        w(f"  candidates: {json.dumps(j['candidates'])}")
    if j.get("status") is not None:
        w(f"  status {j['status']}")
    if j.get("location"):
        w(f"  location {j['location']}")
    w("\n")
    ne = j.get("not_enforced") or []
    w(f"not enforced   {', '.join(ne) if ne else '(nothing)'}\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `sockmesh explain`."""
    parser.add_argument("--config-dump", required=True, metavar="FILE",
                        help="Envoy admin /config_dump JSON ('-' for stdin)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--route-config", metavar="NAME", help="route config to route on")
    which.add_argument("--port", type=int, metavar="PORT",
                       help="use the route config of the HTTP service on this port")
    which.add_argument("--connect", metavar="IP:PORT",
                       help="say what connect4 does with a TCP connect to IP:PORT (refused "
                            "under Istio's REGISTRY_ONLY, spliced, L4, left alone); with "
                            "requests, route them on that service's route table")
    parser.add_argument("--requests", metavar="FILE.jsonl",
                        help="one JSON request per line ('-' for stdin); prints one JSON "
                             "decision per line")
    parser.add_argument("-X", "--method", default="GET", help="method (single form)")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="request header (single form; repeatable; Host sets authority)")
    parser.add_argument("--json", action="store_true", help="single form: print JSON")
    parser.add_argument("url", nargs="?", help="http://AUTHORITY/PATH?QUERY (single form)")


def run(args: argparse.Namespace) -> int:
    """Explain the requests; exit 2 with one message on stderr for bad input."""
    try:
        connect_only = args.connect is not None and args.requests is None and args.url is None
        if (args.requests is None) == (args.url is None) and not connect_only:
            raise CommandError("give either --requests FILE.jsonl or one URL")
        if args.requests == "-" and args.config_dump == "-":
            raise CommandError("--config-dump and --requests cannot both be stdin")
        dest = parse_connect(args.connect) if args.connect is not None else None
        tables = load_tables(args.config_dump)
        if dest is not None:
            dec = decide_connect(tables, *dest)
            where = f"{dest[0]}:{dest[1]}"
            if connect_only:
                if args.json:
                    print(json.dumps({"connect": where, "verdict": dec.verdict,
                                      "service": dataclasses.asdict(dec.service)
                                      if dec.service else None, "why": dec.why}, indent=1))
                else:
                    print_connect(where, dec, sys.stdout)
                return 0
            rt = connect_route_table(tables, dec, where)
        else:
            rt = pick_route_table(tables, args.route_config, args.port)
        if args.requests is not None:
            reqs = read_requests(args.requests)
            try:
                # written in chunks: a flush per line costs more than routing the request
                for start in range(0, len(reqs), BATCH_LINES):
                    write_stdout("".join(
                        json.dumps(route(rt, req, tables.clusters).to_json()) + "\n"
                        for req in reqs[start:start + BATCH_LINES]))
            except BrokenPipeError:
                pass
            return 0
        req = request_from_url(args.url, args.method, args.header)
    except CommandError as exc:
        print(f"sockmesh explain: {exc}", file=sys.stderr)
        return 2
    decision = route(rt, req, tables.clusters)
    if args.json:
        print(json.dumps(decision.to_json(), indent=1))
    else:
        print_explanation(rt, req, decision, sys.stdout)
    return 0
