"""Translator tables -> the datapath's maps, written as diffs.

Ids are stable across applies (a route table, virtual host, cluster or endpoint keeps its id
while it exists; id 0 means none) and every apply writes only entries whose bytes changed,
then deletes what disappeared.  Order is make-before-break: endpoints, clusters and hosts
first, then rules, virtual hosts, domains and route tables, services last; removals after.

What the kernel cannot evaluate is encoded so that it can never give a wrong answer
(route.h): a rule with a condition the kernel cannot check is flagged SM_RULE_USER (its
checkable conditions still filter), an action the kernel does not perform is SM_ACT_USER,
a route table whose host matching exceeds the kernel's limits is SM_RT_USER, and a cluster
over a limit is SM_CL_USER.  ``self.user_reasons`` lists each such decision.
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
from translator.tables import (
    ActionKind,
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
    """Stable small ids for names; 0 is never handed out; freed ids are reused."""

    def __init__(self, limit_: int) -> None:
        self.limit = limit_
        self.ids: dict[Any, int] = {}
        self._free: list[int] = []
        self._quarantine: list[int] = []
        self._next = 1

    def get(self, name: Any) -> int | None:
        if name in self.ids:
            return self.ids[name]
        if self._free:
            i = self._free.pop()
        elif self._next < self.limit:
            i = self._next
            self._next += 1
        else:
            return None
        self.ids[name] = i
        return i

    def keep_only(self, names: set[Any]) -> None:
        """Forget names not in ``names``.  Their ids are reused only after the next call:
        in-flight requests and pooled connections may still refer to them meanwhile."""
        self._free.extend(self._quarantine)
        self._quarantine = []
        for name in list(self.ids):
            if name not in names:
                self._quarantine.append(self.ids.pop(name))


class RangeAllocator:
    """Contiguous ranges of a global array, one per owner; a range keeps its place while
    its length is unchanged.  Freed ranges are reused only by a later apply."""

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
        if cur is not None:
            self._pending_free.append(cur)
            del self.ranges[owner]
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

    def finish(self, live: set[Any]) -> None:
        for owner in list(self.ranges):
            if owner not in live:
                self._pending_free.append(self.ranges.pop(owner))
        self._free = [r for r in self._free if r[1] > 0] + self._pending_free
        self._pending_free = []


@dataclass
class ApplyStats:
    writes: int = 0
    deletes: int = 0
    per_map: dict[str, int] = field(default_factory=dict)


class Encoder:
    """Writes Tables into the pinned maps under ``pin_dir`` as diffs."""

    def __init__(self, pin_dir: Path) -> None:
        self.pin_dir = Path(pin_dir)
        self.maps = {n: PinnedMap(self.pin_dir / n, k, v) for n, (k, v, _) in MAPS.items()}
        self.rt_ids = IdAllocator(limit("MAX_ROUTE_TABLES"))
        self.vh_ids = IdAllocator(limit("MAX_VHOSTS"))
        self.cluster_ids = IdAllocator(limit("MAX_CLUSTERS"))
        self.ep_ids = IdAllocator(limit("MAX_ENDPOINTS"))
        self.rule_ranges = RangeAllocator(limit("MAX_RULES"))
        self.weighted_ranges = RangeAllocator(limit("MAX_WEIGHTED"))
        # header name -> id; slot = FIRST_HDR_SLOT + id - 1.  Names no rule uses any more
        # give their slot back (quarantined for one apply like every other id)
        self.hdr_ids = IdAllocator(limit("HDR_SLOTS") - FIRST_HDR_SLOT + 1)
        self._hdr_used: set[str] = set()
        self._current: dict[str, dict[bytes, bytes]] = {n: {} for n in MAPS}
        # reverse maps for dump and tests: global rule index + 1 -> (table, vhost, rule index)
        self.rule_index: dict[int, tuple[str, str, int]] = {}
        self.user_reasons: list[str] = []
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

    def apply(self, tables: Tables,
              before_write: Callable[[dict[int, tuple[str, int]]], None] | None = None
              ) -> ApplyStats:
        """Make the maps say ``tables``; returns how many entries were written/deleted.

        ``before_write(endpoints)`` runs once ids are assigned and before any map is
        written: the agent warms pools for new endpoints there (make before break)."""
        self.user_reasons = []
        desired: dict[str, dict[bytes, bytes]] = {n: {} for n in MAPS}
        self._encode_clusters(tables, desired)
        self._encode_routes(tables, desired)
        self._encode_services(tables, desired)
        if before_write is not None:
            before_write(self.endpoints())
        stats = self._write(desired)
        self.tables = tables
        return stats

    # ---- encoding ---------------------------------------------------------------------
    @staticmethod
    def _put(desired: dict[str, dict[bytes, bytes]], name: str, key: Any, value: Any) -> None:
        ktype = MAPS[name][0]
        k = key if isinstance(key, C.Structure) else ktype(key)
        desired[name][bytes(k)] = bytes(value if isinstance(value, C.Structure)
                                        else MAPS[name][1](value))

    def _encode_clusters(self, tables: Tables, desired: dict[str, dict[bytes, bytes]]) -> None:
        max_hosts = limit("HOSTS_PER_CLUSTER")
        live_eps: set[Any] = set()
        for name in sorted(tables.clusters):
            cluster = tables.clusters[name]
            cid = self.cluster_ids.get(name)
            if cid is None:
                self.user_reasons.append(f"cluster {name}: more than SM_MAX_CLUSTERS")
                continue
            p = lb.plan(cluster, max_hosts, limit("LR_CHOICES_MAX"))
            c = L.Cluster(policy=LB_POLICY[cluster.lb_policy], n_hosts=len(p.hosts),
                          choices=max(1, cluster.choice_count),
                          bias=1 if cluster.active_request_bias else 0)
            c.flags = (limit("CL_USABLE") if p.hosts else 0) | (
                limit("CL_EQUAL_WEIGHTS") if p.equal else 0)
            if p.user:
                c.flags |= limit("CL_USER")
                self.user_reasons.append(f"cluster {name}: {p.user}")
            for ep in cluster.endpoints:
                key = (ep.address, ep.port)
                eid = self.ep_ids.get(key)
                if eid is None:
                    c.flags |= limit("CL_USER")
                    self.user_reasons.append(f"cluster {name}: more than SM_MAX_ENDPOINTS")
                    continue
                live_eps.add(key)
                self._put(desired, "sm_endpoints_v1", eid,
                          L.Endpoint(ip4=ip_net(ep.address), port=socket.htons(ep.port)))
            if not c.flags & limit("CL_USER"):
                for i, h in enumerate(p.hosts):
                    eid = self.ep_ids.ids[(h.address, h.port)]
                    self._put(desired, "sm_hosts_v1", cid * max_hosts + i,
                              L.Host(ep_id=eid, weight=h.weight))
            self._put(desired, "sm_clusters_v1", cid, c)
        self.cluster_ids.keep_only(set(tables.clusters))
        self.ep_ids.keep_only(live_eps)

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
            return None
        self._hdr_used.add(name)
        return FIRST_HDR_SLOT + i - 1

    @property
    def hdr_slots(self) -> dict[str, int]:
        """Header name -> kernel slot, for the names the current rules use."""
        return {n: FIRST_HDR_SLOT + i - 1 for n, i in self.hdr_ids.ids.items()
                if n in self._hdr_used}

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
                if start is not None:
                    cum = 0
                    for j, (w, cid) in enumerate(zip(a.weighted, ids, strict=True)):
                        cum += w.weight
                        self._put(desired, "sm_weighted_v1", start + j,
                                  L.Weighted(cluster_id=cid or 0, cum_weight=cum))
                    r.action, r.action_id = limit("ACT_WEIGHTED"), start
                    r.n_weighted, r.total_weight = len(ids), total
        return r

    def _encode_routes(self, tables: Tables, desired: dict[str, dict[bytes, bytes]]) -> None:
        host_max = limit("HOST_MAX")
        live_vh: set[Any] = set()
        live_w: set[Any] = set()
        self.rule_index = {}
        self._hdr_used = set()
        for name in sorted(tables.route_tables):
            rt = tables.route_tables[name]
            rt_id = self.rt_ids.get(name)
            if rt_id is None:
                self.user_reasons.append(f"route table {name}: more than SM_MAX_ROUTE_TABLES")
                continue
            t = L.RouteTable()
            if rt.ignore_port_in_host_matching:
                t.flags |= limit("RT_IGNORE_PORT")
            if rt.ignore_path_parameters_in_path_matching:
                t.flags |= limit("RT_USER")
                self.user_reasons.append(f"route table {name}: path parameters")
            for vpos, vh in enumerate(rt.virtual_hosts):
                vkey = (name, vpos, vh.name)
                vh_id = self.vh_ids.get(vkey)
                if vh_id is None:
                    t.flags |= limit("RT_USER")
                    continue
                live_vh.add(vkey)
                n = len(vh.rules)
                start = self.rule_ranges.get(vkey, n) if n else 0
                if start is None or n > limit("RULES_PER_VHOST"):
                    self.user_reasons.append(f"{name}/{vh.name}: {n} rules over the limits")
                    self._put(desired, "sm_vhosts_v1", vh_id,
                              L.VHost(first_rule=0, n_rules=limit("RULES_PER_VHOST") + 1))
                else:
                    for i, rule in enumerate(vh.rules):
                        wkey = (vkey, i)
                        if rule.action.kind is ActionKind.WEIGHTED_CLUSTERS:
                            live_w.add(wkey)
                        self._put(desired, "sm_rules_v1", start + i,
                                  self._encode_rule(rt, rule, start + i, tables, wkey, desired))
                        self.rule_index[start + i + 1] = (name, vh.name, i)
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
                            self.user_reasons.append(f"route table {name}: domain {d} too long")
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
        for hname, slot in self.hdr_slots.items():
            self._put(desired, "sm_hdrslots_v1", fnv1a64(hname.encode()), slot)
        self.hdr_ids.keep_only(self._hdr_used)
        self.rt_ids.keep_only(set(tables.route_tables))
        self.vh_ids.keep_only(live_vh)
        self.rule_ranges.finish(live_vh)
        self.weighted_ranges.finish(live_w)

    def _encode_services(self, tables: Tables, desired: dict[str, dict[bytes, bytes]]) -> None:
        for svc in tables.services:
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
    def _write(self, desired: dict[str, dict[bytes, bytes]]) -> ApplyStats:
        stats = ApplyStats()
        for name in ORDER:
            m = self.maps[name]
            ktype, vtype, _ = MAPS[name]
            cur = self._current[name]
            n = 0
            for kb, vb in desired[name].items():
                if cur.get(kb) != vb:
                    m.set(ktype.from_buffer_copy(kb), vtype.from_buffer_copy(vb))
                    n += 1
            stats.writes += n
            stats.per_map[name] = n
        for name in reversed(ORDER):
            m = self.maps[name]
            ktype, vtype, is_array = MAPS[name]
            for kb in set(self._current[name]) - set(desired[name]):
                if is_array:
                    m.set(ktype.from_buffer_copy(kb), vtype())
                else:
                    m.delete(ktype.from_buffer_copy(kb))
                stats.deletes += 1
            self._current[name] = desired[name]
        return stats
