"""Translator tables -> the datapath's maps, written as diffs.

Ids are stable across applies (a route table, virtual host, cluster or endpoint keeps its id
while it exists; id 0 means none).  An apply re-encodes only the clusters, route tables and
services a TablesDiff names, writes only entries whose bytes changed, then deletes what
disappeared.  Order is make-before-break: endpoints, clusters and hosts first, then rules,
virtual hosts, domains and route tables, services last; removals after, in reverse.  A freed
id is reused only from the apply after the next (quarantine), a freed rule range from the
next apply.

What the kernel cannot evaluate is encoded so that it can never give a wrong answer
(route.h): a rule with a condition the kernel cannot check is flagged SM_RULE_USER (its
checkable conditions still filter), an action the kernel does not perform is SM_ACT_USER,
a route table whose host matching exceeds the kernel's limits is SM_RT_USER, and a cluster
over a limit is SM_CL_USER.  ``self.user_reasons`` lists each such decision.

Hash maps are checked against their kernel ``max_entries`` before anything is written: a
route table whose domains do not fit in sm_domains_v1 is SM_RT_USER (a reason, retried
each apply until they fit); header names beyond sm_hdrslots_v1 leave their conditions to
user space.  Services cannot degrade (a VIP without an entry is not intercepted at all):
tables whose services do not fit are refused whole (MapFullError) before any write or any
change to the encoder's state, so the maps keep saying the last applied tables.
"""

from __future__ import annotations

import ctypes as C
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf import layout as L
from bpf import lb
from bpf.hashing import PARSER_HEADERS, fnv1a64
from bpf.limits import limit
from bpf.maps import PinnedMap
from translator.envoy_request import ADJUSTED
from translator.table_builder import TablesDiff, diff_tables
from translator.tables import (
    ActionKind,
    Cluster,
    LbPolicy,
    PathKind,
    RouteTable,
    Rule,
    ServiceKind,
    StringKind,
    Tables,
    ValueMatch,
)

U32 = C.c_uint32
U64 = C.c_uint64


class MapFullError(ValueError):
    """An apply was refused before any write: its entries do not fit in a map."""


# map name -> (key type, value type); array maps are marked
MAPS: dict[str, tuple[Any, Any, bool]] = {
    "sm_services_v1": (L.SvcKey, L.Service, False),
    "sm_rtables_v1": (U32, L.RouteTable, True),
    "sm_domains_v1": (L.DomKey, U32, False),
    "sm_vhosts_v1": (U32, L.VHost, True),
    "sm_rules_v1": (U32, L.Rule, True),
    "sm_weighted_v1": (U32, L.Weighted, True),
    "sm_hdrslots_v1": (U64, U32, False),
    "sm_clusters_v1": (U32, L.Cluster, True),
    "sm_hosts_v1": (U32, L.Host, True),
    "sm_endpoints_v1": (U32, L.Endpoint, True),
}
# write order (make before break); deletions run in reverse
ORDER = ("sm_endpoints_v1", "sm_hosts_v1", "sm_clusters_v1", "sm_hdrslots_v1",
         "sm_weighted_v1", "sm_rules_v1", "sm_vhosts_v1", "sm_domains_v1", "sm_rtables_v1",
         "sm_services_v1")

# names whose kernel slot holds exactly what Envoy's router matches; "host" gives the Host
# value like ":authority" (measured on Envoy 1.40)
PSEUDO_SLOTS = {":method": limit("SLOT_METHOD"), ":authority": limit("SLOT_AUTHORITY"),
                "host": limit("SLOT_AUTHORITY"), ":path": limit("SLOT_PATH"),
                ":scheme": limit("SLOT_SCHEME")}
# real header names get the slots after the pseudo-headers' (sockmesh.h)
FIRST_HDR_SLOT = max(PSEUDO_SLOTS.values()) + 1
# an exact path length over SM_PATH_MAX: route.h's sm_path_matches never accepts it
NEVER_PATH_LEN = 0xFFFF
LB_POLICY = {LbPolicy.ROUND_ROBIN: limit("LB_ROUND_ROBIN"), LbPolicy.RANDOM: limit("LB_RANDOM"),
             LbPolicy.LEAST_REQUEST: limit("LB_LEAST_REQUEST")}


_REGEX_META = set(".[]{}()*+?|^$\\")


def regex_literal_prefix(pattern: str) -> str:
    """The literal text every full match of ``pattern`` starts with ("" if unsure).

    "/re/[0-9]+" -> "/re/"; a literal followed by a quantifier loses its last character
    ("/ab?c" -> "/a"); any alternation makes the prefix unknown.
    """
    if "|" in pattern:
        return ""
    out: list[str] = []
    for ch in pattern:
        if ch in _REGEX_META:
            if ch in "*?{" and out:
                out.pop()
            break
        out.append(ch)
    return "".join(out)


def ip_net(addr: str) -> int:
    """Dotted IPv4 -> the u32 the kernel sees for a network-order address."""
    return int(struct.unpack("=I", socket.inet_aton(addr))[0])


