"""The datapath as the node agent uses it: load, apply tables, read counters, dump, close.

    dp = Datapath([cgroup], pin_dir)   # splice_addr="10.0.0.5": listen on the node IP
    dp.load()                  # splice listener, programs, maps, pools, slow path
    dp.apply(tables, diff)     # translator.Tables (+ TablesDiff) -> maps; pools follow
    dp.counters()              # {"fast": n, "pool_empty": n, ...} summed over CPUs
    dp.dump()                  # the pinned maps rendered readably
    dp.close()                 # detach, close pools and listener, remove pins
"""

from __future__ import annotations

import ctypes as C
import ipaddress
import logging
import socket
import threading
from pathlib import Path
from typing import Any

from bpf import layout as L
from bpf.encoder import Encoder, MapFullError, ip_str
from bpf.lb import Picker
from bpf.limits import REASONS, limit
from bpf.loader import DatapathError, Loader
from bpf.maps import PinnedMap
from bpf.pools import Pools
from bpf.splice import SpliceListener
from translator.table_builder import TablesDiff
from translator.tables import Endpoint, Tables

log = logging.getLogger(__name__)

# where the splice listener binds unless told otherwise: applications in this network
# namespace reach it, nothing else can
DEFAULT_SPLICE_ADDR = "127.0.0.1"
SLOT_STATES = {limit("SLOT_EMPTY"): "empty", limit("SLOT_IDLE"): "idle",
               limit("SLOT_BUSY"): "busy", limit("SLOT_DEAD"): "dead"}


class PoolFeed:
    """Hands the encoder's endpoint changes to the pools, in order, from a thread of its own.

    Pools.set_endpoints waits for the pools lock, which a maintenance pass holds while it
    connects and polls every endpoint (hundreds of ms with thousands of endpoints), so the
    apply path must not call it.  Queued changes are merged into one call.  An endpoint id
    is reused only two applies after its release (encoder quarantine), and only once every
    id was handed out; then ``before_apply`` makes sure the pools dropped every id released
    that long ago, so a reused id never dispatches on connections to its old address."""

    DROP_WAIT_S = 30.0

    def __init__(self, pools: Pools) -> None:
        self.pools = pools
        self._cv = threading.Condition()
        self._jobs: list[tuple[int, dict[Any, Any], bool]] = []
        self._applies = 0  # applies seen
        self._done = 0  # the apply number of the last change the pools have
        self._drops: list[int] = []  # apply numbers that released endpoints, not yet done
        self._busy = False  # the thread is handing a batch to the pools
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="sockmesh-poolfeed",
                                        daemon=True)
        self._thread.start()

    def before_apply(self, reuse: bool) -> None:
        """Start an apply: if it may reuse endpoint ids, wait until the pools dropped them."""
        with self._cv:
            self._applies += 1
            due = [a for a in self._drops if a <= self._applies - 2] if reuse else []
            if due and not self._cv.wait_for(lambda: self._done >= due[-1],
                                             self.DROP_WAIT_S):
                self._applies -= 1
                raise DatapathError(f"the pools did not drop removed endpoints within "
                                    f"{self.DROP_WAIT_S:g} s; tables not applied")
            self._drops = [a for a in self._drops if a > self._done]

    def add(self, new: dict[int, tuple[str, int]]) -> None:
        """Endpoints the maps are about to name (id -> address)."""
        if new:
            with self._cv:
                self._jobs.append((self._applies, dict(new), False))
                self._cv.notify_all()

    def replace(self, ids: dict[tuple[str, int], int]) -> None:
        """Every endpoint the maps name now, address -> id (after a write that removed
        some); turned around on the feed's thread (10,000 endpoints: 3 ms)."""
        with self._cv:
            self._jobs.append((self._applies, dict(ids), True))
            self._drops.append(self._applies)
            self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Whether the pools had every queued change within ``timeout`` seconds."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._jobs or self._stop)
                if self._stop:
                    return
                jobs, self._jobs = self._jobs, []
                self._busy = True
            # merge: the last full set (drop the rest) plus what was added after it
            merged: dict[int, tuple[str, int]] = {}
            drop = False
            for _, eps, full in jobs:
                if full:
                    merged, drop = {i: a for a, i in eps.items()}, True
                else:
                    merged.update(eps)
            try:
                self.pools.set_endpoints(merged, drop_missing=drop)
            except Exception:
                log.exception("handing endpoints to the pools failed")
            with self._cv:
                self._done, self._busy = jobs[-1][0], False
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(5)


