"""The agent's end of every spliced application connection, and the user-space slow path.

connect4 points an application's connect() to an L7 service at this listener.  On the kernel
path no byte ever reaches the accepted socket: sk_msg redirects requests to pooled backend
connections and sk_skb puts responses straight into the application's socket.  When sk_msg
hands a request over (SK_PASS), its bytes arrive here; the connection's thread parses the
request, routes it with the same tables through translator.model, picks an endpoint with
the same policies (bpf.lb.Picker), proxies it on its own connection (an upstream that fails
before any response byte is retried as the matched route's retry policy says; without one
the answer is Envoy's 503), writes the response back, and when nothing is buffered clears
``sm_client.user`` so the kernel takes the next request again.  Bytes that are not HTTP/1.x
(TLS ClientHello, the HTTP/2 preface) are relayed as an opaque stream to an endpoint of the
route the service's catch-all request would take.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bpf import layout as L
from bpf.lb import Picker
from bpf.maps import PinnedMap
from translator import model
from translator.tables import Cluster, Endpoint, RetryPolicy, Rule, Tables

log = logging.getLogger(__name__)

HEAD_MAX = 60 * 1024  # Envoy's default max_request_headers_kb
PENDING_FAIL_S = 5.0  # how long a 503 waits for its connection to be accepted
IO_TIMEOUT = 10.0
# Envoy's 503 bodies for an upstream that failed before any response byte
UPSTREAM_FAILURE = "upstream connect error or disconnect/reset before headers. "
CONNECT_FAILURE = "remote connection failure"
CONNECT_TIMEOUT = "connection timeout"
TERMINATION = "connection termination"
METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE",
           b"CONNECT")
MAX_HEADERS = 100  # Envoy's default max_headers_count
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEX = frozenset(b"0123456789abcdefABCDEF")
_TCHAR_B = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                     b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class NotHttp(Exception):
    """The bytes are not an HTTP/1.x request."""


class ConnectFailed(Exception):
    """No connection to the upstream could be made: nothing was sent, safe to retry."""

    def __init__(self, detail: str, reason: str = CONNECT_FAILURE) -> None:
        super().__init__(detail)
        self.reason = reason  # Envoy's reset reason


def upstream_failure(reason: str, retried: bool) -> bytes:
    """Envoy's 503 when the upstream failed before any response byte (the connection to the
    client stays usable)."""
    text = f"retried and the latest reset reason: {reason}" if retried \
        else f"reset reason: {reason}"
    return local_reply(503, body=UPSTREAM_FAILURE + text)


class BadRequest(Exception):
    """HTTP/1.x, but malformed: answered with ``status`` and the connection closed."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class ParsedRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    raw: bytes  # head + body exactly as received (forwarded verbatim)
    authority: str = ""  # what the router matches: Host, or the absolute-form URL's
    path: str = ""  # the origin-form path (+ query) of the target


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when a kept connection's peer has closed it (EOF or an error is waiting)."""
    poller = select.poll()  # not recv(MSG_DONTWAIT): a socket with a timeout waits first
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _recv_more(sock: socket.socket, buf: bytearray) -> None:
    chunk = sock.recv(1 << 16)
    if not chunk:
        raise EOFError
    buf.extend(chunk)