def ip_str(v: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", v))


class IdAllocator:
    """Stable small ids for names; 0 is never handed out.  A released id is quarantined:
    reusable only from the second ``tick()`` after its release (the apply after the next),
    because in-flight requests and pooled connections may still refer to it meanwhile."""

    def __init__(self, limit_: int, fresh_first: bool = False) -> None:
        """``fresh_first``: hand out never-used ids before released ones (endpoint ids:
        a reused one must first leave the pools, see datapath.PoolFeed)."""
        self.limit = limit_
        self.fresh_first = fresh_first
        self.ids: dict[Any, int] = {}
        self._free: list[int] = []
        self._quarantine: list[int] = []
        self._released: list[int] = []
        self._next = 1

    def get(self, name: Any) -> int | None:
        if name in self.ids:
            return self.ids[name]
        if self._free and not (self.fresh_first and self.fresh_left()):
            i = self._free.pop()
        elif self.fresh_left():
            i = self._next
            self._next += 1
        else:
            return None
        self.ids[name] = i
        return i

    def fresh_left(self) -> bool:
        """Whether ids never handed out remain."""
        return self._next < self.limit

    def available(self) -> bool:
        """Whether ``get`` of a new name would give an id now."""
        return bool(self._free) or self._next < self.limit

    def release(self, name: Any) -> None:
        i = self.ids.pop(name, None)
        if i is not None:
            self._released.append(i)

    def tick(self) -> None:
        """A new apply starts."""
        self._free.extend(self._quarantine)
        self._quarantine, self._released = self._released, []

    def keep_only(self, names: set[Any]) -> None:
        """Release every name not in ``names``, then ``tick()`` (a whole-set apply)."""
        for name in [n for n in self.ids if n not in names]:
            self.release(name)
        self.tick()


class RangeAllocator:
    """Contiguous ranges of a global array, one per owner; a range keeps its place while
    its length is unchanged.  Freed ranges are reused only by a later apply (``tick()``)."""

    def __init__(self, size: int, first: int = 1) -> None:
        self.size = size
        self.ranges: dict[Any, tuple[int, int]] = {}
        self._free: list[tuple[int, int]] = []
        self._pending_free: list[tuple[int, int]] = []
        self._next = first

    def get(self, owner: Any, n: int) -> int | None:
        cur = self.ranges.get(owner)
        if cur is not None and cur[1] == n:
            return cur[0]
        self.release(owner)
        for i, (start, length) in enumerate(self._free):
            if length >= n:
                self._free[i] = (start + n, length - n)
                self.ranges[owner] = (start, n)
                return start
        if self._next + n > self.size:
            return None
        start = self._next
        self._next += n
        self.ranges[owner] = (start, n)
        return start

    def release(self, owner: Any) -> None:
        cur = self.ranges.pop(owner, None)
        if cur is not None:
            self._pending_free.append(cur)

    def tick(self) -> None:
        """A new apply starts: ranges freed by earlier applies become reusable."""
        self._free = [r for r in self._free if r[1] > 0] + self._pending_free
        self._pending_free = []

    def finish(self, live: set[Any]) -> None:
        """Release every owner not in ``live``, then ``tick()`` (a whole-set apply)."""
        for owner in [o for o in self.ranges if o not in live]:
            self.release(owner)
        self.tick()


@dataclass
class ApplyStats:
    writes: int = 0
    deletes: int = 0
    per_map: dict[str, int] = field(default_factory=dict)
    # endpoint id -> address: first named by this apply / no longer named by any cluster
    added_endpoints: dict[int, tuple[str, int]] = field(default_factory=dict)
    removed_endpoints: dict[int, tuple[str, int]] = field(default_factory=dict)


# map name -> key bytes -> value bytes
Entries = dict[str, dict[bytes, bytes]]


@dataclass
class _Owned:
    """The map entries one cluster or route table wrote, and what it holds or names."""

    entries: Entries = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    refs: frozenset[Any] = frozenset()  # endpoints (cluster) / header names (route table)
    uses: frozenset[str] = frozenset()  # clusters its rules name (route table)
    vhosts: frozenset[Any] = frozenset()  # its virtual host keys (ids and rule ranges)
    weighted: frozenset[Any] = frozenset()  # its weighted_clusters keys (ranges)
    rules: dict[int, tuple[str, str, int]] = field(default_factory=dict)  # rule_index part
    retry: bool = False  # an id or range was not available: encode it again next apply
    hdr_short: bool = False  # a header name found no slot: encode again once one is free


class _Batch:
    """The writes and deletes of one apply, flushed map by map (make before break)."""

    def __init__(self) -> None:
        self.writes: Entries = {n: {} for n in MAPS}
        self.deletes: dict[str, set[bytes]] = {n: set() for n in MAPS}
        self.added: dict[int, tuple[str, int]] = {}
        self.removed: dict[int, tuple[str, int]] = {}

    def replace(self, old: Entries, new: Entries) -> None:
        """Write what differs from ``old`` in ``new``; delete what ``new`` no longer has."""
        for name, kv in new.items():
            cur = old.get(name, {})
            w = self.writes[name]
            for kb, vb in kv.items():
                if cur.get(kb) != vb:
                    w[kb] = vb
        for name, kv in old.items():
            keep = new.get(name, {})
            self.deletes[name].update(kb for kb in kv if kb not in keep)

    def absorb(self, older: _Batch) -> None:
        """Take in what a failed flush of ``older`` may have left undone; this batch's
        writes and deletes win."""
        for name in MAPS:
            w, d = self.writes[name], self.deletes[name]
            self.writes[name] = {k: v for k, v in older.writes[name].items()
                                 if k not in d} | w
            d.update(k for k in older.deletes[name] if k not in w)
        self.added = older.added | self.added
        self.removed = {i: a for i, a in older.removed.items() if i not in self.added} \
            | self.removed


class Encoder:
    """Writes Tables into the pinned maps under ``pin_dir`` as diffs.

    Each cluster and route table owns its map entries (``_Owned``); an apply re-encodes
    only the ones a TablesDiff names (plus route tables naming a cluster that gained or
    lost its id, and services naming a route table or cluster that did), and writes only
    their changed entries.  Endpoints are shared by clusters and header slots by route
    tables: both are reference-counted."""

    def __init__(self, pin_dir: Path) -> None:
        self.pin_dir = Path(pin_dir)
        self.maps = {n: PinnedMap(self.pin_dir / n, k, v) for n, (k, v, _) in MAPS.items()}
        # hash map -> max_entries: what may be in the kernel map at once (the flush writes
        # everything before it deletes, so the old and the new entries together)
        self.capacity = {n: self.maps[n].max_entries for n, (_, _, arr) in MAPS.items()
                         if not arr}
        self._peak: dict[str, int] = {}  # hash map -> entries it may hold during this flush
        self._short: set[str] = set()  # hash maps an owner found no room in (this flush)
        self.rt_ids = IdAllocator(limit("MAX_ROUTE_TABLES"))
        self.vh_ids = IdAllocator(limit("MAX_VHOSTS"))
        self.cluster_ids = IdAllocator(limit("MAX_CLUSTERS"))
        self.ep_ids = IdAllocator(limit("MAX_ENDPOINTS"), fresh_first=True)
        self.rule_ranges = RangeAllocator(limit("MAX_RULES"))
        self.weighted_ranges = RangeAllocator(limit("MAX_WEIGHTED"))
        # header name -> id; slot = FIRST_HDR_SLOT + id - 1.  Names no rule uses any more
        # give their slot back (quarantined like every other id)
        self.hdr_ids = IdAllocator(min(limit("HDR_SLOTS") - FIRST_HDR_SLOT,
                                       self.capacity["sm_hdrslots_v1"]) + 1)
        self._hdr_used: set[str] = set()  # header names of the route table being encoded
        self._retry_now = False  # the owner being encoded lacked an id or a range
        self._hdr_short = False  # ... or a header slot
        self._clusters: dict[str, _Owned] = {}
        self._rts: dict[str, _Owned] = {}
        self._svcs: dict[bytes, bytes] = {}  # sm_services_v1 as written
        self._ep_refs: dict[tuple[str, int], int] = {}  # endpoint -> clusters holding it
        self._hdr_refs: dict[str, int] = {}  # header name -> route tables using it
        self._cl_users: dict[str, set[str]] = {}  # cluster -> route tables naming it
        self._retry: dict[str, set[str]] = {"cl": set(), "rt": set(), "hdr": set()}
        self._unflushed: _Batch | None = None  # a batch whose flush failed part-way
        # reverse maps for dump and tests: global rule index + 1 -> (table, vhost, rule index)
        self.rule_index: dict[int, tuple[str, str, int]] = {}
        self.tables = Tables()

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    # ---- public -----------------------------------------------------------------------
    def endpoints(self) -> dict[int, tuple[str, int]]:
        """Endpoint id -> (address, port) of everything written."""
        return {i: k for k, i in self.ep_ids.ids.items()}

    def cluster_name(self, cid: int) -> str | None:
        return next((n for n, i in self.cluster_ids.ids.items() if i == cid), None)

    def route_table_name(self, rt_id: int) -> str | None:
        return next((n for n, i in self.rt_ids.ids.items() if i == rt_id), None)

    @property
    def user_reasons(self) -> list[str]:
        """Why parts of the tables are routed in user space (limits, unsupported features)."""
        return ([r for n in sorted(self._clusters) for r in self._clusters[n].reasons]
                + [r for n in sorted(self._rts) for r in self._rts[n].reasons])

    def entry_counts(self) -> dict[str, int]:
        """Map name -> entries the encoder has written there."""
        counts = dict.fromkeys(MAPS, 0)
        for owned in (*self._clusters.values(), *self._rts.values()):
            for name, kv in owned.entries.items():
                counts[name] += len(kv)
        counts["sm_endpoints_v1"] = len(self._ep_refs)
        counts["sm_hdrslots_v1"] = len(self._hdr_refs)
        counts["sm_services_v1"] = len(self._svcs)
        return counts

    def apply(self, tables: Tables, diff: TablesDiff | None = None,
              before_write: Callable[[dict[int, tuple[str, int]]], None] | None = None
              ) -> ApplyStats:
        """Make the maps say ``tables``, given ``diff`` (what changed since the last apply;
        None: computed here).  Returns how many entries were written/deleted and which
        endpoints came and went.

        ``before_write(new_endpoints)`` runs once ids are assigned and before any map is
        written, with the endpoints no map named before (id -> address).

        A route table left to user space for lack of room in a hash map gets a second pass
        once this flush has deleted entries there (they were still in the map while it
        wrote; the second pass ticks no id, so nothing freed here is reused early)."""
        self._check_services(tables)
        if diff is None:
            diff = diff_tables(self.tables, tables)
        for ids in (self.rt_ids, self.vh_ids, self.cluster_ids, self.ep_ids, self.hdr_ids):
            ids.tick()
        self.rule_ranges.tick()
        self.weighted_ranges.tick()
        stats, freed = self._apply_once(tables, diff, before_write)
        if freed:
            more, _ = self._apply_once(tables, TablesDiff(), before_write)
            stats.writes += more.writes
            stats.deletes += more.deletes
            for name, n in more.per_map.items():
                stats.per_map[name] = stats.per_map.get(name, 0) + n
            stats.added_endpoints |= more.added_endpoints
            stats.removed_endpoints |= more.removed_endpoints
        return stats

    def _apply_once(self, tables: Tables, diff: TablesDiff,
                    before_write: Callable[[dict[int, tuple[str, int]]], None] | None
                    ) -> tuple[ApplyStats, bool]:
        """Encode and flush ``diff``; True too when an owner lacked room in a map this
        flush deleted entries from."""
        self._peak = self._start_peak()
        self._short = set()
        batch = _Batch()
        changed_cl = self._apply_clusters(tables, diff, batch)
        changed_rt = self._apply_route_tables(tables, diff, changed_cl, batch)
        self._apply_services(tables, diff, changed_cl, changed_rt, batch)
        if self._unflushed is not None:
            batch.absorb(self._unflushed)
        if before_write is not None:
            before_write(dict(batch.added))
        self._unflushed = batch  # until every write and delete is done
        stats = self._flush(batch)
        self._unflushed = None
        self.tables = tables
        return stats, any(batch.deletes[n] - batch.writes[n].keys() for n in self._short)

    # ---- room in hash maps -------------------------------------------------------------
    def _stale(self, name: str) -> set[bytes]:
        """Keys of ``name`` a failed flush may have left in the kernel map."""
        return self._unflushed.deletes[name] if self._unflushed is not None else set()

    def _check_services(self, tables: Tables) -> None:
        """Refuse ``tables`` (before anything changes) when their services do not fit."""
        cap = self.capacity["sm_services_v1"]
        if len(tables.services) + len(self._svcs) <= cap:  # fits even with no overlap
            return
        new = {bytes(L.SvcKey(vip=ip_net(s.vip), port=socket.htons(s.port)))
               for s in tables.services}
        peak = len(new | self._svcs.keys() | self._stale("sm_services_v1"))
        if peak > cap:
            raise MapFullError(
                f"sm_services_v1 holds at most {cap} entries (max_entries); these tables "
                f"have {len(new)} services and the apply needs {peak} at once (new ones are "
                f"written before removed ones are deleted): refused, nothing written")

    def _start_peak(self) -> dict[str, int]:
        """Entries each owner-written hash map holds before this apply writes."""
        peak = {n: len(self._stale(n)) for n in self.capacity}
        for owned in self._rts.values():
            for name, kv in owned.entries.items():
                if name in peak:
                    peak[name] += len(kv)
        return peak

    def _room(self, old: _Owned | None, new: _Owned) -> str | None:
        """Count ``new``'s keys that ``old`` did not have into the flush's peak; or, when
        they do not fit, count nothing and say which map is short."""
        added = {}
        for name, kv in new.entries.items():
            if name in self._peak:
                had = old.entries.get(name, {}) if old is not None else {}
                added[name] = sum(1 for k in kv if k not in had)
                if self._peak[name] + added[name] > self.capacity[name]:
                    self._short.add(name)
                    return (f"{added[name]} new entries do not fit in {name} "
                            f"({self._peak[name]} of max_entries {self.capacity[name]} used)")
        for name, n in added.items():
            self._peak[name] += n
        return None

    def _domains_to_user(self, name: str, new: _Owned, why: str) -> None:
        """``new`` without its domains: the route table goes to user space (SM_RT_USER)."""
        new.entries["sm_domains_v1"] = {}
        for kb, vb in new.entries["sm_rtables_v1"].items():
            t = L.RouteTable.from_buffer_copy(vb)
            t.flags |= limit("RT_USER")
            new.entries["sm_rtables_v1"][kb] = bytes(t)
        new.reasons.append(f"route table {name}: domains: {why}")
        new.retry = True

    # ---- owners -----------------------------------------------------------------------
    def _apply_clusters(self, tables: Tables, diff: TablesDiff, batch: _Batch) -> set[str]:
        """Re-encode the clusters ``diff`` names; returns those that gained or lost an id."""
        changed: set[str] = set()
        drops: list[frozenset[Any]] = []
        for name in diff.clusters.removed:
            old = self._clusters.pop(name, None)
            self._retry["cl"].discard(name)
            if old is not None:
                batch.replace(old.entries, {})
                drops.append(old.refs)
            if name in self.cluster_ids.ids:
                self.cluster_ids.release(name)
                changed.add(name)
        todo = set(diff.clusters.upserted) | (self._retry["cl"] & set(tables.clusters))
        for name in sorted(todo):
            had_id = name in self.cluster_ids.ids
            new = self._encode_cluster(name, tables.clusters[name], batch)
            old = self._clusters.get(name)
            if old is not None:
                batch.replace(old.entries, new.entries)
                drops.append(old.refs)
            else:
                batch.replace({}, new.entries)
            self._clusters[name] = new
            (self._retry["cl"].add if new.retry else self._retry["cl"].discard)(name)
            if had_id != (name in self.cluster_ids.ids):
                changed.add(name)
        for refs in drops:  # after every hold: an endpoint moving between clusters stays
            for key in refs:
                self._ep_drop(key, batch)
        return changed

    def _ep_hold(self, key: tuple[str, int], batch: _Batch) -> int | None:
        n = self._ep_refs.get(key, 0)
        if n == 0:
            eid = self.ep_ids.get(key)
            if eid is None:
                return None
            batch.writes["sm_endpoints_v1"][bytes(U32(eid))] = bytes(
                L.Endpoint(ip4=ip_net(key[0]), port=socket.htons(key[1])))
            batch.added[eid] = key
        self._ep_refs[key] = n + 1
        return self.ep_ids.ids[key]

    def _ep_drop(self, key: tuple[str, int], batch: _Batch) -> None:
        n = self._ep_refs[key] - 1
        if n:
            self._ep_refs[key] = n
            return
        del self._ep_refs[key]
        eid = self.ep_ids.ids[key]
        self.ep_ids.release(key)
        batch.deletes["sm_endpoints_v1"].add(bytes(U32(eid)))
        batch.removed[eid] = key

    def _apply_route_tables(self, tables: Tables, diff: TablesDiff, changed_cl: set[str],
                            batch: _Batch) -> set[str]:
        """Re-encode the route tables ``diff`` names and those naming a cluster in
        ``changed_cl``; returns the route tables that gained or lost an id."""
        changed: set[str] = set()
        drops: list[frozenset[Any]] = []
        removed = set(diff.route_tables.removed)
        for name in removed:
            old = self._rts.pop(name, None)
            self._retry["rt"].discard(name)
            self._retry["hdr"].discard(name)
            if old is not None:
                self._forget_rt(name, old, _Owned(), batch)
                drops.append(old.refs)
            if name in self.rt_ids.ids:
                self.rt_ids.release(name)
                changed.add(name)
        todo = set(diff.route_tables.upserted) | self._retry["rt"]
        if self._retry["hdr"] and self.hdr_ids.available():
            todo |= self._retry["hdr"]
        for c in changed_cl:
            todo |= self._cl_users.get(c, set())
        for name in sorted(todo - removed):
            rt = tables.route_tables.get(name)
            if rt is None:
                continue
            had_id = name in self.rt_ids.ids
            new = self._encode_route_table(name, rt, tables)
            for h in new.refs:
                self._hdr_hold(h, batch)
            old = self._rts.get(name)
            short = self._room(old, new)
            if short is not None:
                self._domains_to_user(name, new, short)
            if old is not None:
                drops.append(old.refs)
            self._forget_rt(name, old or _Owned(), new, batch)
            self._rts[name] = new
            self.rule_index.update(new.rules)
            for c in new.uses:
                self._cl_users.setdefault(c, set()).add(name)
            (self._retry["rt"].add if new.retry else self._retry["rt"].discard)(name)
            (self._retry["hdr"].add if new.hdr_short else self._retry["hdr"].discard)(name)
            if had_id != (name in self.rt_ids.ids):
                changed.add(name)
        for refs in drops:
            for h in refs:
                self._hdr_drop(h, batch)
        return changed

    def _forget_rt(self, name: str, old: _Owned, new: _Owned, batch: _Batch) -> None:
        """Replace ``old``'s entries by ``new``'s; release what only ``old`` held."""
        batch.replace(old.entries, new.entries)
        for vkey in old.vhosts - new.vhosts:
            self.vh_ids.release(vkey)
            self.rule_ranges.release(vkey)
        for wkey in old.weighted - new.weighted:
            self.weighted_ranges.release(wkey)
        for rid in old.rules:
            if rid not in new.rules:
                self.rule_index.pop(rid, None)
        for c in old.uses - new.uses:
            users = self._cl_users.get(c)
            if users is not None:
                users.discard(name)
                if not users:
                    del self._cl_users[c]

    def _hdr_hold(self, name: str, batch: _Batch) -> None:
        n = self._hdr_refs.get(name, 0)
        if n == 0:
            batch.writes["sm_hdrslots_v1"][bytes(U64(fnv1a64(name.encode())))] = bytes(
                U32(FIRST_HDR_SLOT + self.hdr_ids.ids[name] - 1))
        self._hdr_refs[name] = n + 1

    def _hdr_drop(self, name: str, batch: _Batch) -> None:
        n = self._hdr_refs[name] - 1
        if n:
            self._hdr_refs[name] = n
            return
        del self._hdr_refs[name]
        self.hdr_ids.release(name)
        batch.deletes["sm_hdrslots_v1"].add(bytes(U64(fnv1a64(name.encode()))))

    def _apply_services(self, tables: Tables, diff: TablesDiff, changed_cl: set[str],
                        changed_rt: set[str], batch: _Batch) -> None:
        for vip, port in diff.services.removed:
            kb = bytes(L.SvcKey(vip=ip_net(vip), port=socket.htons(port)))
            if self._svcs.pop(kb, None) is not None:
                batch.deletes["sm_services_v1"].add(kb)
        only = set(diff.services.upserted)
        if changed_cl or changed_rt:
            only |= {(s.vip, s.port) for s in tables.services
                     if s.route_table in changed_rt or s.cluster in changed_cl}
        if not only:
            return
        desired: Entries = {"sm_services_v1": {}}
        self._encode_services(tables, desired, only)
        for kb, vb in desired["sm_services_v1"].items():
            if self._svcs.get(kb) != vb:
                batch.writes["sm_services_v1"][kb] = vb
                self._svcs[kb] = vb

    # ---- encoding ---------------------------------------------------------------------
    @staticmethod
    def _put(desired: dict[str, dict[bytes, bytes]], name: str, key: Any, value: Any) -> None:
        ktype = MAPS[name][0]
        k = key if isinstance(key, C.Structure) else ktype(key)
        desired[name][bytes(k)] = bytes(value if isinstance(value, C.Structure)
                                        else MAPS[name][1](value))

    def _encode_cluster(self, name: str, cluster: Cluster, batch: _Batch) -> _Owned:
        """One cluster's entries; holds its endpoints (written once, shared)."""
        own = _Owned()
        cid = self.cluster_ids.get(name)
        if cid is None:
            own.reasons.append(f"cluster {name}: more than SM_MAX_CLUSTERS")
            own.retry = True
            return own
        max_hosts = limit("HOSTS_PER_CLUSTER")
        desired: Entries = {"sm_hosts_v1": {}, "sm_clusters_v1": {}}
        p = lb.plan(cluster, max_hosts, limit("LR_CHOICES_MAX"))
        c = L.Cluster(policy=LB_POLICY[cluster.lb_policy], n_hosts=len(p.hosts),
                      choices=max(1, cluster.choice_count),
                      bias=1 if cluster.active_request_bias else 0)
        c.flags = (limit("CL_USABLE") if p.hosts else 0) | (
            limit("CL_EQUAL_WEIGHTS") if p.equal else 0)
        if p.user:
            c.flags |= limit("CL_USER")
            own.reasons.append(f"cluster {name}: {p.user}")
        held: set[tuple[str, int]] = set()
        for ep in cluster.endpoints:
            key = (ep.address, ep.port)
            if key in held:
                continue
            if self._ep_hold(key, batch) is None:
                c.flags |= limit("CL_USER")
                own.reasons.append(f"cluster {name}: more than SM_MAX_ENDPOINTS")
                own.retry = True
                continue
            held.add(key)
        if not c.flags & limit("CL_USER"):
            for i, h in enumerate(p.hosts):
                eid = self.ep_ids.ids[(h.address, h.port)]
                self._put(desired, "sm_hosts_v1", cid * max_hosts + i,
                          L.Host(ep_id=eid, weight=h.weight))
        self._put(desired, "sm_clusters_v1", cid, c)
        own.entries, own.refs = desired, frozenset(held)
        return own

    def _hdr_slot(self, name: str) -> int | None:
        """The kernel slot holding what Envoy's router sees for header ``name``, or None
        when the raw request bytes cannot give it: other pseudo-headers, headers Envoy
        adds, removes or rewrites before routing (envoy_request.ADJUSTED), and headers
        the kernel's parser keeps for itself (hashing.PARSER_HEADERS)."""
        if name in PSEUDO_SLOTS:
            return PSEUDO_SLOTS[name]
        if name.startswith(":") or name in ADJUSTED or name in PARSER_HEADERS:
            return None
        i = self.hdr_ids.get(name)
        if i is None:
            self._hdr_short = True
            return None
        self._hdr_used.add(name)
        return FIRST_HDR_SLOT + i - 1

    @property
    def hdr_slots(self) -> dict[str, int]:
        """Header name -> kernel slot, for the names the current rules use."""
        return {n: FIRST_HDR_SLOT + self.hdr_ids.ids[n] - 1 for n in self._hdr_refs}

    def _cond(self, m: ValueMatch) -> L.Cond | None:
        """The kernel form of one header condition, or None if only user space can check it."""
        slot = self._hdr_slot(m.name)
        if slot is None:
            return None
        if m.kind is StringKind.PRESENT:
            kind = limit("COND_PRESENT") if m.present else limit("COND_ABSENT")
            return L.Cond(slot=slot, kind=kind, invert=int(m.invert))
        if m.kind is StringKind.EXACT and not m.ignore_case and not m.missing_as_empty:
            v = m.value.encode()
            if len(v) > 0xFFFF:
                return None
            return L.Cond(hash=fnv1a64(v), len=len(v), slot=slot, kind=limit("COND_EXACT"),
                          invert=int(m.invert))
        return None

    def _encode_rule(self, rt: RouteTable, rule: Rule, idx: int, tables: Tables,
                     wkey: Any, desired: dict[str, dict[bytes, bytes]]) -> L.Rule:
        r = L.Rule(rule_id=idx + 1)
        user = False
        pm = rule.path
        value = pm.value.encode()
        if rule.runtime_fraction == 0.0:
            # a 0% runtime_fraction never matches (translator.model): no path is this long
            r.path_kind, r.path_len = limit("PATH_EXACT"), NEVER_PATH_LEN
        elif pm.kind is PathKind.PREFIX and not value:
            r.path_kind = limit("PATH_ANY")
        elif pm.kind in (PathKind.PREFIX, PathKind.EXACT, PathKind.PATH_SEPARATED_PREFIX):
            r.path_kind = {PathKind.PREFIX: limit("PATH_PREFIX"),
                           PathKind.EXACT: limit("PATH_EXACT"),
                           PathKind.PATH_SEPARATED_PREFIX: limit("PATH_SEP_PREFIX")}[pm.kind]
            if not pm.case_sensitive:
                value = value.lower()
                r.flags |= limit("RULE_NOCASE")
            r.path_len = min(len(value), 0xFFFF)  # longer than SM_PATH_MAX: never in kernel
            r.path_hash = fnv1a64(value)
        elif pm.kind is PathKind.CONNECT:
            # CONNECT requests never reach the kernel's parser (authority-form target)
            r.path_kind, r.path_len = limit("PATH_EXACT"), NEVER_PATH_LEN
        else:  # regex: the kernel filters on its literal prefix, user space decides
            lit = regex_literal_prefix(pm.value).encode()
            if pm.case_sensitive and lit:
                r.path_kind, r.path_len, r.path_hash = limit("PATH_PREFIX"), len(lit), fnv1a64(lit)
            else:
                r.path_kind = limit("PATH_ANY")
            user = True
        conds: list[L.Cond] = []
        for m in rule.headers:
            c = self._cond(m)
            if c is None or len(conds) >= limit("CONDS_PER_RULE"):
                user = True
            else:
                conds.append(c)
        r.n_conds = len(conds)
        for i, c in enumerate(conds):
            r.conds[i] = c
        if rule.query:
            user = True
        if user:
            r.flags |= limit("RULE_USER")
        a = rule.action
        r.action = limit("ACT_USER")
        if rule.needs_slow_path:
            pass
        elif a.kind is ActionKind.CLUSTER and a.cluster_header is None and a.cluster:
            cid = self.cluster_ids.ids.get(a.cluster)
            if cid is not None:
                r.action, r.action_id = limit("ACT_CLUSTER"), cid
        elif a.kind is ActionKind.WEIGHTED_CLUSTERS:
            ids = [self.cluster_ids.ids.get(w.cluster) for w in a.weighted]
            total = sum(w.weight for w in a.weighted)
            if (all(i is not None for i in ids) and 0 < total < 2**32
                    and len(ids) <= limit("WEIGHTED_PER_RULE")):
                start = self.weighted_ranges.get(wkey, len(ids))
                self._retry_now |= start is None
                if start is not None:
                    cum = 0
                    for j, (w, cid) in enumerate(zip(a.weighted, ids, strict=True)):
                        cum += w.weight
                        self._put(desired, "sm_weighted_v1", start + j,
                                  L.Weighted(cluster_id=cid or 0, cum_weight=cum))
                    r.action, r.action_id = limit("ACT_WEIGHTED"), start
                    r.n_weighted, r.total_weight = len(ids), total
        return r

    def _encode_route_table(self, name: str, rt: RouteTable, tables: Tables) -> _Owned:
        """One route table's entries (its vhosts, rules, weighted entries, domains)."""
        own = _Owned()
        rt_id = self.rt_ids.get(name)
        if rt_id is None:
            own.reasons.append(f"route table {name}: more than SM_MAX_ROUTE_TABLES")
            own.retry = True
            return own
        host_max = limit("HOST_MAX")
        desired: Entries = {n: {} for n in ("sm_weighted_v1", "sm_rules_v1", "sm_vhosts_v1",
                                            "sm_domains_v1", "sm_rtables_v1")}
        live_vh: set[Any] = set()
        live_w: set[Any] = set()
        uses: set[str] = set()
        self._hdr_used = set()
        self._retry_now = self._hdr_short = False
        t = L.RouteTable()
        if rt.ignore_port_in_host_matching:
            t.flags |= limit("RT_IGNORE_PORT")
        if rt.ignore_path_parameters_in_path_matching:
            t.flags |= limit("RT_USER")
            own.reasons.append(f"route table {name}: path parameters")
        for vpos, vh in enumerate(rt.virtual_hosts):
            vkey = (name, vpos, vh.name)
            vh_id = self.vh_ids.get(vkey)
            if vh_id is None:
                t.flags |= limit("RT_USER")
                self._retry_now = True
                continue
            live_vh.add(vkey)
            n = len(vh.rules)
            start = self.rule_ranges.get(vkey, n) if n else 0
            if start is None or n > limit("RULES_PER_VHOST"):
                self._retry_now |= start is None
                own.reasons.append(f"{name}/{vh.name}: {n} rules over the limits")
                self._put(desired, "sm_vhosts_v1", vh_id,
                          L.VHost(first_rule=0, n_rules=limit("RULES_PER_VHOST") + 1))
            else:
                for i, rule in enumerate(vh.rules):
                    wkey = (vkey, i)
                    a = rule.action
                    if a.cluster:
                        uses.add(a.cluster)
                    if a.kind is ActionKind.WEIGHTED_CLUSTERS:
                        live_w.add(wkey)
                        uses.update(w.cluster for w in a.weighted)
                    self._put(desired, "sm_rules_v1", start + i,
                              self._encode_rule(rt, rule, start + i, tables, wkey, desired))
                    own.rules[start + i + 1] = (name, vh.name, i)
                self._put(desired, "sm_vhosts_v1", vh_id, L.VHost(first_rule=start, n_rules=n))
            for d in vh.domains:
                d = d.lower()
                if d == "*":
                    t.default_vh = t.default_vh or vh_id  # the first "*" wins
                    continue
                if d.startswith("*"):
                    kind, part = limit("DOM_SUFFIX"), d[1:].encode()[::-1]
                    bits = t.suffix_lens
                elif d.endswith("*"):
                    kind, part = limit("DOM_PREFIX"), d[:-1].encode()
                    bits = t.prefix_lens
                else:
                    kind, part, bits = limit("DOM_EXACT"), d.encode(), None
                if len(part) > host_max:
                    if bits is not None:  # the kernel cannot probe this wildcard
                        t.flags |= limit("RT_USER")
                        own.reasons.append(f"route table {name}: domain {d} too long")
                    continue  # an exact host that long is never parsed in kernel
                if bits is not None:
                    if len(part) >= host_max:
                        t.flags |= limit("RT_USER")
                        continue
                    bits[len(part) >> 6] |= 1 << (len(part) & 63)
                dkey = L.DomKey(rt_id=rt_id, kind=kind, len=len(part), hash=fnv1a64(part))
                if bytes(dkey) not in desired["sm_domains_v1"]:  # the first vhost wins
                    self._put(desired, "sm_domains_v1", dkey, vh_id)
        self._put(desired, "sm_rtables_v1", rt_id, t)
        own.entries, own.refs, own.uses = desired, frozenset(self._hdr_used), frozenset(uses)
        own.vhosts, own.weighted = frozenset(live_vh), frozenset(live_w)
        own.retry, own.hdr_short = self._retry_now, self._hdr_short
        return own

    def _encode_services(self, tables: Tables, desired: dict[str, dict[bytes, bytes]],
                         only: set[tuple[str, int]]) -> None:
        for svc in tables.services:
            if (svc.vip, svc.port) not in only:
                continue
            key = L.SvcKey(vip=ip_net(svc.vip), port=socket.htons(svc.port))
            if svc.kind is ServiceKind.HTTP:
                v = L.Service(kind=limit("SVC_HTTP"),
                              id=self.rt_ids.ids.get(svc.route_table or "", 0))
            elif svc.kind is ServiceKind.BLACKHOLE:  # connect4 refuses the connect
                v = L.Service(kind=limit("SVC_BLACKHOLE"), id=0)
            else:
                v = L.Service(kind=limit("SVC_TCP"),
                              id=self.cluster_ids.ids.get(svc.cluster or "", 0))
            self._put(desired, "sm_services_v1", key, v)

    # ---- writing ----------------------------------------------------------------------
    def _flush(self, batch: _Batch) -> ApplyStats:
        stats = ApplyStats(added_endpoints=batch.added, removed_endpoints=batch.removed)
        for name in ORDER:
            m = self.maps[name]
            ktype, vtype, _ = MAPS[name]
            w = batch.writes[name]
            for kb, vb in w.items():
                m.set(ktype.from_buffer_copy(kb), vtype.from_buffer_copy(vb))
            stats.writes += len(w)
            stats.per_map[name] = len(w)
        for name in reversed(ORDER):
            m = self.maps[name]
            ktype, vtype, is_array = MAPS[name]
            for kb in batch.deletes[name] - batch.writes[name].keys():
                if is_array:
                    m.set(ktype.from_buffer_copy(kb), vtype())
                else:
                    m.delete(ktype.from_buffer_copy(kb))
                stats.deletes += 1
        return stats
