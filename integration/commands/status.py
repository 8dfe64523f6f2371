"""`sockmesh status`: ask a running agent how it is doing (its loopback /status endpoint)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from integration.agent import DEFAULT_ADMIN_ADDR
from integration.commands._args import listen_addr
from integration.commands._output import print_doc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("--admin-addr", "--metrics-addr", dest="admin_addr", type=listen_addr,
                        default=DEFAULT_ADMIN_ADDR, metavar="IP:PORT",
                        help="the agent's --metrics-addr (default "
                             f"{DEFAULT_ADMIN_ADDR[0]}:{DEFAULT_ADMIN_ADDR[1]})")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="give up after S seconds (5)")


def fetch_status(host: str, port: int, timeout: float) -> dict[str, Any]:
    """The agent's /status document."""
    with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=timeout) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _fmt_share(share: float | None) -> str:
    return "n/a (no requests yet)" if share is None else f"{share * 100:.1f}%"


def render(doc: dict[str, Any]) -> str:
    """The status document as readable text."""
    x, cfg, dp = doc["xds"], doc["config"], doc["datapath"]
    lines = [
        f"agent pid {doc['pid']}, up {doc['uptime_seconds']:.0f} s",
        f"control server  {x['server']} ({'delta' if x['delta'] else 'SotW'}): "
        + ("connected" if x["connected"] else f"NOT connected ({x['last_error'] or 'connecting'})")
        + f", streams opened {x['streams_opened']}, ACKs {x['acks']}, NACKs {x['nacks']}",
    ]
    for short, t in sorted(x["types"].items()):
        lines.append(f"  {short}: version {t['version'] or '-'}, {t['resources']} resources, "
                     f"{t['acks']} ACK / {t['nacks']} NACK"
                     + (f", does not exist: {', '.join(t['does_not_exist'])}"
                        if t["does_not_exist"] else ""))
    nack = x.get("last_nack")
    lines.append("last NACK       " + (f"{nack['type']} version {nack['rejected_version']} "
                                       f"(kept {nack['kept_version'] or 'none'}): "
                                       f"{nack['reason']}" if nack else "none"))
    applied = cfg.get("applied")
    lines.append("config applied  " + (
        f"{cfg['applies']}x, last "
        + " ".join(f"{k}={v}" for k, v in sorted(applied["versions"].items()))
        + f" in {applied['ms']:.1f} ms: "
        f"{applied['services']} services, {applied['route_tables']} route tables, "
        f"{applied['clusters']} clusters, {applied['endpoints']} endpoints"
        if applied else "not yet"))
    if cfg.get("last_error"):
        lines.append(f"apply error     {cfg['last_error']['error']} ({cfg['errors']}x)")
    if not dp["enabled"]:
        lines.append("datapath        disabled (--no-datapath)")
        return "\n".join(lines)
    if not dp["loaded"]:
        lines.append(f"datapath        NOT loaded, failing open: {dp['error']}")
        return "\n".join(lines)
    lines.append(f"datapath        loaded{' (adopted pinned state)' if dp.get('adopted') else ''}"
                 f", pins {dp['pin_dir']}")
    lines.append(f"  cgroups       {', '.join(dp['cgroups'])}")
    progs = dp.get("programs") or {}
    if progs:
        lines.append("  programs      " + ", ".join(f"{k} id {v}" for k, v in sorted(progs.items())))
    maps = dp.get("maps") or {}
    if maps:
        lines.append("  map fill      " + ", ".join(
            f"{k} {n}/{cap}" for k, (n, cap) in sorted(maps.items()) if n))
    counters = dp.get("counters") or {}
    if counters:
        lines.append("  counters      " + ", ".join(
            f"{k} {v}" for k, v in sorted(counters.items()) if v))
    lines.append(f"  fast path     {_fmt_share(dp.get('fast_path_share'))}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Fetch and print the agent's status."""
    if args.admin_addr is None:
        print("sockmesh status: --admin-addr cannot be 'off'", file=sys.stderr)
        return 2
    host, port = args.admin_addr
    try:
        doc = fetch_status(host, port, args.timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"sockmesh status: no agent answering on http://{host}:{port}/status ({reason}); "
              "is `sockmesh run` up, with this --metrics-addr?", file=sys.stderr)
        return 1
    print_doc(doc, args.json, render)
    return 0
