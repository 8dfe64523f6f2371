"""The malformed-HTTP corpus, as data: every case with its documented expected outcome.

Each :class:`HttpCase` is the exact bytes a client writes on one connection (optionally split
into several writes), how many responses a well-behaved server owes it, and what sockmesh
must do with it:

``REJECT``  "400 and close": an HTTP/1.1 request a strict parser must refuse (Envoy answers
            4xx/5xx locally).  sockmesh may answer any 4xx/5xx or close the connection; no
            backend may answer it.
``ROUTE``   a valid request: routed to the cluster Envoy's route table picks for it (kernel
            path or slow path, whichever the kernel decides).
``SLOW``    a valid request the kernel does not handle itself (HTTP/1.0, absolute-form,
            pipelining, parse limits): the kernel hands it to the user-space slow path, which
            routes it where Envoy routes it.
``TUNNEL``  not HTTP/1.x at all (TLS ClientHello, the HTTP/2 preface, random bytes): relayed
            as a plain byte stream to an endpoint of the service's catch-all route.

``envoy_note`` documents a case where a default-configured Envoy deliberately differs (for
instance HTTP/1.0, which Envoy refuses with 426 unless ``accept_http_10`` is set).

Paths are written with the placeholder ``/_P_``; the runner replaces it with the prefix of
the route under test (``/fast`` for the kernel path, ``/slow`` for a regex route, which the
kernel leaves to the slow path).  Host is ``reviews:9080`` (the demo mesh's reviews service).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

REJECT = "reject"
ROUTE = "route"
SLOW = "slow"
TUNNEL = "tunnel"
OUTCOMES = (REJECT, ROUTE, SLOW, TUNNEL)

HOST = b"reviews:9080"
P = b"/_P_"


@dataclass(frozen=True)
class HttpCase:
    """One connection's worth of client bytes and what must happen to it."""

    name: str
    family: str
    raw: bytes
    expect: str
    responses: int = 1  # responses owed for the whole connection (pipelining: several)
    splits: tuple[int, ...] = ()  # write boundaries (byte offsets into raw)
    jason: bool = False  # carries end-user: jason (a header-dependent route)
    envoy_note: str = ""
    # the kernel dispatches a request's head before its body has been checked: a body
    # framing error is found after the head was routed (to Envoy's cluster), and the pooled
    # connection is retired; the slow path checks the whole request first (400)
    kernel_streams_body: bool = False

    def materialize(self, prefix: bytes) -> bytes:
        """The bytes to send, with the route prefix in place of the placeholder."""
        return self.raw.replace(P, prefix)



def req(method: bytes = b"GET", target: bytes = P + b"/x", version: bytes = b"HTTP/1.1",
        headers: list[bytes] | None = None, body: bytes = b"", host: bool = True) -> bytes:
    """Build request bytes; ``headers`` are raw lines (no CRLF), written verbatim."""
    lines = [method + b" " + target + b" " + version]
    if host:
        lines.append(b"Host: " + HOST)
    lines += headers or []
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


JASON = b"end-user: jason"
STRICTER = "sockmesh is stricter than Envoy, which "