class Datapath:
    """One in-kernel datapath attached to ``cgroups`` with its maps pinned in ``pin_dir``."""

    def __init__(self, cgroups: list[Path] | Path, pin_dir: Path,
                 splice_addr: str | None = DEFAULT_SPLICE_ADDR, warm: int = 2) -> None:
        """``splice_addr``: the IPv4 address the splice listener binds and connect4 sends
        L7 connections to (None: the default); loopback unless the applications live in
        other network namespaces (a node agent with hostNetwork binds the node IP)."""
        splice_addr = DEFAULT_SPLICE_ADDR if splice_addr is None else splice_addr
        try:
            ipaddress.IPv4Address(splice_addr)
        except ValueError:
            raise ValueError(f"splice address {splice_addr!r} is not an IPv4 address "
                             "(connect4 rewrites IPv4 connects only)") from None
        self.cgroups = cgroups if isinstance(cgroups, list) else [cgroups]
        self.pin_dir = Path(pin_dir)
        self.splice_addr = splice_addr
        self.warm = warm
        self.loader: Loader | None = None
        self.encoder: Encoder | None = None
        self.pools: Pools | None = None
        self.pool_feed: PoolFeed | None = None
        self.splice: SpliceListener | None = None
        self.tables = Tables()

    def load(self) -> Datapath:
        """Attach everything; raises loader.DatapathError (nothing left attached) on failure."""
        self.loader = Loader(self.cgroups, self.pin_dir)
        self.loader.load()
        try:
            self._open_user_side()
        except BaseException:
            self.close()
            raise
        return self

    def _open_user_side(self) -> None:
        assert self.loader is not None
        self.encoder = Encoder(self.pin_dir)
        self._epactive = PinnedMap(self.pin_dir / "sm_epactive_v1", C.c_uint32, C.c_uint64)
        self.splice = SpliceListener(self.pin_dir, self.splice_addr,
                                     route_table_name=self.encoder.route_table_name)
        self.splice.picker = Picker(active=self._active_of)
        self.splice.start()
        self.loader.set_splice(*self.splice.addr)
        self.pools = Pools(self.pin_dir, warm=self.warm)
        self.pools.on_lost = self.splice.fail_client
        self.pools.start()
        self.pool_feed = PoolFeed(self.pools)

    def _active_of(self, ep: Endpoint) -> int:
        """The kernel's live active-request count for ep (slow-path LEAST_REQUEST)."""
        if self.encoder is None:
            return 0
        eid = self.encoder.ep_ids.ids.get((ep.address, ep.port))
        if eid is None or self.pools is None:
            return 0
        v = self._epactive.get(eid)
        return int(v.value) if v is not None else 0

    def restart_loader(self) -> Loader:
        """Drop the loader's handles and open the pinned programs again (what a restarted
        agent does); programs stay attached and maps keep their contents meanwhile."""
        assert self.loader is not None
        self.loader.close(detach=False)
        self.loader = Loader(self.cgroups, self.pin_dir, splice=self.splice.addr if self.splice
                             else (self.splice_addr, 0))
        self.loader.load()
        return self.loader

    def apply(self, tables: Tables, diff: TablesDiff | None = None) -> dict[str, int]:
        """Write ``tables`` as diffs (``diff``: what changed since the last apply, as
        translator.table_builder gives it; None: computed) and point the slow path at them.

        Never waits for a connect: new endpoints are handed to the pools thread, which
        warms them; until a pool has an idle connection the kernel hands that endpoint's
        requests to the slow path (reason pool_empty), which serves them."""
        assert self.encoder is not None and self.pool_feed is not None
        assert self.splice is not None
        feed = self.pool_feed
        feed.before_apply(reuse=not self.encoder.ep_ids.fresh_left())
        self.splice.tables = tables  # the slow path sees new tables before the kernel does
        # new endpoints go to the pools before any host list names them
        try:
            stats = self.encoder.apply(tables, diff, before_write=feed.add)
        except MapFullError:  # refused before any write: the last tables keep serving
            self.splice.tables = self.tables
            raise
        if stats.removed_endpoints:  # close pools nothing names any more
            feed.replace(self.encoder.ep_ids.ids)
        self.tables = tables
        return {"writes": stats.writes, "deletes": stats.deletes}

    def counters(self) -> dict[str, int]:
        """Per-reason counters summed over CPUs (see SM_R_* in sockmesh.h)."""
        m = PinnedMap(self.pin_dir / "sm_counters_v2", C.c_uint32, C.c_uint64, percpu=True)
        try:
            out = {}
            for i, name in sorted(REASONS.items()):
                vals = m.get(i) or []
                out[name] = sum(int(v.value) for v in vals)
            return out
        finally:
            m.close()

    def request_stats(self) -> list[dict[str, int]]:
        """Completed kernel-path responses by rule, cluster, endpoint and status class."""
        return request_stats(self.pin_dir)

    def dump(self) -> dict[str, Any]:
        """The pinned maps, rendered readably (services, route tables, clusters, pools...)."""
        return dump(self.pin_dir, self.encoder)

    def close(self, detach: bool = True) -> None:
        """Stop pools and the splice listener; detach and unpin unless detach=False."""
        if self.pool_feed is not None:
            self.pool_feed.close()
            self.pool_feed = None
        if self.pools is not None:
            self.pools.close()
            self.pools = None
        if self.splice is not None:
            self.splice.close()
            self.splice = None
        if self.encoder is not None:
            self.encoder.close()
            self._epactive.close()
            self.encoder = None
        if self.loader is not None:
            self.loader.close(detach=detach)
            self.loader = None


