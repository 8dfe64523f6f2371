"""Identity backends for the kernel tests: raw-socket HTTP/1.1 keep-alive servers on loopback.

Each answers with its name (header ``x-backend`` and body) and shapes the response by path:
``/status/N`` (204 and 304 without a body), ``/big/N`` (N-byte body), ``/chunked/N`` (N
chunks), ``/slow/MS`` (answers after MS ms), ``/close`` (answers, then closes the
connection), ``/hangup`` (closes without answering).  Request bodies (Content-Length or chunked) are read and reported as
``x-body-len`` and ``x-body-sha``.  Threads are daemons; ``close()`` stops the listener and
closes every connection.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import struct
import threading
import time
from collections import Counter


def _read_until(conn: socket.socket, buf: bytearray, marker: bytes) -> int:
    while marker not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        buf.extend(chunk)
    return buf.index(marker)


def _read_n(conn: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        buf.extend(chunk)
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _peer_port(conn: socket.socket) -> int:
    try:
        return conn.getpeername()[1]
    except OSError:
        return 0


class Backend:
    """One identity backend; ``port`` is its bound port, ``hits`` counts requests by path."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0,
                 idle_timeout: float | None = None) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("loopback only")
        self.name = name
        self.host = host
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(256)
        self.port = self.lsock.getsockname()[1]
        self.hits: Counter[str] = Counter()
        self.requests = 0
        self.active = 0
        self.delay_s = 0.0  # added to every response (least-request tests)
        self.idle_timeout = idle_timeout  # keep-alive timeout: close a connection idle so long
        self.closed = 0  # connections this backend has closed (or seen closed)
        self.closed_peers: set[int] = set()  # their peer ports (x-peer-port names the peer)
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        peer_port = 0
        try:
            # recv times out -> the finally closes (nginx-like); inside the try because
            # close() or drop_connections() may have closed conn before this thread ran
            conn.settimeout(self.idle_timeout)
            peer_port = conn.getpeername()[1]
            while not self._closed:
                end = _read_until(conn, buf, b"\r\n\r\n")
                head = bytes(buf[:end]).decode("latin-1")
                del buf[: end + 4]
                lines = head.split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                hdrs = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                body = b""
                if hdrs.get("transfer-encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        i = _read_until(conn, buf, b"\r\n")
                        size = int(bytes(buf[:i]).split(b";")[0], 16)
                        del buf[: i + 2]
                        if size == 0:
                            _read_until(conn, buf, b"\r\n")
                            del buf[:2]
                            break
                        parts.append(_read_n(conn, buf, size))
                        _read_n(conn, buf, 2)
                    body = b"".join(parts)
                elif "content-length" in hdrs:
                    body = _read_n(conn, buf, int(hdrs["content-length"]))
                with self._lock:
                    self.requests += 1
                    self.hits[path] += 1
                    self.active += 1
                if path.startswith("/hangup"):
                    return  # close without answering (the finally closes)
                try:
                    close = self._respond(conn, method, path, hdrs, body, peer_port)
                finally:
                    with self._lock:
                        self.active -= 1
                if close:
                    conn.close()
                    return
        except (EOFError, OSError, ValueError):
            pass
        finally:
            conn.close()
            with self._lock:
                self.closed += 1
                self.closed_peers.add(peer_port)

    def _respond(self, conn: socket.socket, method: str, path: str, hdrs: dict[str, str],
                 body: bytes, peer_port: int) -> bool:
        status, payload, chunks, close = 200, self.name.encode(), None, False
        seg = path.split("?", 1)[0].strip("/").split("/")
        if self.delay_s:
            time.sleep(self.delay_s)
        if seg[0] == "status" and len(seg) > 1:
            status = int(seg[1])
        elif seg[0] == "big" and len(seg) > 1:
            n = int(seg[1])
            payload = (self.name.encode() + b"-" * 63)[:64] * (n // 64) + b"x" * (n % 64)
        elif seg[0] == "chunked" and len(seg) > 1:
            chunks = [f"{self.name}-{i};".encode() for i in range(int(seg[1]))]
            payload = b"".join(chunks)
        elif seg[0] == "slow" and len(seg) > 1:
            time.sleep(int(seg[1]) / 1000)
        elif seg[0] == "close":
            close = True
        reason = {200: "OK", 204: "No Content", 304: "Not Modified"}.get(status, "X")
        head = [f"HTTP/1.1 {status} {reason}", f"x-backend: {self.name}", f"x-path: {path}",
                f"x-host: {hdrs.get('host', '')}", f"x-body-len: {len(body)}",
                f"x-body-sha: {hashlib.sha256(body).hexdigest()[:16]}",
                f"x-peer-port: {peer_port}"]
        if close:
            head.append("connection: close")
        out: bytes
        if status in (204, 304) or 100 <= status < 200:
            out = ("\r\n".join(head) + "\r\n\r\n").encode()
        elif chunks is not None:
            head.append("transfer-encoding: chunked")
            data = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
            out = ("\r\n".join(head) + "\r\n\r\n").encode() + (b"" if method == "HEAD" else data)
        else:
            head.append(f"content-length: {len(payload)}")
            out = ("\r\n".join(head) + "\r\n\r\n").encode() + (b"" if method == "HEAD" else payload)
        conn.sendall(out)
        return close

    def reset(self, peer_port: int) -> bool:
        """Abort the accepted connection from ``peer_port``: its serving thread closes it
        with SO_LINGER 0, which sends a RST instead of a FIN."""
        with self._lock:
            conns = [c for c in self._conns if _peer_port(c) == peer_port]
        for c in conns:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.shutdown(socket.SHUT_RD)  # wakes the thread's recv; nothing goes on the wire
        return bool(conns)

    def drop_connections(self) -> None:
        """Close every accepted connection (pooled connections see a FIN)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def close(self) -> None:
        self._closed = True
        self.lsock.close()
        self.drop_connections()


class EchoBackend:
    """Echoes raw bytes back (the opaque relay target for non-HTTP bytes)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lsock = socket.create_server((host, 0))
        self.host, self.port = self.lsock.getsockname()
        self.received = bytearray()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    self.received.extend(data)
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self.lsock.close()
