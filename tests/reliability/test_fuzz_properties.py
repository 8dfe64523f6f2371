"""Property and fuzz tests for what parses untrusted input in user space (bounded for CI;
scripts/fuzz_long.py runs the same properties for long runs).

Covered elsewhere and not repeated here: random route configs never crash the translator and
the model's last-match equals a first-match reference (tests/unit/test_translator_properties.py),
and the model never crashes on arbitrary request fields (same file).  Added here:

* the slow path's HTTP/1.1 parser (bpf.splice.read_request) on random bytes and on random
  mutations of valid requests, fed through a real socket in random pieces: it returns a
  request, or says NotHttp / BadRequest / EOF; nothing else;
* for valid requests: parsing is independent of how the bytes were split, consumes exactly
  one request (the pipelined rest stays buffered), and the model routes the parsed request
  exactly as it routes the request that was generated (parser + model == reference);
* random listener / cluster / endpoint resources (mutated JSON) never crash the translator:
  only ResourceError or TranslationError, and whatever translates yields usable tables.
"""

from __future__ import annotations

import copy
import itertools
import socket
import threading
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf.splice import BadRequest, NotHttp, ParsedRequest, read_request
from integration.demo import mesh
from tests.reliability.harness import REVIEWS_ROUTES
from translator import TranslationError, translate, validate_resource
from translator.model import Request, route
from translator.resources import ResourceError, ResourceSet, parse_resource, to_json

CI_EXAMPLES = 300
SETTINGS = settings(max_examples=CI_EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_TABLES = translate(mesh.mesh_resources(
    {c: [("127.20.0.1", 1000)] for c in mesh.CLUSTERS}, REVIEWS_ROUTES))
_TABLE = _TABLES.route_tables[mesh.ROUTE_CONFIG]


def parse_pieces(pieces: list[bytes]) -> tuple[object, bytes]:
    """Feed ``pieces`` (one send each) to read_request over a socketpair; return its result
    (a ParsedRequest or the exception) and what stayed buffered."""
    a, b = socket.socketpair()
    b.settimeout(5)

    def feed() -> None:
        try:
            for p in pieces:
                a.sendall(p)
        except OSError:
            pass  # the reader gave up early (NotHttp/BadRequest) and closed
        finally:
            a.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    buf = bytearray()
    try:
        try:
            first = b.recv(1 << 16)
            if not first:
                raise EOFError
            buf.extend(first)
            result: object = read_request(b, buf)
        except (NotHttp, BadRequest, EOFError) as exc:
            result = exc
    finally:
        b.close()
        t.join(5)
        a.close()
    return result, bytes(buf)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[i:j] for i, j in itertools.pairwise(points) if j > i]


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789 -_./:;=,", max_size=20
                ).map(str.strip)
PATHS = st.sampled_from(["/", "/fast", "/slow", "/slow/x", "/a/b?q=1", "/reviews", "/x%20y"])
HOSTS = st.sampled_from(["reviews:9080", "reviews", "details:9080", "ratings", "127.10.0.3:9080",
                         "nope.example", "REVIEWS:9080"])
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])


@st.composite
def valid_request(draw: st.DrawFn) -> tuple[Request, bytes]:
    """A structured request and its HTTP/1.1 bytes (random header case, optional body)."""
    method, path, host = draw(METHODS), draw(PATHS), draw(HOSTS)
    headers = draw(st.lists(st.tuples(TOKEN, VALUE), max_size=6,
                            unique_by=lambda h: h[0]).filter(
        lambda hs: all(n not in ("host", "content-length", "transfer-encoding", "connection")
                       for n, _ in hs)))
    if draw(st.booleans()):
        headers.append(("end-user", draw(st.sampled_from(["jason", "bob"]))))
    body = draw(st.binary(max_size=64))
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{draw(st.sampled_from([n, n.upper(), n.title()]))}: {v}" for n, v in headers]
    framing = draw(st.sampled_from(["length", "chunked", "none"])) if body else "none"
    payload = b""
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
    req = Request(method=method, authority=host, path=path,
                  headers=tuple((n.lower(), v) for n, v in headers))
    return req, raw


