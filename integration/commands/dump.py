"""`sockmesh dump`: what is in the pinned kernel maps, read from the maps themselves.

The values come from the pinned maps under ``--pin-dir`` (bpf.datapath.dump), not from the
agent's memory.  The maps hold numeric ids; when an agent answers on ``--admin-addr`` its
``/ids`` labels them with cluster and route-table names (and lists the endpoint ids), else
they are shown as ids.  BLACKHOLE entries (connect refused) are labelled from the map's kind
field; the entry 0.0.0.0:0 is the policy for destinations no other entry matches (Istio's
REGISTRY_ONLY when present, connects left alone when absent).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from integration.agent import DEFAULT_ADMIN_ADDR, DEFAULT_PIN_DIR
from integration.commands._args import listen_addr, pin_dir
from integration.commands._output import print_doc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("--pin-dir", type=pin_dir, default=DEFAULT_PIN_DIR, metavar="PATH",
                        help=f"the agent's --pin-dir ({DEFAULT_PIN_DIR})")
    parser.add_argument("--admin-addr", "--metrics-addr", dest="admin_addr", type=listen_addr,
                        default=DEFAULT_ADMIN_ADDR, metavar="IP:PORT",
                        help="the agent's --metrics-addr, for names ('off': ids only)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _ids(addr: tuple[str, int] | None) -> dict[str, Any] | None:
    if addr is None:
        return None
    try:
        with urllib.request.urlopen(f"http://{addr[0]}:{addr[1]}/ids", timeout=3) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError, ValueError):
        return None


def read(pin: Path, ids: dict[str, Any] | None) -> dict[str, Any]:
    """The maps under ``pin`` as plain data (labelled when ``ids`` are known)."""
    from bpf.datapath import dump  # needs libbpf
    from integration.datapath_info import NamesShim, map_fill, program_ids

    # the shim answers the encoder's name look-ups from the agent's /ids
    doc = dump(pin, NamesShim(ids) if ids else None)  # type: ignore[arg-type]
    doc["programs"] = program_ids(pin)
    doc["maps"] = {k: {"entries": n, "max_entries": cap}
                   for k, (n, cap) in map_fill(pin).items()}
    doc["names_from_agent"] = bool(ids)
    _label_blackholes(pin, doc)
    return doc


def _label_blackholes(pin: Path, doc: dict[str, Any]) -> None:
    """Mark BLACKHOLE service entries and state the policy for unknown destinations."""
    import socket

    from bpf import layout
    from bpf.encoder import ip_str
    from bpf.limits import limit
    from bpf.maps import PinnedMap

    m = PinnedMap(pin / "sm_services_v1", layout.SvcKey, layout.Service)
    try:
        refused = {(ip_str(k.vip), socket.ntohs(k.port)) for k, v in m.items()
                   if v.kind == limit("SVC_BLACKHOLE")}
    finally:
        m.close()
    for s in doc["services"]:
        if (s["vip"], s["port"]) in refused:
            s["kind"], s["name"] = "blackhole", None
    doc["unknown_destinations"] = "refused" if ("0.0.0.0", 0) in refused else "left alone"


def render(doc: dict[str, Any]) -> str:
    """Readable text of a dump."""
    out = ["programs: " + ", ".join(f"{k} (id {v})" for k, v in sorted(doc["programs"].items()))]
    out.append(f"services ({len(doc['services'])}):")
    for s in sorted(doc["services"], key=lambda s: (s["port"], s["vip"])):
        if s["kind"] == "blackhole":
            out.append(f"  {s['vip']}:{s['port']:<6} {s['kind']} -> connect refused (EPERM)")
            continue
        out.append(f"  {s['vip']}:{s['port']:<6} {s['kind']:<4} -> "
                   f"{'route table' if s['kind'] == 'http' else 'cluster'} "
                   f"{s['name'] or '#' + str(s['id'])}")
    if doc.get("unknown_destinations") == "refused":
        out.append("  TCP connects to destinations no entry matches: refused (EPERM), "
                   "except 127.0.0.1 and the splice listener (Istio's REGISTRY_ONLY)")
    else:
        out.append("  TCP connects to destinations no entry matches: left alone")
    out.append(f"clusters ({len(doc['clusters'])}):")
    policies = {1: "ROUND_ROBIN", 2: "RANDOM", 3: "LEAST_REQUEST"}
    for c in doc["clusters"]:
        out.append(f"  #{c['id']:<4} {c['name'] or '?':<24} "
                   f"{policies.get(c['policy'], c['policy']):<14} hosts {c['hosts']}")
    out.append(f"endpoints ({len(doc['endpoints'])}):"
               + ("" if doc["names_from_agent"] else " (ids known only from a running agent)"))
    for e in doc["endpoints"]:
        states: dict[str, int] = {}
        for s in e["pool"]:
            states[s] = states.get(s, 0) + 1
        pool = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
        out.append(f"  #{e['id']:<4} {e['addr'] or '?':<22} active {e['active']:<4} pool: {pool}")
    out.append(f"client connections ({len(doc['clients'])}):")
    for c in doc["clients"][:50]:
        out.append(f"  {c['client']:<22} -> {c['service']:<22} requests {c['requests']:<6} "
                   f"last cluster {c['last_cluster'] or '-'}{'  [slow path]' if c['user'] else ''}")
    if len(doc["clients"]) > 50:
        out.append(f"  ... {len(doc['clients']) - 50} more (--json shows all)")
    out.append("map fill: " + ", ".join(
        f"{k} {m['entries']}/{m['max_entries']}" for k, m in sorted(doc["maps"].items())))
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Read and print the pinned maps."""
    pin: Path = args.pin_dir
    if not (pin / "sm_services_v1").exists():
        print(f"sockmesh dump: no pinned datapath at {pin} (is `sockmesh run --pin-dir {pin}` "
              "running, or was it stopped with SIGTERM, which unpins?)", file=sys.stderr)
        return 1
    try:
        doc = read(pin, _ids(args.admin_addr))
    except OSError as exc:
        print(f"sockmesh dump: cannot read the maps under {pin}: {exc}", file=sys.stderr)
        return 1
    print_doc(doc, args.json, render)
    return 0