def _framing() -> list[HttpCase]:
    f = "framing"
    c = [
        HttpCase("cl_and_te", f, req(b"POST", headers=[b"Content-Length: 5",
                 b"Transfer-Encoding: chunked"], body=b"0\r\n\r\n"), REJECT),
        HttpCase("te_and_cl", f, req(b"POST", headers=[b"Transfer-Encoding: chunked",
                 b"Content-Length: 5"], body=b"0\r\n\r\n"), REJECT),
        HttpCase("cl_duplicate_conflicting", f, req(b"POST", headers=[b"Content-Length: 1",
                 b"Content-Length: 2"], body=b"ab"), REJECT),
        HttpCase("cl_negative", f, req(b"POST", headers=[b"Content-Length: -1"]), REJECT),
        HttpCase("cl_overflow_u64", f, req(b"POST", headers=[
            b"Content-Length: 18446744073709551617"]), REJECT),
        HttpCase("cl_huge_digits", f, req(b"POST", headers=[
            b"Content-Length: " + b"9" * 40]), REJECT),
        HttpCase("cl_plus_sign", f, req(b"POST", headers=[b"Content-Length: +2"], body=b"ab"),
                 REJECT),
        HttpCase("cl_hex", f, req(b"POST", headers=[b"Content-Length: 0x2"], body=b"ab"),
                 REJECT),
        HttpCase("cl_inner_space", f, req(b"POST", headers=[b"Content-Length: 1 1"],
                 body=b"a" * 11), REJECT),
        HttpCase("cl_letters", f, req(b"POST", headers=[b"Content-Length: abc"]), REJECT),
        HttpCase("te_unknown_coding", f, req(b"POST", headers=[
            b"Transfer-Encoding: gzip"], body=b"ab"), REJECT),
        HttpCase("te_chunked_not_last", f, req(b"POST", headers=[
            b"Transfer-Encoding: chunked, gzip"], body=b"0\r\n\r\n"), REJECT),
        HttpCase("chunk_size_not_hex", f, req(b"POST", headers=[
            b"Transfer-Encoding: chunked"], body=b"zz\r\nab\r\n0\r\n\r\n"), REJECT),
        HttpCase("chunk_size_negative", f, req(b"POST", headers=[
            b"Transfer-Encoding: chunked"], body=b"-2\r\nab\r\n0\r\n\r\n"), REJECT),
        HttpCase("chunk_size_overflow", f, req(b"POST", headers=[
            b"Transfer-Encoding: chunked"], body=b"f" * 40 + b"\r\nab\r\n0\r\n\r\n"), REJECT),
        HttpCase("chunk_size_empty", f, req(b"POST", headers=[
            b"Transfer-Encoding: chunked"], body=b"\r\nab\r\n0\r\n\r\n"), REJECT),
        HttpCase("chunk_size_inner_space", f, req(b"POST", headers=[
            b"Transfer-Encoding: chunked"], body=b"1 1\r\n" + b"a" * 17 + b"\r\n0\r\n\r\n"),
            REJECT, envoy_note="Envoy routes it; sockmesh refuses white space inside a chunk "
            "size (RFC 9112 allows none there)"),
        HttpCase("chunk_data_longer_than_size", f, req(b"POST", headers=[
            b"Transfer-Encoding: chunked"], body=b"2\r\nabcdef\r\n0\r\n\r\n"), REJECT,
            kernel_streams_body=True,
            envoy_note="Envoy also streams: it routes the head before it finds the bad chunk"),
        HttpCase("cl_valid", f, req(b"POST", headers=[b"Content-Length: 5"], body=b"hello"),
                 ROUTE),
        HttpCase("cl_zero", f, req(b"POST", headers=[b"Content-Length: 0"]), ROUTE),
        HttpCase("chunked_valid", f, req(b"POST", headers=[b"Transfer-Encoding: chunked"],
                 body=b"5\r\nhello\r\n0\r\n\r\n"), ROUTE),
        HttpCase("chunked_with_extension", f, req(b"POST", headers=[
            b"Transfer-Encoding: chunked"], body=b"5;ext=1\r\nhello\r\n0\r\n\r\n"), ROUTE),
    ]
    return c


def _headers() -> list[HttpCase]:
    f = "headers"
    many = [b"x-h%d: v" % i for i in range(101)]
    return [
        HttpCase("obs_fold", f, req(headers=[b"x-a: 1", b"  folded"]), REJECT,
                 envoy_note=STRICTER + "unfolds obs-fold"),
        HttpCase("obs_fold_tab", f, req(headers=[b"x-a: 1", b"\tfolded"]), REJECT,
                 envoy_note=STRICTER + "unfolds obs-fold"),
        HttpCase("space_before_colon", f, req(headers=[b"x-a : 1"]), REJECT),
        HttpCase("line_without_colon", f, req(headers=[b"x-a 1"]), REJECT),
        HttpCase("empty_header_name", f, req(headers=[b": 1"]), REJECT),
        HttpCase("nul_in_value", f, req(headers=[b"x-a: a\x00b"]), REJECT),
        HttpCase("nul_in_name", f, req(headers=[b"x-\x00a: 1"]), REJECT),
        HttpCase("cr_in_value", f, req(headers=[b"x-a: a\rb"]), REJECT,
                 envoy_note=STRICTER + "accepts a bare CR inside a value"),
        HttpCase("cr_in_name", f, req(headers=[b"x-\ra: 1"]), REJECT),
        HttpCase("lf_in_name", f, req(headers=[b"x-\na: 1"]), REJECT),
        HttpCase("del_in_name", f, req(headers=[b"x-\x7fa: 1"]), REJECT),
        HttpCase("header_section_over_limit", f, req(headers=[b"x-big: " + b"a" * 70_000]),
                 REJECT),
        HttpCase("headers_over_100", f, req(headers=many), REJECT),
        HttpCase("headers_99", f, req(headers=many[:99]), ROUTE),
        HttpCase("value_8k", f, req(headers=[b"x-big: " + b"a" * 8192]), SLOW),
        HttpCase("obs_text_in_value", f, req(headers=[b"x-a: caf\xe9"]), ROUTE),
        HttpCase("tab_in_value", f, req(headers=[b"x-a: a\tb"]), ROUTE),
        HttpCase("header_route_jason", f, req(headers=[JASON]), ROUTE, jason=True),
        HttpCase("header_route_jason_upper_name", f, req(headers=[b"END-USER: jason"]), ROUTE,
                 jason=True),
        HttpCase("missing_host", f, req(host=False), REJECT),
        HttpCase("two_hosts_conflicting", f, req(headers=[b"Host: details:9080"]), REJECT),
        HttpCase("empty_host", f, req(host=False, headers=[b"Host:"]), REJECT),
    ]


