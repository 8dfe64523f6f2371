"""Response framing on pooled connections (sk_skb.bpf.c, http_frame.h), byte-exact.

A scripted backend answers each request with raw bytes written in the parts the test gives
(TCP_NODELAY, each part sent before the next is written, so each arrives as its own skb).
The client reads exactly the response's bytes; the kernel's own account says whether it
framed the response to its last byte (resp_done, the slot idle again) or gave up on the
connection (resp_lost / "connection: close": the slot retired).  A framing that ends early
drops the rest as unasked-for bytes (resp_lost, the client times out); one that ends late
never counts resp_done.  Heads are split at every byte, sent a byte per skb, padded so the
interesting lines straddle the framer's 256-byte window, and carry header names in any case
and names that only start like Content-Length, Transfer-Encoding or Connection.  Random
responses, cut at random bytes, frame where a byte-by-byte Python model of the framing
says (``model_frame``).
"""

from __future__ import annotations

import ctypes as C
import fcntl
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from bpf import layout as L
from bpf.limits import limit
from bpf.maps import PinnedMap
from integration.datapath_info import request_stats_of
from integration.processes import poll_until
from tests.kernel.conftest import Client, Mesh
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost

VIP, PORT = "127.10.0.13", 8095
HOST = "framing.test"
SIOCOUTQNSD = 0x894B  # bytes in the send queue not yet sent (linux/sockios.h)
SENT_TIMEOUT = 5.0

NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 10:12:18 GMT\r\n"
         b"Content-Type: text/html\r\nContent-Length: 15\r\n"
         b"Last-Modified: Tue, 24 Nov 2026 09:00:00 GMT\r\nConnection: keep-alive\r\n"
         b'ETag: "6a1f0b2c-f"\r\nAccept-Ranges: bytes\r\n\r\nhello, framing!')
CHUNKED = (b"HTTP/1.1 503 Service Unavailable\r\nX-A: b\r\nTransfer-Encoding: chunked\r\n"
           b"Content-Type: text/plain\r\n\r\n5;ext=1\r\nhello\r\n6 ; name=\"v\"\r\n world\r\n"
           b"1A\r\n" + b"z" * 26 + b"\r\n0\r\nX-Trailer: t\r\nX-T2: u\r\n\r\n")
INTERIM = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
           b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
# names that start like the ones that frame a response, in any case, around the real one
DECOYS = (b"HTTP/1.1 201 Created\r\nContent-Length-Foo: 9\r\ncontent-lengthx: 3\r\n"
          b"X-Content-Length: 7\r\nTransfer-Encoding-X: chunked\r\n"
          b"Transfer-Encodin: chunked\r\nCONTENT-LENGTH: 4\r\nConnectionx: close\r\n"
          b"Connectio: close\r\nConnection: closed\r\nX-Connection: close\r\n\r\nbody")
SPLIT_CASES = {"nginx": (NGINX, "2xx"), "chunked": (CHUNKED, "5xx"),
               "interim": (INTERIM, "4xx"), "decoys": (DECOYS, "2xx")}


class ScriptedBackend:
    """Answers ``GET /r/N`` with the parts registered as N, each sent on its own."""

    def __init__(self) -> None:
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self.lsock.getsockname()
        self._scripts: dict[str, list[bytes]] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self.errors: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def script(self, parts: list[bytes]) -> str:
        with self._lock:
            self._next += 1
            path = f"/r/{self._next}"
            self._scripts[path] = parts
        return path

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    path = head.split(b" ", 2)[1].decode()
                    with self._lock:
                        parts = self._scripts.pop(path)
                    for p in parts:
                        conn.sendall(p)
                        self._wait_sent(conn)
            except (OSError, KeyError, ValueError) as exc:  # ValueError: closed by close()
                self.errors.append(repr(exc))

    @staticmethod
    def _wait_sent(conn: socket.socket) -> None:
        """Until the part has left the send queue: the next write makes a segment of its own."""
        deadline = time.monotonic() + SENT_TIMEOUT
        buf = bytearray(4)
        while time.monotonic() < deadline:
            fcntl.ioctl(conn.fileno(), SIOCOUTQNSD, buf)
            if struct.unpack("i", buf)[0] == 0:
                return
            time.sleep(0)  # yield the GIL to the other backend threads
        raise TimeoutError("response part not sent")

    def close(self) -> None:
        self.lsock.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