@SETTINGS
@given(st.binary(max_size=2048), st.lists(st.integers(0, 4096), max_size=4))
def test_random_bytes_never_crash_the_slow_path_parser(data: bytes, cuts: list[int]) -> None:
    result, _ = parse_pieces(split(data, cuts) or [b""])
    assert isinstance(result, ParsedRequest | NotHttp | BadRequest | EOFError), result
    if isinstance(result, ParsedRequest):
        assert data.startswith(result.raw)


@SETTINGS
@given(valid_request(), st.lists(st.integers(0, 4096), max_size=5), valid_request())
def test_valid_requests_parse_the_same_however_split_and_route_like_the_model(
        gen: tuple[Request, bytes], cuts: list[int], nxt: tuple[Request, bytes]) -> None:
    want, raw = gen
    result, rest = parse_pieces(split(raw + nxt[1], cuts))
    assert isinstance(result, ParsedRequest), result
    assert result.raw == raw, "consumed more or less than one request"
    assert nxt[1].startswith(rest), "the pipelined rest was not left buffered"
    got = Request(method=result.method, authority=result.authority,
                  path=result.path, headers=tuple((n, v) for n, v in result.headers
                                                  if n not in ("host", "content-length",
                                                               "transfer-encoding")))
    assert route(_TABLE, got, _TABLES.clusters) == route(_TABLE, want, _TABLES.clusters)


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    """A valid request with random byte edits (flip, insert, delete, duplicate a line)."""
    raw = bytearray(draw(valid_request())[1])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        i = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == 0 and raw:
            raw[i] = draw(st.integers(0, 255))
        elif op == 1:
            raw[i:i] = draw(st.sampled_from([b"\r\n", b"\x00", b" ", b":", b"\r", b"\n",
                                             b"Content-Length: 3\r\n",
                                             b"Transfer-Encoding: chunked\r\n"]))
        elif op == 2 and raw:
            del raw[i]
        else:
            lines = bytes(raw).split(b"\r\n")
            j = draw(st.integers(0, len(lines) - 1))
            lines.insert(j, lines[j])
            raw = bytearray(b"\r\n".join(lines))
    return bytes(raw)


@SETTINGS
@given(mutated_request(), st.lists(st.integers(0, 4096), max_size=3))
def test_mutated_requests_never_crash_and_never_overread(data: bytes, cuts: list[int]) -> None:
    result, _ = parse_pieces(split(data, cuts))
    assert isinstance(result, ParsedRequest | NotHttp | BadRequest | EOFError), result
    if isinstance(result, ParsedRequest):
        assert data.startswith(result.raw)
        names = [n for n, _ in result.headers]
        assert names.count("host") <= 1 and names.count("content-length") <= 1
        assert not ("content-length" in names and "transfer-encoding" in names)


_GOOD_JSON = [to_json(m) for _, _, m in mesh.mesh_resources(
    {c: [("127.20.0.1", 1000 + i)] for i, c in enumerate(mesh.CLUSTERS)}, REVIEWS_ROUTES
).items()]
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=8),
                 st.just([]), st.just({}), st.just("::1"), st.just("999.0.0.1"),
                 st.just(-1), st.just(70000), st.just("ROUND_ROBIN"), st.just("MAGLEV"))


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k != "@type":
                out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mangled_resources(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The good mesh as JSON with a few random fields deleted or replaced by junk."""
    objs = copy.deepcopy(_GOOD_JSON)
    for _ in range(draw(st.integers(1, 4))):
        obj = objs[draw(st.integers(0, len(objs) - 1))]
        paths = _paths(obj)
        if not paths:
            continue  # every field of this one was deleted already
        path = paths[draw(st.integers(0, len(paths) - 1))]
        parent = obj
        for p in path[:-1]:
            parent = parent[p]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JUNK)
    return objs


@SETTINGS
@given(mangled_resources())
def test_random_listeners_clusters_endpoints_never_crash_the_translator(
        objs: list[dict[str, Any]]) -> None:
    rs = ResourceSet()
    try:
        for o in objs:
            msg = parse_resource(o)
            rs.add(msg)
    except ResourceError:
        return  # not decodable as its type: refused at the edge
    try:
        for type_url, _, msg in rs.items():
            validate_resource(type_url, msg)
        tables = translate(rs)
    except TranslationError:
        return
    for rt in tables.route_tables.values():
        d = route(rt, Request(authority="reviews:9080", path="/x"), tables.clusters)
        assert d.to_json()["route_config"] == rt.name