def _request_line() -> list[HttpCase]:
    f = "request_line"
    return [
        HttpCase("absolute_form", f, req(target=b"http://reviews:9080" + P + b"/x", host=False,
                 headers=[b"Host: reviews:9080"]), SLOW),
        HttpCase("absolute_form_jason", f, req(target=b"http://reviews:9080" + P + b"/x",
                 host=False, headers=[b"Host: reviews:9080", JASON]), SLOW, jason=True),
        HttpCase("connect", f, b"CONNECT reviews:9080 HTTP/1.1\r\nHost: reviews:9080\r\n\r\n",
                 REJECT),
        HttpCase("asterisk_options", f, req(b"OPTIONS", target=b"*"), REJECT),
        HttpCase("http10_with_host", f, req(version=b"HTTP/1.0"), SLOW,
                 envoy_note="Envoy refuses HTTP/1.0 with 426 unless accept_http_10 is set"),
        HttpCase("http10_keepalive", f, req(version=b"HTTP/1.0",
                 headers=[b"Connection: keep-alive"]), SLOW,
                 envoy_note="Envoy refuses HTTP/1.0 with 426 unless accept_http_10 is set"),
        HttpCase("http09", f, b"GET " + P + b"/x\r\n\r\n", REJECT),
        HttpCase("version_http2_in_line", f, req(version=b"HTTP/2.0"), REJECT),
        HttpCase("version_garbage", f, req(version=b"HTTP/x.y"), REJECT),
        HttpCase("double_space", f, b"GET  " + P + b"/x HTTP/1.1\r\nHost: reviews:9080\r\n\r\n",
                 REJECT, envoy_note=STRICTER + "accepts two spaces after the method"),
        HttpCase("space_in_target", f, req(target=P + b"/a b"), REJECT),
        HttpCase("ctl_in_target", f, req(target=P + b"/a\x01b"), REJECT),
        HttpCase("lowercase_method", f, req(method=b"get"), REJECT),
        HttpCase("unknown_method", f, req(method=b"FOO"), REJECT),
        HttpCase("head_method", f, req(method=b"HEAD"), ROUTE),
        HttpCase("long_path_5k", f, req(target=P + b"/" + b"a" * 5000), SLOW),
        HttpCase("query_string", f, req(target=P + b"/x?a=1&b=%20"), ROUTE),
        HttpCase("percent_encoded", f, req(target=P + b"/%2e%2e/x"), ROUTE),
    ]


def _upgrade() -> list[HttpCase]:
    f = "upgrade"
    return [
        HttpCase("websocket_upgrade", f, req(headers=[
            b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]), ROUTE,
            envoy_note="Envoy answers 403 to an upgrade its HCM has no upgrade_configs for"),
        HttpCase("h2c_upgrade", f, req(headers=[b"Connection: Upgrade, HTTP2-Settings",
                 b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA"]), ROUTE),
    ]


def _pipelining() -> list[HttpCase]:
    f = "pipelining"
    a, b = req(), req(headers=[JASON])
    post = req(b"POST", headers=[b"Content-Length: 3"], body=b"abc")
    return [
        HttpCase("pipelined_2", f, a + b, SLOW, responses=2),
        HttpCase("pipelined_3_mixed", f, b + a + b, SLOW, responses=3),
        HttpCase("pipelined_after_body", f, post + b, SLOW, responses=2),
        HttpCase("pipelined_second_bad", f, a + req(headers=[b"x-a : 1"]), SLOW, responses=2),
    ]


def split_cases(prefix: bytes) -> list[HttpCase]:
    """One request split into two writes at every byte offset of its header section
    (built with the concrete route ``prefix`` so the offsets are the bytes on the wire)."""
    raw = req(headers=[JASON, b"x-other: 1"]).replace(P, prefix)
    head_len = raw.index(b"\r\n\r\n") + 4
    return [HttpCase(f"split_at_{k:03d}", "split_writes", raw, ROUTE, splits=(k,), jason=True)
            for k in range(1, head_len)]


def _non_http() -> list[HttpCase]:
    f = "not_http"
    rng = random.Random(7)  # fixed seed: the corpus is data, the same on every run
    hello = (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32))
             + b"\x00\x00\x02\x13\x01\x01\x00")
    out = [
        HttpCase("tls_client_hello", f, hello, TUNNEL),
        HttpCase("h2_preface", f, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", TUNNEL),
        HttpCase("nul_bytes", f, b"\x00" * 64, TUNNEL),
    ]
    for i in range(6):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(8, 400)))
        if data[:1].isupper():
            data = b"\xff" + data  # keep it unmistakably not a request line
        out.append(HttpCase(f"random_bytes_{i}", f, data, TUNNEL))
    return out


def corpus() -> list[HttpCase]:
    """Every case except the split-write sweep (see :func:`split_cases`)."""
    cases = _framing() + _headers() + _request_line() + _upgrade() + _pipelining() + _non_http()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases
