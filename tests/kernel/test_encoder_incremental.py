"""The encoder's incremental applies leave the maps saying what a fresh encoder's full apply
of the final tables says.

Random table changes (clusters, endpoints shared between clusters, route tables with header
conditions and weighted actions, services, removals, dangling references) are applied one
by one, half with the TablesDiff given, half with it computed.  At checkpoints the maps are
decoded through ids -> names (ids depend on history) and compared with a fresh encoder's
maps; entries nothing reaches (left over by a removal) fail the test too.

Real pinned maps (no programs are loaded or attached) in a directory of this test under
bpffs, removed afterwards.
"""

from __future__ import annotations

import ctypes as C
import os
import random
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bpf import maps as bpfmaps
from bpf.encoder import MAPS, PSEUDO_SLOTS, Encoder, ip_str
from bpf.limits import limit
from tests.kernel.tables_util import rule, to, weighted
from tests.support.capabilities import BPFFS, missing_capability
from translator.table_builder import diff_tables
from translator.tables import (
    Cluster,
    Endpoint,
    Health,
    LbPolicy,
    PathKind,
    RouteTable,
    Service,
    ServiceKind,
    StringKind,
    Tables,
    ValueMatch,
    VirtualHost,
)

SIZES = {"sm_services_v1": limit("MAX_SERVICES"), "sm_rtables_v1": limit("MAX_ROUTE_TABLES"),
         "sm_domains_v1": limit("MAX_DOMAINS"), "sm_vhosts_v1": limit("MAX_VHOSTS"),
         "sm_rules_v1": limit("MAX_RULES"), "sm_weighted_v1": limit("MAX_WEIGHTED"),
         "sm_hdrslots_v1": 256, "sm_clusters_v1": limit("MAX_CLUSTERS"),
         "sm_hosts_v1": limit("MAX_CLUSTERS") * limit("HOSTS_PER_CLUSTER"),
         "sm_endpoints_v1": limit("MAX_ENDPOINTS")}


def make_maps(pin_dir: Path) -> None:
    """The encoder's maps, empty, pinned under pin_dir (a fresh directory)."""
    if pin_dir.exists():
        shutil.rmtree(pin_dir)
    pin_dir.mkdir()
    for name, (k, v, is_array) in MAPS.items():
        fd = bpfmaps.map_create(bpfmaps.MAP_ARRAY if is_array else bpfmaps.MAP_HASH, name,
                                C.sizeof(k), C.sizeof(v), SIZES[name],
                                0 if is_array else bpfmaps.BPF_F_NO_PREALLOC)
        try:
            bpfmaps.obj_pin(fd, pin_dir / name)
        finally:
            os.close(fd)


@pytest.fixture
def pin_dirs() -> Iterator[tuple[Path, Path]]:
    if missing_capability("kernel") is not None:
        pytest.skip(missing_capability("kernel") or "")
    dirs = (BPFFS / f"sockmesh-test-enc-{os.getpid()}-inc",
            BPFFS / f"sockmesh-test-enc-{os.getpid()}-full")
    try:
        yield dirs
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


# ---- random tables ------------------------------------------------------------------------
EPS = [(f"127.0.0.{i}", 8000 + j) for i in range(1, 5) for j in range(4)]
CLUSTERS = [f"c{i}" for i in range(8)]
RTS = [f"rt{i}" for i in range(4)]
HDRS = ["x-a", "x-b", "x-c", ":method"]
DOMAINS = ["a.test", "b.test", "*.w.test", "*.v.w.test", "p.*", "*"]
SERVICES = [(f"127.10.0.{i}", 80 + i % 2) for i in range(1, 7)]


def rand_cluster(rng: random.Random, name: str) -> Cluster:
    eps = rng.sample(EPS, rng.randint(0, 4))
    return Cluster(name, rng.choice(list(LbPolicy)), tuple(
        Endpoint(a, p, weight=rng.choice((1, 1, 2, 3)),
                 health=rng.choice((Health.HEALTHY, Health.HEALTHY, Health.UNHEALTHY)))
        for a, p in eps))


def rand_rule(rng: random.Random) -> Any:
    headers = tuple(ValueMatch(rng.choice(HDRS), StringKind.EXACT, rng.choice(("1", "2")))
                    for _ in range(rng.choice((0, 0, 1, 2))))
    if rng.random() < 0.3:
        action = weighted(*((c, rng.randint(1, 5)) for c in rng.sample(CLUSTERS, 2)))
    else:
        action = to(rng.choice(CLUSTERS))  # may name a cluster that is not there
    return rule(f"/p{rng.randint(0, 5)}", rng.choice((PathKind.PREFIX, PathKind.EXACT)),
                action, headers=headers)


