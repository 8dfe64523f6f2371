"""Read-only views of a running datapath for status, metrics and dump.

Everything here reads the kernel objects themselves (pinned programs and maps, via their
fds and /proc/self/fdinfo) or the encoder's id tables (the only place names live: the kernel
maps hold numeric ids).  Capacities come from the kernel's own ``max_entries``, so no limit
is retyped here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bpf import layout as L
from bpf import maps as bpfmaps

# hash maps whose fill is counted by walking their keys (arrays are counted by the encoder);
# bpf.layout names them with their layout version
HASH_MAPS: dict[str, tuple[Any, Any]] = L.PINNED_HASH_MAPS


fdinfo = bpfmaps.fdinfo


def _pinned_info(path: Path) -> dict[str, str]:
    fd = bpfmaps.obj_get(path)
    try:
        return fdinfo(fd)
    finally:
        os.close(fd)


def program_ids(pin_dir: Path) -> dict[str, int]:
    """Pinned program name -> kernel program id (what ``bpftool prog`` shows)."""
    out = {}
    for path in sorted(Path(pin_dir).glob("prog_*")):
        info = _pinned_info(path)
        if "prog_id" in info:
            out[path.name[len("prog_"):]] = int(info["prog_id"])
    return out


def map_fill(pin_dir: Path, encoder: Any = None) -> dict[str, tuple[int, int]]:
    """Map name -> (entries in use, max_entries) for the maps whose fill matters."""
    pin_dir = Path(pin_dir)
    out: dict[str, tuple[int, int]] = {}
    counts = getattr(encoder, "entry_counts", None)
    written: dict[str, int] = counts() if callable(counts) else {}
    for path in sorted(pin_dir.glob("sm_*")):
        name = path.name
        info = _pinned_info(path)
        cap = int(info.get("max_entries", 0))
        if name in HASH_MAPS:
            k, v = HASH_MAPS[name]
            m = bpfmaps.PinnedMap(path, k, v)
            try:
                n = sum(1 for _ in m.keys())  # noqa: SIM118 - PinnedMap is not iterable
            finally:
                m.close()
            out[name] = (n, cap)
        elif name in written:
            out[name] = (written[name], cap)
    return out


def names(encoder: Any) -> dict[str, dict[str, Any]]:
    """Id -> name tables of the encoder (clusters, route tables, endpoints), JSON keys."""
    if encoder is None:
        return {"clusters": {}, "route_tables": {}, "endpoints": {}, "rules": {}}
    return {
        "clusters": {str(i): n for n, i in encoder.cluster_ids.ids.items()},
        "route_tables": {str(i): n for n, i in encoder.rt_ids.ids.items()},
        "endpoints": {str(i): list(a) for i, a in encoder.endpoints().items()},
        "rules": rule_names(encoder),
    }


def rule_names(encoder: Any) -> dict[str, list[str]]:
    """Global rule id -> [route config, virtual host, route]; an unnamed route is shown as
    ``#N``, N its index in Envoy's order within the virtual host."""
    out: dict[str, list[str]] = {}
    tables = getattr(encoder, "tables", None)
    for rid, (rt_name, vh_name, i) in getattr(encoder, "rule_index", {}).items():
        route = f"#{i}"
        rt = tables.route_tables.get(rt_name) if tables is not None else None
        vh = next((v for v in rt.virtual_hosts if v.name == vh_name), None) if rt else None
        if vh is not None and i < len(vh.rules):
            rule = vh.rules[i]
            route = rule.name or f"#{rule.envoy_index}"
        out[str(rid)] = [rt_name, vh_name, route]
    return out


class NamesShim:
    """Stands in for the encoder when ``dump`` runs in another process than the agent:
    answers the name look-ups from the ids the agent's admin endpoint reported."""

    def __init__(self, ids: dict[str, dict[str, Any]]) -> None:
        self.ids = ids

    def route_table_name(self, i: int) -> str | None:
        """Route table name of an id."""
        return self.ids.get("route_tables", {}).get(str(i))

    def cluster_name(self, i: int) -> str | None:
        """Cluster name of an id."""
        return self.ids.get("clusters", {}).get(str(i))

    def endpoints(self) -> dict[int, tuple[str, int]]:
        """Endpoint id -> (address, port)."""
        return {int(i): (a[0], int(a[1])) for i, a in self.ids.get("endpoints", {}).items()}


def endpoint_stats(datapath: Any) -> list[dict[str, Any]]:
    """Per endpoint: cluster(s), address, active requests, pool size and idle connections."""
    from bpf.datapath import dump

    doc = dump(datapath.pin_dir, datapath.encoder)
    by_addr: dict[str, list[str]] = {}
    for cname, cluster in datapath.tables.clusters.items():
        for ep in cluster.endpoints:
            by_addr.setdefault(f"{ep.address}:{ep.port}", []).append(cname)
    out = []
    for ep in doc.get("endpoints", []):
        addr = ep.get("addr") or f"id{ep['id']}"
        pool = ep.get("pool", [])
        for cname in by_addr.get(addr, [""]):
            out.append({"cluster": cname, "endpoint": addr, "active": ep.get("active", 0),
                        "pool": len(pool), "idle": sum(1 for s in pool if s == "idle")})
    return out


# The agent's datapath may be bpf's Datapath in this process or the keeper's proxy
# (integration/kept_datapath.py), which answers these itself; one entry point for both.

def names_of(datapath: Any) -> dict[str, dict[str, Any]]:
    """Id -> name tables of whichever datapath the agent runs."""
    fn = getattr(datapath, "names", None)
    return fn() if callable(fn) else names(getattr(datapath, "encoder", None))  # type: ignore[no-any-return]


REQUEST_LABELS = ("route_config", "virtual_host", "route", "cluster", "endpoint",
                  "response_class")


def request_stats_of(datapath: Any) -> dict[tuple[str, ...], int]:
    """Kernel-path responses by REQUEST_LABELS, from the pinned sm_reqstats_v1 with the
    encoder's names (ids whose names are gone are shown as ``rule7``, ``cluster3``...)."""
    from bpf.datapath import request_stats

    rows = request_stats(datapath.pin_dir)
    ids = names_of(datapath) if rows else {}
    rules, clusters = ids.get("rules", {}), ids.get("clusters", {})
    eps = ids.get("endpoints", {})
    totals: dict[tuple[str, ...], int] = {}
    for r in rows:
        rc, vh, route = rules.get(str(r["rule_id"]), ["", "", f"rule{r['rule_id']}"])
        addr = eps.get(str(r["ep_id"]))
        labels = (rc, vh, route, clusters.get(str(r["cluster_id"]), f"cluster{r['cluster_id']}"),
                  f"{addr[0]}:{addr[1]}" if addr else f"endpoint{r['ep_id']}",
                  f"{r['resp_class']}xx" if r["resp_class"] else "other")
        totals[labels] = totals.get(labels, 0) + r["count"]
    return totals


def fill_of(datapath: Any) -> dict[str, tuple[int, int]]:
    """Map fill of whichever datapath the agent runs."""
    fn = getattr(datapath, "map_fill", None)
    if callable(fn):
        return fn()  # type: ignore[no-any-return]
    return map_fill(datapath.pin_dir, getattr(datapath, "encoder", None))


def endpoints_of(datapath: Any) -> list[dict[str, Any]]:
    """Endpoint stats of whichever datapath the agent runs."""
    fn = getattr(datapath, "endpoint_stats", None)
    return fn() if callable(fn) else endpoint_stats(datapath)  # type: ignore[no-any-return]
