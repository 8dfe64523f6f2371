"""Per-endpoint pools of agent-owned backend connections for the kernel to dispatch on.

Slot ``ep_id * SM_POOL_PER_ENDPOINT + j`` holds connection j to endpoint ep_id.  Filling a
slot: connect, put the socket into sm_poolsocks_v1 (where the sk_skb verdict runs on it),
record its local address in sm_poolports_v1, mark the slot IDLE, then raise the endpoint's
count in sm_eppool_v1 so sk_msg starts claiming it.  ``maintain()`` warms new endpoints,
replaces connections the backend closed (sk_skb marks them DEAD on a bare FIN; a poll for
RDHUP catches a FIN that came with data), grows a pool when sk_msg found no idle connection
(sm_epmiss_v1), and closes pools of endpoints that left the tables.

A background thread runs it when something happens and waits otherwise: it polls the pooled
sockets (a close, a reset) and a wake-up pipe (new endpoints), every ``interval`` while the
pools are changing (connections filled, pools grown, a drain or a lost request pending) and
every ``idle`` seconds when not, for what the kernel reports only in its maps: misses, slots
retired without a socket event (an unframed response), bytes sk_skb could not map.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bpf import layout as L
from bpf.limits import limit
from bpf.maps import BpfError, PinnedMap

log = logging.getLogger(__name__)

U32, U64 = C.c_uint32, C.c_uint64
PER_EP = limit("POOL_PER_ENDPOINT")
IDLE, BUSY, DEAD, EMPTY = (limit("SLOT_IDLE"), limit("SLOT_BUSY"), limit("SLOT_DEAD"),
                           limit("SLOT_EMPTY"))
RF_LOST = limit("RF_LOST")
R_UNMAPPED = limit("R_RESP_UNMAPPED")
CONNECT_TIMEOUT = 1.0
UNIQUE_PORT_BIND = "0.0.0.0"  # bind(2) to any address, port 0: a port unused on every address
RETRY_AFTER = 0.2  # seconds before connecting again to an endpoint that refused
LOST_GRACE = 0.2  # a closed pooled connection still busy this long lost its request
DRAIN_GRACE = 0.05  # a removed endpoint's idle connections close after this
DRAIN_MAX = 30.0  # ... and its busy ones when their response is done, or after this
IDLE_TICK = 0.05  # seconds between maintenance passes while nothing changes
CLOSED = select.POLLRDHUP | select.POLLHUP | select.POLLERR


class Pools:
    """Keeps ``warm`` connections per endpoint, up to SM_POOL_PER_ENDPOINT under load."""

    def __init__(self, pin_dir: Path, warm: int = 2, interval: float = 0.002,
                 idle: float = IDLE_TICK) -> None:
        self.pin_dir = Path(pin_dir)
        self.warm = max(1, min(warm, PER_EP))
        self.interval = interval
        self.idle = idle
        self.socks = PinnedMap(self.pin_dir / "sm_poolsocks_v1", U32, U64)
        self.ports = PinnedMap(self.pin_dir / "sm_poolports_v1", L.SockKey, U32)
        self.slots = PinnedMap(self.pin_dir / "sm_slots_v1", U32, L.Slot)
        self.eppool = PinnedMap(self.pin_dir / "sm_eppool_v1", U32, U32)
        self.epmiss = PinnedMap(self.pin_dir / "sm_epmiss_v1", U32, U64)
        self.epactive = PinnedMap(self.pin_dir / "sm_epactive_v1", U32, U64)
        self.counters = PinnedMap(self.pin_dir / "sm_counters_v2", U32, U64, percpu=True)
        self._unmapped_seen = self._unmapped()
        self.on_lost: Callable[[L.SockKey], None] | None = None
        self.lost = 0  # dispatched requests whose pooled connection closed under them
        self._closed_busy: dict[int, float] = {}  # slot -> when it was first seen closed
        self._draining: dict[int, tuple[float, float]] = {}  # slot -> (grace end, deadline)
        self.endpoints: dict[int, tuple[str, int]] = {}
        self.conns: dict[int, socket.socket] = {}  # slot id -> socket
        # sm_poolports_v1 entries this object wrote: slot -> key, key -> slot.  A pooled
        # socket reset by its backend goes to TCP_CLOSE and the kernel releases its local
        # port (it was bound to port 0, so not locked) while the fd is still open here; a
        # newer pooled socket can then get the same port and its entry.  Closing the old
        # socket must not delete the newer socket's entry: that hid its responses from sk_skb
        # (the client timed out).  So an entry is deleted only by the slot that owns it.
        self._port_key: dict[int, tuple[int, int]] = {}
        self._port_slot: dict[tuple[int, int], int] = {}
        self._gen: dict[int, int] = {}
        self._miss_seen: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}  # endpoint -> monotonic time of next connect
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._changing = True  # the last pass connected something: look again soon
        self._quiet: set[int] = set()  # slots whose socket is ready but waits (not polled)
        self.filled = 0  # pooled connections made
        self.passes = 0  # maintenance passes run
        self.replaced = 0
        self.grown = 0

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sockmesh-pools", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.maintain()
            except Exception:
                log.exception("pool maintenance failed")
            self._wait()

    def kick(self) -> None:
        """Run a maintenance pass now."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"k")

    def _wait(self) -> None:
        """Until a pooled socket or the wake-up pipe is ready, or the next pass is due."""
        with self._lock:
            fds = [s.fileno() for sid, s in self.conns.items() if sid not in self._quiet]
            now = time.monotonic()
            due = [t - now for t in (*self._retry_at.values(),
                                     *(c + LOST_GRACE for c in self._closed_busy.values()))
                   if t > now]
            soon = self._changing or bool(self._draining)
            timeout = min([self.interval if soon else self.idle, *due])
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for fd in fds:
            poller.register(fd, CLOSED)
        if any(fd == self._wake_r for fd, _ in poller.poll(max(1, int(timeout * 1000)))):
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)

    def close(self) -> None:
        """Stop maintenance and close every pooled connection."""
        self._stop.set()
        self.kick()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for ep in list(self.endpoints):
                self._drop_endpoint(ep)
            self._drain(force=True)
        for m in (self.socks, self.ports, self.slots, self.eppool, self.epmiss, self.epactive,
                  self.counters):
            m.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- state ------------------------------------------------------------------------
    def set_endpoints(self, endpoints: dict[int, tuple[str, int]],
                      drop_missing: bool = True) -> None:
        """The endpoints the tables name (encoder ids); pools follow on the next maintain.

        drop_missing=False only adds (before the maps name new endpoints); the agent drops
        the rest once the maps no longer name them."""
        with self._lock:
            for ep in list(self.endpoints):
                if ep in endpoints and endpoints[ep] != self.endpoints[ep] or ep not in endpoints and drop_missing:
                    self._drop_endpoint(ep)
            for ep, addr in endpoints.items():
                if self.endpoints.get(ep) != addr:  # new, or an id reused for another address
                    self._retry_at.pop(ep, None)
                    miss = self.epmiss.get(ep)
                    self._miss_seen[ep] = int(miss.value) if miss is not None else 0
            kept = {e: a for e, a in self.endpoints.items() if not drop_missing}
            self.endpoints = kept | dict(endpoints)
        self.kick()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold maintenance (tests use it to observe an exhausted pool)."""
        with self._lock:
            yield

    @property
    def settled(self) -> bool:
        """Nothing pending: the thread waits for an event or the idle tick."""
        with self._lock:
            return not (self._changing or self._draining or self._closed_busy)

    def size(self, ep: int) -> int:
        v = self.eppool.get(ep)
        return int(v.value) if v is not None else 0

    def _retire(self, sid: int, sl: L.Slot) -> None:
        """Mark a slot dead (maintain refills it); a request on it gets ``on_lost``."""
        self.slots.set(sid, L.Slot(state=DEAD, ep_id=sl.ep_id, gen=sl.gen))
        if sl.state == BUSY:
            # the kernel would have released it with the response; do it here
            v = self.epactive.get(sl.ep_id)
            if v is not None and v.value:
                self.epactive.set(sl.ep_id, U64(v.value - 1))
            self.lost += 1
            if self.on_lost is not None:
                self.on_lost(sl.client)

    def _unmapped(self) -> int:
        vals = self.counters.get(R_UNMAPPED)
        return sum(int(v.value) for v in vals) if vals else 0

    def _reap_unmapped(self) -> None:
        """Retire pooled connections sk_skb could not map to their slot.

        sk_skb counts bytes on a pooled socket without an sm_poolports_v1 entry
        (``resp_unmapped``) and leaves them in the socket's own queue, where no client will
        see them.  When that count moved, every pooled socket's entry is checked; one
        without its own entry is retired."""
        n = self._unmapped()
        if n == self._unmapped_seen:
            return
        self._unmapped_seen = n
        for sid in list(self.conns):
            key = self._port_key.get(sid)
            entry = self.ports.get(L.SockKey(ip4=key[0], port=key[1])) if key else None
            if entry is not None and entry.value == sid:
                continue
            sl = self.slots.get(sid)
            if sl is not None and sl.state not in (DEAD, EMPTY):
                log.warning("pooled connection %d had no port mapping; retired", sid)
                self._retire(sid, sl)

    def _reap_closed(self) -> None:
        """Mark pooled connections the backend closed as dead.

        sk_skb sees a FIN only when it arrives as its own zero-length skb; a FIN that rides
        on the last data segment (a backend that answers and closes) is invisible to it, but
        the socket's poll state says RDHUP.  A request the kernel already dispatched on such
        a connection gets no answer: ``on_lost(client key)`` lets the agent answer 503."""
        if not self.conns:
            return
        poller = select.poll()
        by_fd = {}
        for sid, sock in self.conns.items():
            poller.register(sock.fileno(), CLOSED)
            by_fd[sock.fileno()] = sid
        now = time.monotonic()
        for fd, _ in poller.poll(0):
            sid = by_fd[fd]
            # ready until it is refilled or closed: the waiting thread leaves it out
            self._quiet.add(sid)
            sl = self.slots.get(sid)
            if sl is None or sl.state in (DEAD, EMPTY):
                continue
            busy = sl.state == BUSY
            if busy:
                # the response may still be on its way through sk_skb: give it a moment
                first = self._closed_busy.setdefault(sid, now)
                if now - first < LOST_GRACE:
                    continue
            self._closed_busy.pop(sid, None)
            self._retire(sid, sl)

    def maintain(self) -> None:
        """One pass: reap closed, warm, replace dead, grow on misses."""
        with self._lock:
            self.passes += 1
            filled = self.filled
            self._reap_closed()
            self._reap_unmapped()
            self._drain()
            now = time.monotonic()
            for ep, addr in list(self.endpoints.items()):
                if self._retry_at.get(ep, 0.0) > now:
                    continue  # connect failed recently: back off
                n = self.size(ep)
                for j in range(n):
                    sid = ep * PER_EP + j
                    sl = self.slots.get(sid)
                    if sl is not None and sl.state in (DEAD, EMPTY):
                        if sl.state == DEAD:
                            self.replaced += 1
                            if sl.resp.flags & RF_LOST:  # sk_skb saw the FIN mid-response
                                self.lost += 1
                                if self.on_lost is not None:
                                    self.on_lost(sl.client)
                        self._fill(ep, sid, addr)
                miss = self.epmiss.get(ep)
                misses = int(miss.value) if miss is not None else 0
                want = max(self.warm, n)
                if misses > self._miss_seen.get(ep, 0) and n < PER_EP:
                    want = min(PER_EP, n + misses - self._miss_seen.get(ep, 0))
                    self.grown += want - n
                self._miss_seen[ep] = misses
                for j in range(n, want):
                    if not self._fill(ep, ep * PER_EP + j, addr):
                        break
                    self.eppool.set(ep, U32(j + 1))
            self._changing = self.filled != filled

    # ---- slots ------------------------------------------------------------------------
    def _close_slot(self, sid: int) -> None:
        self._quiet.discard(sid)
        old = self.conns.pop(sid, None)
        key = self._port_key.pop(sid, None)
        if key is not None and self._port_slot.get(key) == sid:
            del self._port_slot[key]
            with contextlib.suppress(BpfError):
                self.ports.delete(L.SockKey(ip4=key[0], port=key[1]))
        if old is not None:
            old.close()  # also removes it from the sockhash

    def _connect(self, addr: tuple[str, int]) -> socket.socket:
        # An explicit bind gives a local port no other socket holds.  connect()'s own port
        # choice shares a port between connections to different destinations, and sk_skb
        # finds a slot by the pooled socket's local address (sm_poolports_v1): two pooled
        # sockets on one port sent one's response to the other's slot, where it was dropped
        # as unasked-for (resp_lost) and the client waited out its timeout.
        return socket.create_connection(addr, timeout=CONNECT_TIMEOUT,
                                        source_address=(UNIQUE_PORT_BIND, 0))

    def _fill(self, ep: int, sid: int, addr: tuple[str, int]) -> bool:
        self._close_slot(sid)
        self._closed_busy.pop(sid, None)
        self.slots.set(sid, L.Slot(state=EMPTY, ep_id=ep))
        try:
            s = self._connect(addr)
        except OSError as exc:
            log.info("pool connect to %s:%d failed: %s", addr[0], addr[1], exc)
            self._retry_at[ep] = time.monotonic() + RETRY_AFTER
            return False
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.socks.set(sid, U64(s.fileno()))
        except BpfError as exc:  # e.g. the backend already closed it (ENOTSUP)
            log.info("pool insert %s:%d failed: %s", addr[0], addr[1], exc)
            self._retry_at[ep] = time.monotonic() + RETRY_AFTER
            s.close()
            return False
        ip, port = s.getsockname()
        key = (_ip_net(ip), port)
        self.ports.set(L.SockKey(ip4=key[0], port=key[1]), U32(sid))
        prev = self._port_slot.get(key)
        if prev is not None:  # a reset socket's released port, now this one's
            self._port_key.pop(prev, None)
        self._port_slot[key] = sid
        self._port_key[sid] = key
        gen = self._gen.get(sid, 0) + 1
        self._gen[sid] = gen
        self.conns[sid] = s
        self.filled += 1
        self.slots.set(sid, L.Slot(state=IDLE, ep_id=ep, gen=gen))
        return True

    def _drop_endpoint(self, ep: int) -> None:
        """Stop new claims now; close the connections once no request is on them."""
        self.eppool.set(ep, U32(0))
        self.endpoints.pop(ep, None)
        now = time.monotonic()
        for j in range(PER_EP):
            sid = ep * PER_EP + j
            if sid in self.conns:
                # an sk_msg that read the old pool size may still claim an idle slot for a
                # moment; a busy one finishes its response first
                self._draining[sid] = (now + DRAIN_GRACE, now + DRAIN_MAX)

    def _drain(self, force: bool = False) -> None:
        now = time.monotonic()
        for sid, (grace, limit_) in list(self._draining.items()):
            if not force and now < grace:
                continue
            sl = self.slots.get(sid)
            if not force and sl is not None and sl.state == BUSY and now < limit_:
                continue
            del self._draining[sid]
            if sid in self.conns:
                self._close_slot(sid)
            self.slots.set(sid, L.Slot(state=EMPTY))


def _ip_net(addr: str) -> int:
    return int(struct.unpack("=I", socket.inet_aton(addr))[0])