def rand_rt(rng: random.Random, name: str) -> RouteTable:
    vhosts = tuple(VirtualHost(f"vh{k}", tuple(rng.sample(DOMAINS, rng.randint(1, 3))),
                               tuple(rand_rule(rng) for _ in range(rng.randint(0, 5))))
                   for k in range(rng.randint(1, 3)))
    return RouteTable(name, vhosts, ignore_port_in_host_matching=rng.random() < 0.2)


def rand_service(rng: random.Random, key: tuple[str, int]) -> Service:
    if rng.random() < 0.7:
        return Service(*key, ServiceKind.HTTP, route_table=rng.choice(RTS))
    return Service(*key, ServiceKind.TCP, cluster=rng.choice(CLUSTERS))


def step(rng: random.Random, t: Tables) -> Tables:
    clusters, rts = dict(t.clusters), dict(t.route_tables)
    svcs = {(s.vip, s.port): s for s in t.services}
    for _ in range(rng.randint(1, 3)):
        what = rng.random()
        if what < 0.35:
            name = rng.choice(CLUSTERS)
            if name in clusters and rng.random() < 0.3:
                del clusters[name]
            else:
                clusters[name] = rand_cluster(rng, name)
        elif what < 0.7:
            name = rng.choice(RTS)
            if name in rts and rng.random() < 0.3:
                del rts[name]
            else:
                rts[name] = rand_rt(rng, name)
        else:
            key = rng.choice(SERVICES)
            if key in svcs and rng.random() < 0.3:
                del svcs[key]
            else:
                svcs[key] = rand_service(rng, key)
    return Tables(services=tuple(svcs[k] for k in sorted(svcs)),
                  route_tables=dict(sorted(rts.items())), clusters=dict(sorted(clusters.items())))


# ---- decoding -----------------------------------------------------------------------------
def _zero(v: Any) -> bool:
    return not any(bytes(v))


def decode(enc: Encoder) -> dict[str, Any]:
    """The maps' content with every id replaced by its name; asserts nothing is left over."""
    m = enc.maps
    cl_name = {i: n for n, i in enc.cluster_ids.ids.items()}
    rt_name = {i: n for n, i in enc.rt_ids.ids.items()}
    vh_name = {i: k for k, i in enc.vh_ids.ids.items()}
    ep_addr = {i: k for k, i in enc.ep_ids.ids.items()}
    slot_name = {s: f"pseudo{s}" for s in PSEUDO_SLOTS.values()} | {
        s: n for n, s in enc.hdr_slots.items()}
    per = limit("HOSTS_PER_CLUSTER")

    services = {}
    for k, v in m["sm_services_v1"].items():
        names = rt_name if v.kind == limit("SVC_HTTP") else cl_name
        services[(ip_str(k.vip), socket.ntohs(k.port))] = (int(v.kind), names.get(v.id))

    endpoints = set()
    for i in range(1, enc.ep_ids._next):
        e = m["sm_endpoints_v1"].get(i)
        if i not in ep_addr:
            assert _zero(e), f"endpoint {i} left over"
            continue
        assert (ip_str(e.ip4), socket.ntohs(e.port)) == ep_addr[i]
        endpoints.add(ep_addr[i])

    clusters = {}
    for i in range(1, enc.cluster_ids._next):
        c = m["sm_clusters_v1"].get(i)
        hosts = [m["sm_hosts_v1"].get(i * per + j) for j in range(per)]
        if i not in cl_name:
            assert _zero(c) and all(_zero(h) for h in hosts), f"cluster {i} left over"
            continue
        assert all(_zero(h) for h in hosts[c.n_hosts:]), f"cluster {i}: hosts left over"
        clusters[cl_name[i]] = (c.policy, c.flags, c.n_hosts, c.choices, c.bias,
                                [(ep_addr[h.ep_id], h.weight) for h in hosts[:c.n_hosts]]
                                if not c.flags & limit("CL_USER") else None)

    used_rules: set[int] = set()
    used_weighted: set[int] = set()

    def rule_at(idx: int) -> Any:
        r = m["sm_rules_v1"].get(idx)
        assert r.rule_id == idx + 1
        used_rules.add(idx)
        if r.action == limit("ACT_CLUSTER"):
            action: Any = ("cluster", cl_name[r.action_id])
        elif r.action == limit("ACT_WEIGHTED"):
            ws = [m["sm_weighted_v1"].get(r.action_id + j) for j in range(r.n_weighted)]
            used_weighted.update(range(r.action_id, r.action_id + r.n_weighted))
            action = ("weighted", r.total_weight,
                      [(cl_name[w.cluster_id], w.cum_weight) for w in ws])
        else:
            action = ("other", r.action, r.action_id)
        conds = [(slot_name[c.slot], c.kind, c.hash, c.len, c.invert)
                 for c in r.conds[:r.n_conds]]
        return (r.path_hash, r.path_len, r.path_kind, r.flags, conds, action)

    vhosts_seen: set[int] = set()

    def vhost(vid: int) -> Any:
        if vid == 0:
            return None
        vhosts_seen.add(vid)
        v = m["sm_vhosts_v1"].get(vid)
        if v.n_rules > limit("RULES_PER_VHOST"):
            return (vh_name[vid], "over the limit")
        return (vh_name[vid], [rule_at(v.first_rule + i) for i in range(v.n_rules)])

    domains: dict[int, dict[Any, Any]] = {}
    for k, v in m["sm_domains_v1"].items():
        assert k.rt_id in rt_name, f"domain of route table {k.rt_id} left over"
        domains.setdefault(k.rt_id, {})[(k.kind, k.len, k.hash)] = vhost(v.value)
    route_tables = {}
    for i in range(1, enc.rt_ids._next):
        t = m["sm_rtables_v1"].get(i)
        if i not in rt_name:
            assert _zero(t), f"route table {i} left over"
            continue
        route_tables[rt_name[i]] = (t.flags, list(t.suffix_lens), list(t.prefix_lens),
                                    vhost(t.default_vh), domains.get(i, {}))
    # vhosts only reachable through a domain may exist unreached; each live one is named
    for vid in vh_name:
        vhost(vid)
    for i in range(1, enc.vh_ids._next):
        if i not in vhosts_seen:
            assert _zero(m["sm_vhosts_v1"].get(i)), f"virtual host {i} left over"
    for i in range(1, enc.rule_ranges._next):
        if i not in used_rules:
            assert _zero(m["sm_rules_v1"].get(i)), f"rule {i} left over"
    for i in range(1, enc.weighted_ranges._next):
        if i not in used_weighted:
            assert _zero(m["sm_weighted_v1"].get(i)), f"weighted entry {i} left over"
    hdrslots = {k.value: v.value for k, v in m["sm_hdrslots_v1"].items()}
    assert sorted(slot_name.get(s, s) for s in hdrslots.values()) == sorted(enc.hdr_slots)
    return {"services": services, "endpoints": endpoints, "clusters": clusters,
            "route_tables": route_tables, "reasons": sorted(enc.user_reasons)}