def _chunked_body(sock: socket.socket, buf: bytearray, pos: int) -> int:
    """Position just past a chunked body starting at ``pos`` (sizes checked strictly)."""
    while True:
        while b"\r\n" not in buf[pos:]:
            if len(buf) - pos > 1024:
                raise BadRequest("chunk size line too long")
            _recv_more(sock, buf)
        i = buf.index(b"\r\n", pos)
        size_text = bytes(buf[pos:i]).split(b";")[0].strip(b" \t")
        if not size_text or len(size_text) > 16 or not all(c in _HEX for c in size_text):
            raise BadRequest(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        pos = i + 2
        if size == 0:
            while True:  # trailers up to the empty line
                while b"\r\n" not in buf[pos:]:
                    _recv_more(sock, buf)
                i = buf.index(b"\r\n", pos)
                pos, empty = i + 2, i == pos
                if empty:
                    return pos
        while len(buf) < pos + size + 2:
            _recv_more(sock, buf)
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise BadRequest("chunk data longer than its size")
        pos += size + 2


def _check_head(lines: list[str]) -> tuple[list[tuple[str, str]], str, str]:
    """Validate the request line and header fields the way a strict HTTP/1.1 server must
    (RFC 9110/9112, and Envoy's defaults where they differ): BadRequest names the problem.
    Returns (headers, authority, path) as the router sees them."""
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(f"bad request line {lines[0][:60]!r}")
    method, target, _ = parts
    if method.encode() not in METHODS:
        raise BadRequest(f"unknown method {method[:20]!r}")
    if not target or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        raise BadRequest("bad request target")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} header fields", 431)
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or any(c not in _TCHAR for c in name):
            raise BadRequest(f"bad header field {line[:40]!r}")  # also obs-fold, "a : b"
        value = value.strip(" \t")
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
            raise BadRequest(f"control character in header {name[:40]!r}")
        headers.append((name.lower(), value))
    hosts = [v for n, v in headers if n == "host"]
    lengths = [v for n, v in headers if n == "content-length"]
    codings = [v.lower() for n, v in headers if n == "transfer-encoding"]
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if lengths and codings:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        raise BadRequest("more than one Content-Length header")
    if lengths and (not lengths[0].isdigit() or not lengths[0].isascii()
                    or len(lengths[0]) > 18):
        raise BadRequest(f"bad Content-Length {lengths[0][:24]!r}")
    if codings and codings != ["chunked"]:
        raise BadRequest(f"unsupported Transfer-Encoding {', '.join(codings)[:40]!r}", 501)
    authority, path = (hosts[0] if hosts else ""), target
    if target.startswith(("http://", "https://")):
        # absolute-form: the router sees the URL's authority and path (RFC 9112 3.2.2)
        url = urlsplit(target)
        authority = url.netloc
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return headers, authority, path


def _looks_http(data: bytes) -> bool | None:
    """Whether ``data`` starts like an HTTP/1.x request (None: too few bytes to tell).
    A request line that names a known method or ends in an HTTP/1.x version is HTTP, even
    when malformed (then it is refused, never relayed)."""
    if H2_PREFACE.startswith(data[: len(H2_PREFACE)]):
        return None if len(data) < len(H2_PREFACE) else False
    line, crlf, _ = data.partition(b"\r\n")
    first = line.split(b" ", 1)[0]
    if first in METHODS or (crlf and line.endswith((b" HTTP/1.1", b" HTTP/1.0"))):
        return True
    if crlf or b" " in line[:17]:
        return False
    if len(line) >= 16 or any(c not in _TCHAR_B for c in line):
        return False
    return None


def read_request(sock: socket.socket, buf: bytearray) -> ParsedRequest:
    """One complete request (head and body) from buf + sock; consumes it from buf.

    NotHttp: the bytes are not HTTP/1.x at all (relayed opaquely).  BadRequest: they are,
    but malformed (answered 4xx and closed, never forwarded)."""
    while b"\r\n\r\n" not in buf:
        kind = _looks_http(bytes(buf[:HEAD_MAX]))
        if kind is False:
            raise NotHttp  # TLS ClientHello, the HTTP/2 preface, random bytes, ...
        if len(buf) > HEAD_MAX:
            raise BadRequest("request header section over the limit", 431)
        _recv_more(sock, buf)
    end = buf.index(b"\r\n\r\n") + 4
    if not _looks_http(bytes(buf[:end])):
        raise NotHttp
    if end - 4 > HEAD_MAX:
        raise BadRequest("request header section over the limit", 431)
    lines = bytes(buf[: end - 4]).decode("latin-1").split("\r\n")
    headers, authority, path = _check_head(lines)
    parts = lines[0].split(" ")
    hmap = dict(headers)
    pos = end
    if hmap.get("transfer-encoding"):
        pos = _chunked_body(sock, buf, pos)
    else:
        n = int(hmap.get("content-length", "0") or 0)
        while len(buf) < pos + n:
            _recv_more(sock, buf)
        pos += n
    raw = bytes(buf[:pos])
    del buf[:pos]
    return ParsedRequest(parts[0], parts[1], parts[2], headers, raw, authority, path)


