"""`sockmesh tables`: the flattened match tables of a config dump, readable or as JSON.

Readable output follows ``istioctl proxy-config routes``: services first, then each route
config with its virtual hosts, their domains, and the rules in *table* order (last match
wins) with the Envoy route each rule came from and what the datapath does not enforce;
clusters last with their LB policy and endpoints.

Also home of what `explain` shares with it: loading a config dump into tables with errors
that name the file, the resource and the field, and one-line renderings of matches/actions.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

from translator import TranslationError, translate
from translator.resources import ResourceError, parse_config_dump
from translator.tables import (
    Action,
    ActionKind,
    Cluster,
    PathMatch,
    Rule,
    StringKind,
    Tables,
    ValueMatch,
)


class CommandError(Exception):
    """A user-facing failure: printed on stderr as one message, exit status 2."""


def read_json_file(path: str) -> Any:
    """Read and decode a JSON file ('-' is stdin), naming the line/column of a syntax error."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def load_tables(path: str) -> Tables:
    """Config dump file -> translated tables; every failure becomes a :class:`CommandError`."""
    dump = read_json_file(path)
    try:
        resources = parse_config_dump(dump, where=path)
    except ResourceError as exc:
        raise CommandError(str(exc)) from None
    try:
        return translate(resources)
    except TranslationError as exc:
        raise CommandError(f"{path}: {exc}") from None