class Slots:
    """The scripted backend's pool slots: (state, gen) of each, read from the pinned map."""

    def __init__(self, mesh: Mesh, backend: ScriptedBackend) -> None:
        addr = f"{backend.host}:{backend.port}"
        ep = next(e["id"] for e in mesh.dp.dump()["endpoints"] if e["addr"] == addr)
        self.sids = [ep * limit("POOL_PER_ENDPOINT") + j for j in range(limit("POOL_PER_ENDPOINT"))]
        self.map = PinnedMap(mesh.dp.pin_dir / "sm_slots_v1", C.c_uint32, L.Slot)

    def view(self) -> list[tuple[int, int]]:
        out = []
        for sid in self.sids:
            s = self.map.get(sid)
            out.append((int(s.state), int(s.gen)) if s is not None else (0, 0))
        return out

    def retired_since(self, before: list[tuple[int, int]]) -> bool:
        """A slot was marked dead, or the agent already replaced it (its gen moved on)."""
        return any(st == limit("SLOT_DEAD") or (gen != g0 and st0 != limit("SLOT_EMPTY"))
                   for (st, gen), (st0, g0) in zip(self.view(), before, strict=True))


class Rig:
    def __init__(self, mesh: Mesh, client: Client, backend: ScriptedBackend) -> None:
        self.mesh, self.client, self.backend = mesh, client, backend
        self.slots = Slots(mesh, backend)
        client.connect("a", VIP, PORT)

    def exchange(self, parts: list[bytes], method: str = "GET") -> dict[str, int]:
        """One request; the response written in ``parts``; counter deltas."""
        raw = b"".join(parts)
        path = self.backend.script(parts)
        before = self.mesh.counters()
        self.client.send("a", f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        got = self.client.recv_n("a", len(raw))
        assert got == raw, (parts, got)
        after = self.mesh.counters()
        return {k: after[k] - before[k] for k in ("fast", "resp_done", "resp_lost")}

    def wait_retired(self, before: list[tuple[int, int]]) -> None:
        poll_until(lambda: self.slots.retired_since(before), 5, "pool slot retired")

    def settled(self) -> None:
        """Until no slot is dead: the agent replaced the connections the kernel retired."""
        poll_until(lambda: all(st != limit("SLOT_DEAD") for st, _ in self.slots.view()), 5,
                   "retired pool slots replaced")

    def classes(self) -> dict[str, int]:
        addr = f"{self.backend.host}:{self.backend.port}"
        return {k[5]: n for k, n in request_stats_of(self.mesh.dp).items() if k[4] == addr}


DONE = {"fast": 1, "resp_done": 1, "resp_lost": 0}
LOST = {"fast": 1, "resp_done": 0, "resp_lost": 1}


@pytest.fixture
def rig(mesh: Mesh, client: Client) -> Iterator[Rig]:
    b = ScriptedBackend()
    try:
        mesh.apply(http_tables(VIP, PORT, [vhost("f", [HOST], [rule("/", action=to("c"))])],
                               [cluster("c", [b])]))
        yield Rig(mesh, client, b)
        assert not b.errors
    finally:
        b.close()


def _class_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
def test_response_split_in_two_at_every_byte(rig: Rig, case: str) -> None:
    raw, cls = SPLIT_CASES[case]
    classes = rig.classes()
    for k in range(1, len(raw)):
        assert rig.exchange([raw[:k], raw[k:]]) == DONE, (case, k, raw[:k])
    # the status code was read right wherever its digits were split
    assert _class_delta(classes, rig.classes()) == {cls: len(raw) - 1}


@pytest.mark.parametrize("size", [1, 3, 7, 10])
def test_head_in_many_small_skbs(rig: Rig, size: int) -> None:
    for raw in (NGINX, CHUNKED, DECOYS):
        assert rig.exchange([raw[i:i + size] for i in range(0, len(raw), size)]) == DONE


@pytest.mark.parametrize("name", [b"Content-Length", b"content-length", b"CONTENT-LENGTH",
                                  b"Content-length", b"cOnTeNt-LeNgTh"])
def test_content_length_name_in_any_case(rig: Rig, name: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\n" + name + b": 6\r\nX: y\r\n\r\nsix ch"
    assert rig.exchange([raw]) == DONE
    assert rig.exchange([raw[:20], raw[20:]]) == DONE  # mid-name


@pytest.mark.parametrize("name", [b"Transfer-Encoding", b"transfer-encoding",
                                  b"TRANSFER-ENCODING", b"Transfer-encoding"])
def test_transfer_encoding_name_in_any_case(rig: Rig, name: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\n" + name + b": chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert rig.exchange([raw]) == DONE
    assert rig.exchange([raw[:25], raw[25:]]) == DONE


@pytest.mark.parametrize("line", [b"Connection: close", b"connection: close",
                                  b"CONNECTION: Close", b"Connection:close"])
def test_connection_close_retires_the_pooled_connection(rig: Rig, line: bytes) -> None:
    # the backend keeps the connection open: only the kernel's framing retires it
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + line + b"\r\nX: y\r\n\r\nok"
    for parts in ([raw], [raw[:30], raw[30:]]):
        before = rig.slots.view()
        assert rig.exchange(parts) == DONE
        rig.wait_retired(before)
        rig.settled()


@pytest.mark.parametrize("line", [b"Connectionx: close", b"Connection: closed",
                                  b"X-Connection: close", b"Connection: keep-alive"])
def test_other_connection_lines_keep_the_pooled_connection(rig: Rig, line: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + line + b"\r\nX: y\r\n\r\nok"
    for _ in range(3):
        before = rig.slots.view()
        assert rig.exchange([raw]) == DONE
        # the kernel decided before the client got the bytes: a retired slot is still dead
        # or already replaced (gen moved on) at this point
        assert not rig.slots.retired_since(before)


def test_lines_longer_than_the_window(rig: Rig) -> None:
    win = limit("RESP_WIN")
    raw = (b"HTTP/1.1 200 " + b"R" * (win + 40) + b"\r\nX-Long: " + b"a" * (4 * win)
           + b"\r\nX-" + b"n" * (2 * win) + b": v\r\nContent-Length: 3\r\n"
           + b"Set-Cookie: " + b"c" * (win - 3) + b"\r\n\r\nabc")
    assert rig.exchange([raw]) == DONE
    for k in range(1, len(raw), 11):
        assert rig.exchange([raw[:k], raw[k:]]) == DONE, k


@pytest.mark.parametrize("framing", [b"Content-Length: 3\r\n\r\nabc",
                                     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                                     b"Connection: close\r\nContent-Length: 3\r\n\r\nabc"])
def test_lines_across_the_window_edge(rig: Rig, framing: bytes) -> None:
    """One skb; a pad moves the line that frames the response across the 256-byte window."""
    win = limit("RESP_WIN")
    for at in range(win - 30, win + 10):  # where the framing line starts
        pad = b"X-Pad: " + b"p" * (at - 17 - 9) + b"\r\n"
        raw = b"HTTP/1.1 200 OK\r\n" + pad + framing
        assert raw.index(framing) == at
        assert rig.exchange([raw]) == DONE, at
        rig.settled()


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_ignore_their_framing_headers(rig: Rig, status: int) -> None:
    raw = f"HTTP/1.1 {status} X\r\nContent-Length: 100\r\nETag: \"e\"\r\n\r\n".encode()
    for k in (0, 12, 30):
        assert rig.exchange([raw[:k], raw[k:]] if k else [raw]) == DONE


def test_head_request_gets_no_body(rig: Rig) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nTransfer-Encoding: chunked\r\n\r\n"
    for k in (0, 20, 40):
        assert rig.exchange([raw[:k], raw[k:]] if k else [raw], method="HEAD") == DONE


@pytest.mark.parametrize("raw", [b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nuntil close",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
                                 b"HTTP/1.1 200 OK\r\nContent-Length-X: 2\r\n\r\nok"],
                         ids=["close-delimited", "extra-bytes", "decoy-only"])
def test_unframed_responses_retire_the_connection(rig: Rig, raw: bytes) -> None:
    before = rig.slots.view()
    assert rig.exchange([raw]) == LOST
    assert rig.slots.retired_since(before)
    assert rig.exchange([NGINX]) == DONE  # the next request on another pooled connection


@pytest.mark.parametrize("line,body", [
    (b"Content-Length:  000000000012", b"twelve bytes"),  # digits past the first word
    (b"Content-Length:\t7 ", b"seven b"),
    (b"content-length: 1 0", b"ten bytes!"),  # other bytes do not count, as byte by byte
    (b"Transfer-Encoding:   chunked", b"4\r\nfour\r\n0\r\n\r\n"),
    (b"TRANSFER-ENCODING: \tChunked", b"4\r\nfour\r\n0\r\n\r\n"),
    (b"Transfer-Encoding: chun ked", b"4\r\nfour\r\n0\r\n\r\n"),  # spaces are not hashed
], ids=["cl-long", "cl-tab", "cl-space", "te-spaces", "te-tab-case", "te-inner-space"])
def test_framing_values(rig: Rig, line: bytes, body: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\nServer: x\r\n" + line + b"\r\nX-Pad: " + b"p" * 30 + b"\r\n\r\n"
    raw += body
    assert rig.exchange([raw]) == DONE
    at = raw.index(line) + len(line) // 2
    assert rig.exchange([raw[:at], raw[at:]]) == DONE


@pytest.mark.parametrize("value,retired", [(b"close", True), (b"  Close", True),
                                           (b"cl ose", True), (b"keep-alive", False),
                                           (b"xclose", False), (b"closer", False)])
def test_connection_values(rig: Rig, value: bytes, retired: bool) -> None:
    raw = b"HTTP/1.1 200 OK\r\nConnection:" + value + b"\r\nContent-Length: 2\r\n\r\nok"
    before = rig.slots.view()
    assert rig.exchange([raw]) == DONE
    assert rig.slots.retired_since(before) == retired
    rig.settled()


def test_malformed_header_lines(rig: Rig) -> None:
    # a line without ':' does not spoil the next name (it did in the byte loop's hash)
    raw = b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 2\r\n\r\nok"
    assert rig.exchange([raw]) == DONE
    assert rig.exchange([raw[:20], raw[20:]]) == DONE
    # a name with a CR in it is no name that frames a response: close-delimited, retired
    raw = b"HTTP/1.1 200 OK\r\nContent-Length\r: 2\r\n\r\nok"
    assert rig.exchange([raw]) == LOST
    rig.settled()
    assert rig.exchange([raw[:20], raw[20:]]) == LOST


def model_frame(raw: bytes, head_request: bool = False) -> tuple[int, bool, int] | None:
    """The framing http_frame.h implements, byte by byte in Python: (bytes the response
    takes, connection: close, status) or None when the kernel does not frame it."""
    phase, line, status, name, value = "status", 0, 0, b"", b""
    cl: int | None = None
    left = 0
    chunked = close = False
    in_ = ""
    for i, c in enumerate(raw):
        ch = bytes([c])
        if phase == "status":
            if 9 <= line < 12 and ch.isdigit():
                status = status * 10 + c - 48
            line += 1
            if ch == b"\n":
                phase, line, name = "hname", 0, b""
        elif phase == "hname":
            if ch == b"\n":
                if line > 1:
                    line, name = 0, b""
                    continue
                if 100 <= status < 200:  # interim: the final response follows
                    phase, line, status, cl, chunked = "status", 0, 0, None, False
                    continue
                if head_request or status in (204, 304):
                    return i + 1, close, status
                if chunked:
                    phase, left, line = "csize", 0, 0
                elif cl is not None:
                    if cl == 0:
                        return i + 1, close, status
                    phase, left = "body", cl
                else:
                    return None  # close-delimited
                continue
            line += 1
            if ch == b":":
                in_ = {b"content-length": "cl", b"transfer-encoding": "te",
                       b"connection": "conn"}.get(name.lower(), "")
                if in_ == "cl":
                    cl = 0
                phase, value = "hval", b""
            else:
                name += ch
        elif phase == "hval":
            if ch == b"\n":
                chunked |= in_ == "te" and value.lower() == b"chunked"
                close |= in_ == "conn" and value.lower() == b"close"
                phase, line, name, in_ = "hname", 0, b"", ""
            elif ch in b" \t\r":
                pass
            elif in_ == "cl" and ch.isdigit():
                cl = (cl or 0) * 10 + c - 48
            else:
                value += ch
        elif phase == "body":
            left -= 1
            if left == 0:
                return i + 1, close, status
        elif phase == "csize":  # well-formed sizes only (the generator makes no others)
            if ch == b"\n":
                phase, line = ("cdata" if left else "trailer"), 0
            elif ch == b";":
                phase = "cext"
            elif ch in b"0123456789abcdefABCDEF" and line == 0:
                left = left * 16 + int(ch, 16)
            elif ch in b" \t\r":
                line = 1
        elif phase == "cext":
            if ch == b"\n":
                phase, line = ("cdata" if left else "trailer"), 0
        elif phase == "cdata":
            left -= 1
            if left == 0:
                phase = "ccrlf"
        elif phase == "ccrlf":
            if ch == b"\n":
                phase, left, line = "csize", 0, 0
        elif phase == "trailer":
            if ch == b"\n":
                if line <= 1:
                    return i + 1, close, status
                line = 0
            else:
                line += 1
    return None


def _random_response(rnd: random.Random) -> bytes:
    def case(s: str) -> bytes:
        return "".join(c.upper() if rnd.random() < 0.5 else c for c in s).encode()

    def ws() -> bytes:
        return rnd.choice([b"", b" ", b" ", b"  ", b"\t", b" \t"])

    lines = [b"Server: nginx/1.22.1", b"Date: Thu, 26 Nov 2026 10:12:18 GMT",
             b"X-Long: " + b"v" * rnd.randrange(200, 700), b"Content-Type: text/html",
             b"Content-Length-Foo: 9", b"Connectionx: close", b"Transfer-Encodin: chunked",
             b"ETag: \"6a1f0b2c-f\"", b"x: y", b"Content-Typ: a", b"Connection:" + ws()
             + case("keep-alive"), case("x-content-length") + b": 3"]
    head = [rnd.choice(lines) for _ in range(rnd.randrange(0, 7))]
    body = bytes(rnd.randrange(97, 123) for _ in range(rnd.randrange(0, 300)))
    if rnd.random() < 0.2:
        head.append(case("connection") + b":" + ws() + case("close") + ws())
    if rnd.random() < 0.35:
        head.append(case("transfer-encoding") + b":" + ws() + case("chunked"))
        out = b""
        for i in range(0, len(body), 37):
            part = body[i:i + 37]
            ext = rnd.choice([b"", b";a=b", b" ;x"])
            out += b"%x%s\r\n%s\r\n" % (len(part), ext, part)
        trailers = rnd.choice([b"", b"X-T: 1\r\n", b"A: b\r\nC: d\r\n"])
        body = out + b"0\r\n" + trailers + b"\r\n"
    else:
        head.append(case("content-length") + b":" + ws() + b"%d" % len(body) + ws())
    rnd.shuffle(head)
    status = rnd.choice([200, 201, 404, 503])
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" if rnd.random() < 0.15 else b""
    return (interim + b"HTTP/1.1 %d X\r\n" % status + b"".join(h + b"\r\n" for h in head)
            + b"\r\n" + body)


def test_random_responses_frame_as_the_model_says(rig: Rig) -> None:

    rnd = random.Random(4)
    classes, want_classes = rig.classes(), Counter[str]()
    for n in range(150):
        raw = _random_response(rnd)
        want = model_frame(raw)
        assert want is not None and want[0] == len(raw), raw
        want_classes[f"{want[2] // 100}xx"] += 1
        cuts = sorted(rnd.sample(range(1, len(raw)), min(len(raw) - 1, rnd.randrange(0, 4))))
        parts = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        before = rig.slots.view()
        assert rig.exchange(parts) == DONE, (n, parts)
        if want[1]:  # connection: close
            rig.wait_retired(before)
            rig.settled()
        else:
            assert not rig.slots.retired_since(before), (n, raw)
    assert _class_delta(classes, rig.classes()) == want_classes