def request_stats(pin_dir: Path) -> list[dict[str, int]]:
    """sm_reqstats_v1 summed over CPUs: one row per (rule_id, cluster_id, ep_id, resp_class)
    with ``count``; ids are the encoder's (names: ``request_labels``)."""
    m = PinnedMap(Path(pin_dir) / L.REQSTATS_MAP, L.ReqStatKey, C.c_uint64, percpu=True)
    try:
        out = []
        for k in list(m.keys()):
            vals = m.get(k)
            if vals is None:
                continue
            out.append({"rule_id": int(k.rule_id), "cluster_id": int(k.cluster_id),
                        "ep_id": int(k.ep_id), "resp_class": int(k.resp_class),
                        "count": sum(int(v.value) for v in vals)})
        return out
    finally:
        m.close()


def _port(v: int) -> int:
    return socket.ntohs(v)


def dump(pin_dir: Path, encoder: Encoder | None = None) -> dict[str, Any]:
    """Read the pinned maps under ``pin_dir`` and render them as plain data."""
    pin_dir = Path(pin_dir)
    def names(kind: str, i: int) -> str | None:
        if encoder is None:
            return None
        return encoder.route_table_name(i) if kind == "rt" else encoder.cluster_name(i)

    def opened(name: str, k: Any, v: Any) -> PinnedMap:
        return PinnedMap(pin_dir / name, k, v)

    out: dict[str, Any] = {}
    m = opened("sm_services_v1", L.SvcKey, L.Service)
    out["services"] = [
        {"vip": ip_str(k.vip), "port": _port(k.port),
         "kind": "http" if v.kind == limit("SVC_HTTP") else "tcp", "id": v.id,
         "name": names("rt" if v.kind == limit("SVC_HTTP") else "cl", v.id)}
        for k, v in m.items()]
    m.close()
    m = opened("sm_clusters_v1", C.c_uint32, L.Cluster)
    hosts = opened("sm_hosts_v1", C.c_uint32, L.Host)
    clusters = []
    for cid in range(1, limit("MAX_CLUSTERS")):
        c = m.get(cid)
        if c is None or c.policy == 0:
            if cid > 64 and c is not None and c.policy == 0:
                break  # ids are dense from 1: stop at the first long gap
            continue
        ring = [hosts.get(cid * limit("HOSTS_PER_CLUSTER") + i) for i in range(c.n_hosts)]
        clusters.append({"id": cid, "name": names("cl", cid), "policy": c.policy,
                         "flags": c.flags, "hosts": [h.ep_id for h in ring if h is not None]})
    m.close()
    hosts.close()
    out["clusters"] = clusters
    m = opened(L.CLIENTS_MAP, L.SockKey, L.Client)
    out["clients"] = [
        {"client": f"{ip_str(k.ip4)}:{k.port}", "service": f"{ip_str(v.vip)}:{_port(v.port)}",
         "route_table": names("rt", v.rt_id), "user": v.user, "requests": v.requests,
         "last_cluster": names("cl", v.last_cluster)}
        for k, v in m.items()]
    m.close()
    slots = opened("sm_slots_v1", C.c_uint32, L.Slot)
    eppool = opened("sm_eppool_v1", C.c_uint32, C.c_uint32)
    eps = opened("sm_endpoints_v1", C.c_uint32, L.Endpoint)
    active = opened("sm_epactive_v1", C.c_uint32, C.c_uint64)
    endpoints = []
    # the pinned array itself says which ids are in use (the encoder zeroes removed ones), so
    # a dump without a running agent (no encoder) still lists every endpoint
    known = set(encoder.endpoints()) if encoder is not None else set()
    known |= {int(k.value) for k, v in eps.items() if v.port}
    for ep in sorted(known):
        e = eps.get(ep)
        n = eppool.get(ep)
        pool_n = int(n.value) if n is not None else 0
        states = [SLOT_STATES.get(int(s.state), "?") for s in
                  (slots.get(ep * limit("POOL_PER_ENDPOINT") + j) for j in range(pool_n))
                  if s is not None]
        a = active.get(ep)
        endpoints.append({"id": ep, "addr": f"{ip_str(e.ip4)}:{_port(e.port)}" if e else None,
                          "active": int(a.value) if a is not None else 0, "pool": states})
    for x in (slots, eppool, eps, active):
        x.close()
    out["endpoints"] = endpoints
    return out


