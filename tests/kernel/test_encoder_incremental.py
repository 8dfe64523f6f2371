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
from bpf.encoder import MAPS, PSEUDO_SLOTS, Encoder, MapFullError, ip_str
from bpf.limits import limit
from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost, weighted
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


def make_maps(pin_dir: Path, sizes: dict[str, int] | None = None) -> None:
    """The encoder's maps, empty, pinned under pin_dir (a fresh directory); ``sizes``
    overrides max_entries (the encoder reads each hash map's own)."""
    if pin_dir.exists():
        shutil.rmtree(pin_dir)
    pin_dir.mkdir()
    for name, (k, v, is_array) in MAPS.items():
        fd = bpfmaps.map_create(bpfmaps.MAP_ARRAY if is_array else bpfmaps.MAP_HASH, name,
                                C.sizeof(k), C.sizeof(v),
                                (sizes or {}).get(name, SIZES[name]),
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


# ---- hash maps at their limit -------------------------------------------------------------
SMALL = {"sm_rules_v1": 64, "sm_hosts_v1": 8 * limit("HOSTS_PER_CLUSTER")}


def snapshot(enc: Encoder) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every entry of every map, as bytes."""
    return {n: sorted((bytes(k), bytes(v)) for k, v in m.items()) for n, m in enc.maps.items()}


def rt_flags(enc: Encoder, name: str) -> int:
    return int(enc.maps["sm_rtables_v1"].get(enc.rt_ids.ids[name]).flags)


def domain_owners(enc: Encoder) -> list[str]:
    rt_name = {i: n for n, i in enc.rt_ids.ids.items()}
    return sorted(rt_name[k.rt_id] for k in enc.maps["sm_domains_v1"].keys())  # noqa: SIM118


def dom_rt(name: str, n: int) -> RouteTable:
    return RouteTable(name, (VirtualHost("vh", tuple(f"h{i}.{name}.test" for i in range(n)),
                                         (rule("/", action=to("c0")),)),))


def test_domains_over_the_map_limit_go_to_user_space_until_they_fit(
        pin_dirs: tuple[Path, Path]) -> None:
    d, _ = pin_dirs
    make_maps(d, {"sm_domains_v1": 6})
    enc = Encoder(d)
    user = limit("RT_USER")
    try:
        assert enc.capacity["sm_domains_v1"] == 6
        two = Tables(route_tables={"a": dom_rt("a", 4), "b": dom_rt("b", 3)})
        enc.apply(two)  # a fits (4 of 6), b does not (4 + 3)
        assert not rt_flags(enc, "a") & user
        assert rt_flags(enc, "b") & user
        assert domain_owners(enc) == ["a"] * 4
        assert [r for r in enc.user_reasons if "sm_domains_v1" in r] == [
            ("route table b: domains: 3 new entries do not fit in sm_domains_v1 "
             "(4 of max_entries 6 used)")]
        assert enc.entry_counts()["sm_domains_v1"] == 4
        # a shrinks to 2: its 4 old entries are still there while this flush writes, so b
        # fits only in the apply's second pass, after they were deleted
        smaller = Tables(route_tables={"a": dom_rt("a", 2), "b": dom_rt("b", 3)})
        enc.apply(smaller)
        assert not (rt_flags(enc, "a") | rt_flags(enc, "b")) & user
        assert domain_owners(enc) == ["a"] * 2 + ["b"] * 3
        assert not enc.user_reasons
        # growing a past the room left: a goes to user space, b keeps its entries
        enc.apply(Tables(route_tables={"a": dom_rt("a", 4), "b": dom_rt("b", 3)}))
        assert rt_flags(enc, "a") & user and not rt_flags(enc, "b") & user
        assert domain_owners(enc) == ["b"] * 3
    finally:
        enc.close()


def test_header_names_beyond_the_slot_map_leave_their_conditions_to_user_space(
        pin_dirs: tuple[Path, Path]) -> None:
    d, _ = pin_dirs
    make_maps(d, {"sm_hdrslots_v1": 2})
    enc = Encoder(d)
    try:
        rules = tuple(rule(f"/{h}", headers=(ValueMatch(h, StringKind.EXACT, "1"),),
                           action=to("c0")) for h in ("x-a", "x-b", "x-c"))
        enc.apply(Tables(route_tables={"r": RouteTable("r", (VirtualHost("vh", ("*",), rules),))}))
        assert sorted(enc.hdr_slots) == ["x-a", "x-b"]
        flags = [int(enc.maps["sm_rules_v1"].get(i).flags) & limit("RULE_USER")
                 for i in range(1, 4)]
        assert flags == [0, 0, limit("RULE_USER")]
        assert len(list(enc.maps["sm_hdrslots_v1"].keys())) == 2
    finally:
        enc.close()


def test_services_over_the_map_limit_refuse_the_apply_before_any_write(
        pin_dirs: tuple[Path, Path]) -> None:
    d, full_dir = pin_dirs
    # small arrays too: the snapshots read every index
    make_maps(d, {n: 4 if n == "sm_services_v1" else SMALL.get(n, 8)
                  for n, (_, _, arr) in MAPS.items() if arr or n == "sm_services_v1"})
    enc = Encoder(d)
    rts = {"r": dom_rt("r", 1)}
    clusters = {"c0": Cluster("c0", LbPolicy.ROUND_ROBIN, (Endpoint("127.0.0.1", 8000),))}

    def tables(*svcs: int) -> Tables:
        return Tables(services=tuple(Service(f"127.10.0.{i}", 80, ServiceKind.HTTP,
                                             route_table="r") for i in svcs),
                      route_tables=rts, clusters=clusters)

    try:
        good = tables(1, 2, 3)
        enc.apply(good)
        before = snapshot(enc)
        # 5 services in a map of 4; a bigger cluster and route table in the same tables
        bad = Tables(services=tables(1, 2, 3, 4, 5).services,
                     route_tables={"r": dom_rt("r", 3)},
                     clusters={"c0": Cluster("c0", LbPolicy.ROUND_ROBIN,
                                             (Endpoint("127.0.0.2", 8000),))})
        with pytest.raises(MapFullError, match=r"sm_services_v1 holds at most 4 .* 5 services"):
            enc.apply(bad)
        assert snapshot(enc) == before
        assert enc.tables is good
        # 2 out, 2 in: 5 at once while the flush writes before it deletes
        with pytest.raises(MapFullError, match="needs 5 at once"):
            enc.apply(tables(1, 4, 5))
        assert snapshot(enc) == before
        # the encoder still holds the last good tables: a fitting change is exact
        final = tables(1, 2, 4)
        enc.apply(final)
        make_maps(full_dir)
        full = Encoder(full_dir)
        try:
            full.apply(final)
            assert decode(enc) == decode(full)
        finally:
            full.close()
    finally:
        enc.close()


def test_a_refused_apply_keeps_the_datapath_serving_the_last_tables(
        mesh: Mesh, client: Client, backends: Any) -> None:
    (b1,) = make_backends(backends, "b1")
    vip, port = "127.10.0.9", 8080
    good = http_tables(vip, port, [vhost("svc", ["*"], [rule("/", action=to("c1"))])],
                       [cluster("c1", [b1])])
    mesh.apply(good)  # and wait for warm pools: a cold endpoint is served by user space
    cap = mesh.dp.encoder.capacity["sm_services_v1"]
    many = tuple(Service(f"127.11.{i >> 8}.{i & 255}", 80, ServiceKind.TCP, cluster="c1")
                 for i in range(cap))  # one more than fits, with the first service
    before = mesh.dp.counters()
    with pytest.raises(MapFullError, match="sm_services_v1"):
        mesh.dp.apply(Tables(services=good.services + many, route_tables=good.route_tables,
                             clusters=good.clusters))
    assert mesh.dp.splice.tables is good and mesh.dp.tables is good
    client.connect("a", vip, port)
    assert client.request("a", http("GET", "/", "svc.test"))["headers"]["x-backend"] == "b1"
    after = mesh.dp.counters()
    assert after["fast"] > before["fast"], "not served by the kernel"