def read_response(sock: socket.socket, buf: bytearray, method: str) -> bytes:
    """One complete response from an upstream, as raw bytes (framing per HTTP/1.1)."""
    while True:
        while b"\r\n\r\n" not in buf:
            _recv_more(sock, buf)
        end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        if 100 <= status < 200 and status != 101:
            out = bytes(buf[:end])
            del buf[:end]
            return out + read_response(sock, buf, method)
        break
    hmap = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        hmap[k.strip().lower()] = v.strip()
    pos = end
    if method == "HEAD" or status in (204, 304):
        pass
    elif hmap.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in buf[pos:]:
                _recv_more(sock, buf)
            i = buf.index(b"\r\n", pos)
            size = int(bytes(buf[pos:i]).split(b";")[0], 16)
            pos = i + 2
            if size == 0:
                while True:
                    while b"\r\n" not in buf[pos:]:
                        _recv_more(sock, buf)
                    i = buf.index(b"\r\n", pos)
                    pos, empty = i + 2, i == pos
                    if empty:
                        break
                break
            while len(buf) < pos + size + 2:
                _recv_more(sock, buf)
            pos += size + 2
    else:
        n = int(hmap.get("content-length", "0") or 0)
        while len(buf) < pos + n:
            _recv_more(sock, buf)
        pos += n
    out = bytes(buf[:pos])
    del buf[:pos]
    return out


def backoff_s(policy: RetryPolicy, retry: int) -> float:
    """Seconds before retry number ``retry`` (1, 2, ...): Envoy's fully jittered exponential
    back-off, uniform in [0, (2^retry - 1) x base) and at most the maximum interval."""
    limit = policy.base_interval_ms * ((1 << retry) - 1)
    return min(random.uniform(0, limit), policy.max_interval_ms) / 1000


