"""The one hash the kernel and user space share: FNV-1a 64 (http_parse.h ``sm_fnv``)."""

from __future__ import annotations

from bpf.limits import limit

FNV_OFFSET = limit("FNV_OFFSET")
FNV_PRIME = limit("FNV_PRIME")
_MASK = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64 of ``data``, exactly as the kernel computes it byte by byte."""
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & _MASK
    return h


# well-known hashes handed to the C programs as -DSM_HASH_* (see loader.cflags)
WELL_KNOWN: dict[str, bytes] = {
    "HOST": b"host",
    "CONTENT_LENGTH": b"content-length",
    "TRANSFER_ENCODING": b"transfer-encoding",
    "CHUNKED": b"chunked",
    "HTTP11": b"HTTP/1.1",
    "HEAD": b"HEAD",
    "SCHEME_HTTP": b"http",
    "CONNECTION": b"connection",
    "CLOSE": b"close",
    # request methods the kernel routes itself (Envoy refuses unknown ones with 400; the
    # slow path does the same)
    "M_GET": b"GET",
    "M_POST": b"POST",
    "M_PUT": b"PUT",
    "M_DELETE": b"DELETE",
    "M_OPTIONS": b"OPTIONS",
    "M_PATCH": b"PATCH",
    "M_TRACE": b"TRACE",
}

# header names http_parse.h consumes itself (sm_header_name_done): their values never reach a
# header slot registered in sm_hdrslots_v1, so a condition on one cannot be checked there
PARSER_HEADERS: frozenset[str] = frozenset(
    WELL_KNOWN[k].decode() for k in ("HOST", "CONTENT_LENGTH", "TRANSFER_ENCODING"))