def test_incremental_applies_equal_a_full_apply(pin_dirs: tuple[Path, Path]) -> None:
    inc_dir, full_dir = pin_dirs
    make_maps(inc_dir)
    rng = random.Random(6)
    inc = Encoder(inc_dir)
    tables = Tables()
    checked = 0
    try:
        for i in range(1, 121):
            new = step(rng, tables)
            stats = inc.apply(new, diff_tables(tables, new) if i % 2 else None)
            assert inc.entry_counts()["sm_endpoints_v1"] == len(inc.endpoints())
            assert not (set(stats.added_endpoints) & set(stats.removed_endpoints))
            tables = new
            if i % 20:
                continue
            make_maps(full_dir)
            full = Encoder(full_dir)
            try:
                full.apply(tables)
                assert decode(inc) == decode(full), f"after step {i}"
                checked += 1
            finally:
                full.close()
        # an apply with nothing changed writes nothing
        stats = inc.apply(tables)
        assert (stats.writes, stats.deletes) == (0, 0)
        # and removing everything leaves nothing behind
        inc.apply(Tables())
        empty = decode(inc)
        assert not any(empty[k] for k in ("services", "endpoints", "clusters", "route_tables"))
    finally:
        inc.close()
    assert checked == 6


def test_a_write_that_failed_part_way_is_completed_by_the_next_apply(
        pin_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    inc_dir, full_dir = pin_dirs
    make_maps(inc_dir)
    rng = random.Random(4)
    inc = Encoder(inc_dir)
    tables = Tables()
    try:
        for _ in range(10):
            tables = step(rng, tables)
            inc.apply(tables)
        failed = step(rng, step(rng, tables))
        rules = inc.maps["sm_rules_v1"]
        real_set = rules.set
        calls = 0

        def fail_second(key: Any, value: Any, flags: int = 0) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise bpfmaps.BpfError(12, "update sm_rules_v1: injected")
            real_set(key, value, flags)

        monkeypatch.setattr(rules, "set", fail_second)
        with pytest.raises(bpfmaps.BpfError):
            inc.apply(failed, diff_tables(tables, failed))
        assert calls == 2, "the injected failure did not happen"
        monkeypatch.setattr(rules, "set", real_set)
        final = step(rng, failed)
        inc.apply(final)  # no diff after a failed apply
        make_maps(full_dir)
        full = Encoder(full_dir)
        try:
            full.apply(final)
            assert decode(inc) == decode(full)
        finally:
            full.close()
    finally:
        inc.close()
