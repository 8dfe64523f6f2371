"""Send corpus cases to one HTTP endpoint and record what came back; runs as a process.

    python -m tests.reliability.corpus_client IN.json OUT.json

IN.json: ``{"host": H, "port": P, "good": b64, "cases": [{"name", "chunks": [b64...],
"responses": n}], "status_port": agent admin port (optional)}``.  For every case: open a connection, write each chunk with its own
``sendall`` (so a split request reaches the peer as separate writes), read up to
``responses`` HTTP responses under a deadline, then send the ``good`` request on a fresh
connection (the server must still serve).  Loopback only; every read has a deadline.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import sys
import time
import urllib.request
from typing import Any

CASE_DEADLINE_S = 3.0


def _parse_one(buf: bytearray, head_only: bool) -> dict[str, Any] | None:
    """Take one complete response off ``buf`` (Content-Length framed; no body for HEAD)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        status = 0  # not an HTTP response (a tunnelled peer's bytes)
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    try:
        n = int(headers.get("content-length", "0") or 0)
    except ValueError:
        n = 0
    if head_only:
        n = 0
    if len(buf) < end + 4 + n:
        return None
    body = bytes(buf[end + 4:end + 4 + n])
    del buf[:end + 4 + n]
    return {"status": status, "backend": headers.get("x-backend"),
            "server": headers.get("server"), "body": body[:160].decode("latin-1")}


def exchange(host: str, port: int, chunks: list[bytes], owed: int,
             deadline_s: float = CASE_DEADLINE_S) -> dict[str, Any]:
    """Write ``chunks``, read up to ``owed`` responses; end is "eof", "open" or "timeout"."""
    t0 = time.monotonic()
    out: dict[str, Any] = {"responses": [], "end": "timeout", "raw": ""}
    try:
        sock = socket.create_connection((host, port), timeout=deadline_s)
    except OSError as exc:
        out["end"] = f"connect_error: {exc}"
        return out
    buf = bytearray()
    head_only = b"".join(chunks).startswith(b"HEAD ")
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for c in chunks:
                sock.sendall(c)
        except OSError as exc:
            out["end"] = f"send_error: {exc.__class__.__name__}"
        while len(out["responses"]) < owed and out["end"] == "timeout":
            left = deadline_s - (time.monotonic() - t0)
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                break
            except OSError:
                data = b""  # reset: the peer closed
            if not data:
                out["end"] = "eof"
                if buf:
                    out["raw"] = bytes(buf[:80]).decode("latin-1")
                break
            buf.extend(data)
            while (r := _parse_one(buf, head_only)) is not None:
                out["responses"].append(r)
        if len(out["responses"]) >= owed:
            out["end"] = "answered"
    out["ms"] = round((time.monotonic() - t0) * 1000, 1)
    return out


def _counters(port: int) -> dict[str, int]:
    """The agent's datapath counters from its admin /status (loopback)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.loads(r.read())["datapath"]["counters"]  # type: ignore[no-any-return]


def run(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run every case of ``spec`` in order; each result carries the follow-up good request."""
    host, port = spec["host"], int(spec["port"])
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"corpus traffic goes to loopback only, not {host}")
    good = base64.b64decode(spec["good"])
    status_port = spec.get("status_port")
    results = []
    for case in spec["cases"]:
        chunks = [base64.b64decode(c) for c in case["chunks"]]
        before = _counters(status_port) if status_port else {}
        r = exchange(host, port, chunks, int(case["responses"]))
        if status_port:
            after = _counters(status_port)
            r["counters"] = {k: v - before.get(k, 0) for k, v in after.items()
                             if v != before.get(k, 0)}
        r["name"] = case["name"]
        r["after"] = exchange(host, port, [good], 1)
        results.append(r)
    return results


def main(argv: list[str]) -> int:
    with open(argv[1]) as fh:
        spec = json.load(fh)
    with open(argv[2], "w") as fh:
        json.dump(run(spec), fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