def to_jsonable(obj: Any) -> Any:
    """Tables dataclasses -> plain JSON values (enums by value, tuples as lists)."""
    if isinstance(obj, Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    return obj


def tables_to_json(tables: Tables) -> dict[str, Any]:
    """The machine-readable form of ``tables`` (what ``--json`` prints)."""
    out: dict[str, Any] = to_jsonable(tables)
    return out


def write_stdout(text: str) -> None:
    """Write to stdout; a reader that went away (``| head``) ends output quietly."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when flushing at exit; point stdout at /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise


# --- one-line renderings, shared with `explain` -------------------------------------------

def _q(s: str) -> str:
    """Quote a config value for humans (no repr escaping of regex backslashes)."""
    return f"'{s}'"


def format_path(p: PathMatch) -> str:
    """``prefix '/api'`` / ``exact '/login' (case-insensitive)``."""
    text = f"{p.kind.value} {_q(p.value)}"
    return text if p.case_sensitive else f"{text} (case-insensitive)"


def format_value_match(v: ValueMatch, what: str = "header") -> str:
    """One header or query-parameter condition in words."""
    if v.kind == StringKind.PRESENT:
        text = f"{what} {v.name} {'present' if v.present else 'absent'}"
    elif v.kind == StringKind.RANGE:
        text = f"{what} {v.name} in [{v.range_start}, {v.range_end})"
    else:
        text = f"{what} {v.name} {v.kind.value} {_q(v.value)}"
        if v.ignore_case:
            text += " (ignore case)"
    return f"NOT ({text})" if v.invert else text


def format_match(rule: Rule) -> str:
    """All conditions of a rule, AND-ed."""
    parts = [format_path(rule.path)]
    parts += [format_value_match(h) for h in rule.headers]
    parts += [format_value_match(q, "query") for q in rule.query]
    return " AND ".join(parts)


def format_action(a: Action) -> str:
    """The action of a rule in words."""
    if a.kind == ActionKind.CLUSTER:
        if a.cluster_header:
            return f"cluster from header {a.cluster_header}"
        return f"cluster {a.cluster}"
    if a.kind == ActionKind.WEIGHTED_CLUSTERS:
        total = a.total_weight or sum(w.weight for w in a.weighted) or 1
        return "weighted " + ", ".join(
            f"{w.cluster} {w.weight} ({100 * w.weight / total:.0f}%)" for w in a.weighted)
    if a.kind == ActionKind.DIRECT_RESPONSE:
        return f"direct response {a.status}"
    if a.kind == ActionKind.REDIRECT and a.redirect is not None:
        r = a.redirect
        parts = [f"redirect {r.status}"]
        for label, value in (("scheme", r.scheme), ("host", r.host), ("port", r.port),
                             ("path", r.path), ("prefix", r.prefix_rewrite)):
            if value is not None:
                parts.append(f"{label}={value}")
        if r.strip_query:
            parts.append("strip query")
        return " ".join(parts)
    return a.kind.value


def format_cluster(c: Cluster) -> list[str]:
    """A cluster and its endpoints, one line each."""
    lines = [f"{c.name}  type={c.kind} lb={c.lb_policy.value}"
             + ("" if c.has_endpoints else "  (no endpoints yet)")]
    for e in c.endpoints:
        extra = f" priority={e.priority}" if e.priority else ""
        extra += f" locality={e.locality}" if e.locality else ""
        lines.append(f"    {e.address}:{e.port} weight={e.weight} health={e.health.value}{extra}")
    if c.not_enforced:
        lines.append(f"    not enforced: {', '.join(c.not_enforced)}")
    return lines


def print_tables(tables: Tables, out: TextIO) -> None:
    """The readable form of ``tables``."""
    w = out.write
    w(f"SERVICES ({len(tables.services)})\n")
    if tables.services:
        w(f"  {'VIP:PORT':<24} {'KIND':<9} {'ROUTE CONFIG / CLUSTER':<48} LISTENER\n")
        for s in sorted(tables.services, key=lambda s: (s.port, s.vip)):
            target = s.route_table if s.route_table is not None else (s.cluster or "-")
            w(f"  {s.vip + ':' + str(s.port):<24} {s.kind.value:<9} {target:<48} {s.listener}\n")
            if s.not_enforced:
                w(f"  {'':<24} not enforced: {', '.join(s.not_enforced)}\n")
    for name, why in tables.skipped_listeners:
        w(f"  (listener {name} skipped: {why})\n")
    for name in sorted(tables.route_tables):
        rt = tables.route_tables[name]
        flags = []
        if rt.ignore_port_in_host_matching:
            flags.append("ignore_port_in_host_matching")
        if rt.ignore_path_parameters_in_path_matching:
            flags.append("ignore_path_parameters_in_path_matching")
        w(f"\nROUTE CONFIG {name}" + (f"  [{', '.join(flags)}]" if flags else "") + "\n")
        for vh in rt.virtual_hosts:
            w(f"  VIRTUAL HOST {vh.name}\n")
            w(f"    domains: {', '.join(vh.domains)}\n")
            if vh.not_enforced:
                w(f"    not enforced: {', '.join(vh.not_enforced)}\n")
            w(f"    {'RULE':>4}  {'ENVOY':>5}  {'ROUTE NAME':<32} MATCH -> ACTION\n")
            for i, rule in enumerate(vh.rules):
                rname = rule.name or "-"
                w(f"    {i:>4}  {'#' + str(rule.envoy_index):>5}  {rname:<32} "
                  f"{format_match(rule)} -> {format_action(rule.action)}\n")
                if rule.retry is not None:
                    w(f"    {'':>4}  {'':>5}  {'':<32} retry: {rule.retry.summary()}\n")
                if rule.not_enforced:
                    w(f"    {'':>4}  {'':>5}  {'':<32} not enforced: "
                      f"{', '.join(rule.not_enforced)}\n")
                if rule.needs_slow_path:
                    w(f"    {'':>4}  {'':>5}  {'':<32} slow path: "
                      f"{', '.join(rule.needs_slow_path)}\n")
    w(f"\nCLUSTERS ({len(tables.clusters)})\n")
    for name in sorted(tables.clusters):
        for line in format_cluster(tables.clusters[name]):
            w(f"  {line}\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `sockmesh tables`."""
    parser.add_argument("--config-dump", required=True, metavar="FILE",
                        help="Envoy admin /config_dump JSON ('-' for stdin)")
    parser.add_argument("--json", action="store_true", help="print the tables as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the tables of ``--config-dump``; exit 2 with a message on bad input."""
    try:
        tables = load_tables(args.config_dump)
    except CommandError as exc:
        print(f"sockmesh tables: {exc}", file=sys.stderr)
        return 2
    try:
        if args.json:
            write_stdout(json.dumps(tables_to_json(tables), indent=1) + "\n")
        else:
            buf = io.StringIO()
            print_tables(tables, buf)
            write_stdout(buf.getvalue())
    except BrokenPipeError:
        return 0
    return 0