def local_reply(status: int, location: str | None = None, body: str = "",
                close: bool = False) -> bytes:
    """A response the agent writes itself (no route, cluster not found, redirect, ...)."""
    data = body.encode()
    head = [f"HTTP/1.1 {status} {'sockmesh'}", f"content-length: {len(data)}",
            "x-sockmesh-path: user"]
    if close:
        head.append("connection: close")
    if location:
        head.append(f"location: {location}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


class SpliceListener:
    """Accepts spliced application connections and runs the slow path on them."""

    def __init__(self, pin_dir: Path, host: str = "127.0.0.1",
                 route_table_name: Callable[[int], str | None] = lambda _i: None) -> None:
        self.pin_dir = Path(pin_dir)
        self.clients = PinnedMap(self.pin_dir / L.CLIENTS_MAP, L.SockKey, L.Client)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(1024)
        self.addr: tuple[str, int] = self.lsock.getsockname()
        self.tables = Tables()
        self.route_table_name = route_table_name
        self.picker = Picker()
        self.stats: Counter[str] = Counter()  # slow-path outcomes
        self._stats_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._by_key: dict[tuple[int, int], socket.socket] = {}
        self._pending_fail: dict[tuple[int, int], float] = {}  # key -> until when
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="sockmesh-splice", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)
        self.clients.close()

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, peer = self.lsock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    # ---- one application connection ----------------------------------------------------
    def _client_key(self, peer: tuple[str, int]) -> L.SockKey:
        return L.SockKey(ip4=int(struct.unpack("=I", socket.inet_aton(peer[0]))[0]),
                         port=peer[1])

    def _release_to_kernel(self, key: L.SockKey) -> None:
        st = self.clients.get(key)
        if st is not None and st.user:
            st.user = 0
            self.clients.set(key, st)

    def fail_client(self, key: L.SockKey) -> None:
        """Answer 503 on a connection whose dispatched request lost its pooled connection."""
        k = (key.ip4, key.port)
        with self._lock:
            conn = self._by_key.get(k)
            if conn is None:
                # not accepted yet (the kernel routes before the accept thread runs)
                self._pending_fail[k] = time.monotonic() + PENDING_FAIL_S
                return
        self._count("upstream_lost")
        try:
            conn.sendall(upstream_failure(TERMINATION, retried=False))
        except OSError:
            pass

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        key = self._client_key(peer)
        with self._lock:
            self._by_key[(key.ip4, key.port)] = conn
            pending = self._pending_fail.pop((key.ip4, key.port), 0.0)
        if pending > time.monotonic():
            self.fail_client(key)
        buf = bytearray()
        upstreams: dict[tuple[str, int], tuple[socket.socket, bytearray]] = {}
        # sockops wrote the connection's state before the accept; sm_clients_v2 is an LRU
        # map, so a full map may evict it later: then sk_msg passes every request here and
        # the slow path routes it with the state it read now
        first = self.clients.get(key)
        try:
            while True:
                if not buf:
                    conn.settimeout(None)  # idle while the kernel path serves
                    _recv_more(conn, buf)
                conn.settimeout(IO_TIMEOUT)
                st = self.clients.get(key)
                if st is None and first is not None:
                    self._count("client_state_evicted")
                    st = first
                try:
                    req = read_request(conn, buf)
                except NotHttp:
                    self._count("opaque")
                    self._relay_opaque(conn, buf, st)
                    return
                except BadRequest as bad:
                    self._count(f"bad_request_{bad.status}")
                    log.debug("slow path %s: %s", peer, bad)
                    conn.sendall(local_reply(bad.status, body=str(bad), close=True))
                    return
                self._handle(conn, req, st, upstreams)
                if not buf:
                    self._release_to_kernel(key)
        except (EOFError, OSError, ValueError) as exc:
            log.debug("slow path connection %s ended: %s", peer, exc)
        finally:
            for s, _ in upstreams.values():
                s.close()
            with self._lock:
                self._conns.discard(conn)
                if self._by_key.get((key.ip4, key.port)) is conn:
                    del self._by_key[(key.ip4, key.port)]
            conn.close()

    def _decide(self, req: ParsedRequest, st: L.Client | None
                ) -> tuple[model.Decision, Rule | None] | None:
        """The router's decision and the matched rule (None: no route table)."""
        rt_name = self.route_table_name(st.rt_id) if st is not None else None
        table = self.tables.route_tables.get(rt_name or "")
        if table is None:
            return None
        hmap = dict(req.headers)
        mreq = model.Request(method=req.method, authority=req.authority or hmap.get("host", ""),
                             path=req.path or req.target,
                             headers=tuple((n, v) for n, v in req.headers if n != "host"))
        # model.route, keeping the rule: its retry policy applies to this request
        prepared = model.normalize(mreq)
        vh = model.select_virtual_host(table, prepared.authority)
        index = model.last_match(table, vh, mreq) if vh is not None else None
        rule = vh.rules[index] if vh is not None and index is not None else None
        return model.decide(table, vh, index, prepared, self.tables.clusters), rule

    def _handle(self, conn: socket.socket, req: ParsedRequest, st: L.Client | None,
                upstreams: dict[tuple[str, int], tuple[socket.socket, bytearray]]) -> None:
        decided = self._decide(req, st)
        if decided is None:
            self._count("no_table")
            conn.sendall(local_reply(404))
            return
        d, rule = decided
        cluster_name = d.cluster
        if d.candidates and d.status is None:
            cluster_name = model.pick_weighted(
                model.Action(model.ActionKind.WEIGHTED_CLUSTERS, weighted=d.candidates),
                self.picker._rng.getrandbits(32))
        if d.status is not None or cluster_name is None:
            self._count(f"local_{d.status or 404}")
            conn.sendall(local_reply(d.status or 404, d.location, d.body or ""))
            return
        cluster = self.tables.clusters.get(cluster_name)
        policy = rule.retry if rule is not None else None
        tried: set[tuple[str, int]] = set()
        retries = 0
        while True:
            ep = self._pick(cluster, tried, policy) if cluster is not None else None
            if ep is None:
                self._count("no_healthy_upstream")
                conn.sendall(local_reply(503, body="no healthy upstream"))
                return
            addr = (ep.address, ep.port)
            try:
                resp = self._exchange(addr, req, upstreams)
            except ConnectFailed as exc:
                self._count("upstream_connect_error")
                reason, outcome = exc.reason, "upstream_connect_failed"
                retry = policy is not None and policy.on_connect_failure
                log.debug("slow path: connect to %s failed: %s", addr, exc)
            except (EOFError, OSError) as exc:
                # the upstream closed or reset after the request was sent, before a response
                reason, outcome = TERMINATION, "upstream_reset"
                retry = policy is not None and policy.on_reset
                log.debug("slow path: %s reset before a response: %s", addr, exc)
            else:
                self._count("proxied")
                conn.sendall(resp)
                return
            tried.add(addr)
            if not retry or policy is None or retries >= policy.num_retries:
                # as Envoy: 503 on this request, the client's connection stays usable
                self._count(outcome)
                conn.sendall(upstream_failure(reason, retried=retries > 0))
                return
            retries += 1
            self._count("retried")
            time.sleep(backoff_s(policy, retries))

    def _pick(self, cluster: Cluster, tried: set[tuple[str, int]],
              policy: RetryPolicy | None) -> Endpoint | None:
        """An endpoint by the cluster's policy.  A retry with the previous_hosts predicate
        picks again while it is a host already tried, at most host_selection_attempts more
        times, then takes the last pick (Envoy's host selection under a retry policy)."""
        repicks = policy.host_selection_attempts if policy and policy.previous_hosts else 0
        ep = None
        for _ in range(repicks + 1):
            ep = self.picker.pick(cluster)
            if ep is None or (ep.address, ep.port) not in tried:
                return ep
        return ep

    @staticmethod
    def _exchange(addr: tuple[str, int], req: ParsedRequest,
                  upstreams: dict[tuple[str, int], tuple[socket.socket, bytearray]]) -> bytes:
        """Send ``req`` to ``addr`` and read its response, on this connection's kept upstream
        socket to it, or on a new one when it has none or the upstream has closed the kept
        one (keep-alive timeout).  ConnectFailed: no connection could be made (nothing was
        sent); OSError/EOFError: the connection failed after the request was sent."""
        kept = upstreams.get(addr)
        if kept is not None and _closed_by_peer(kept[0]):  # its FIN is already here
            kept[0].close()
            del upstreams[addr]
        if addr not in upstreams:
            try:
                s = socket.create_connection(addr, timeout=IO_TIMEOUT)
            except OSError as exc:
                raise ConnectFailed(f"{addr[0]}:{addr[1]}: {exc}", CONNECT_TIMEOUT
                                    if isinstance(exc, TimeoutError) else CONNECT_FAILURE) from exc
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstreams[addr] = (s, bytearray())
        s, ubuf = upstreams[addr]
        try:
            s.sendall(req.raw)
            return read_response(s, ubuf, req.method)
        except (EOFError, OSError):
            # a reset after sending: the route's retry policy decides (Envoy never resends
            # on its own)
            s.close()
            del upstreams[addr]
            raise

    def _relay_opaque(self, conn: socket.socket, buf: bytearray, st: L.Client | None) -> None:
        """Not HTTP/1.x: relay the stream to the endpoint the service's catch-all would use."""
        rt_name = self.route_table_name(st.rt_id) if st is not None else None
        table = self.tables.route_tables.get(rt_name or "")
        ep = None
        if table is not None and st is not None:
            vip = socket.inet_ntoa(struct.pack("=I", st.vip))
            d = model.route(table, model.Request(authority=f"{vip}:{socket.ntohs(st.port)}"),
                            self.tables.clusters)
            cluster = self.tables.clusters.get(d.cluster or "")
            ep = self.picker.pick(cluster) if cluster is not None else None
        if ep is None:
            return
        up = socket.create_connection((ep.address, ep.port), timeout=IO_TIMEOUT)
        try:
            up.sendall(bytes(buf))
            buf.clear()
            conn.settimeout(IO_TIMEOUT)
            up.settimeout(IO_TIMEOUT)

            def pump(src: socket.socket, dst: socket.socket) -> None:
                try:
                    while data := src.recv(1 << 16):
                        dst.sendall(data)
                except OSError:
                    pass
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

            t = threading.Thread(target=pump, args=(up, conn), daemon=True)
            t.start()
            pump(conn, up)
            t.join(IO_TIMEOUT)
        finally:
            up.close()

