"""Paired low-rate latency: one client, one connection per scenario, short blocks in turn.

The client process (in the datapath's cgroup, so that its connection to the kernel path's
service VIP is spliced; every other destination is left alone by connect4) opens one
keep-alive connection per scenario and then sends blocks of requests, scenario after
scenario, one request at a time with a pause of ``pace_ms`` before each.  Within a block a
scenario runs as a paced wrk connection would (a request about every ``pace_ms``, its
proxy kept as warm as that rate keeps it; the block's first ``block_warm`` requests are not
timed); the blocks are short, so every scenario samples the same stretch of the shared
machine's load instead of whichever stretch its own run happened to fall in.  The bare
relay's connection is paired with the relay's pooled connection by file descriptor
(pidfd_getfd), as its sockops program would.

Each response is read until the backend's body (the same short body from every scenario),
so headers that proxies add do not matter.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from integration.bench.load import Spawn

SYS_PIDFD_GETFD = 438
REQUEST = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

CLIENT = r"""
import json, os, socket, sys, time
cpu, names, targets, n, block, block_warm, pace, req, end = json.loads(sys.argv[1])
if cpu is not None:
    os.sched_setaffinity(0, {int(cpu)})
req, end = req.encode(), end.encode()
socks = [socket.create_connection(tuple(t), timeout=5) for t in targets]
for s in socks:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print(json.dumps([s.fileno() for s in socks]), flush=True)
sys.stdin.readline()  # the harness paired the relay's connection
lat = [[] for _ in socks]
busy = [0.0] * len(socks)
for _ in range(-(-n // block)):
    for j, s in enumerate(socks):
        t_block = time.monotonic()
        for i in range(block_warm + block):
            time.sleep(pace)
            t = time.perf_counter_ns()
            s.sendall(req)
            buf = b""
            while not buf.endswith(end):
                try:
                    chunk = s.recv(65536)
                except OSError as exc:
                    sys.exit(f"{names[j]} {targets[j]}: {exc!r} after {buf[:200]!r}")
                if not chunk:
                    sys.exit(f"{names[j]} {targets[j]}: closed after {buf[:200]!r}")
                buf += chunk
            if i >= block_warm:
                lat[j].append(time.perf_counter_ns() - t)
        busy[j] += time.monotonic() - t_block
out = []
for x, b in zip(lat, busy):
    x.sort()
    out.append({"requests": len(x), "rps": len(x) / b, "p50_us": x[len(x) // 2] / 1000,
                "p90_us": x[len(x) * 90 // 100] / 1000, "p99_us": x[len(x) * 99 // 100] / 1000})
print(json.dumps(out))
"""

def response_body(addr: tuple[str, int]) -> bytes:
    """The body the backend at ``addr`` answers ``GET /`` with (read once, directly)."""
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(REQUEST.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError(f"{addr[0]}:{addr[1]} closed before answering")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        if length is None or not 0 < length <= 1024:
            raise RuntimeError("the backend's answer has no short Content-Length body")
        while len(body) < length:
            body += s.recv(4096)
        return body[:length]


def run(spawn: Spawn, targets: dict[str, tuple[str, int]], body: bytes, *, requests: int,
        pace_ms: float, cpu: str | None, relay: Any = None, relay_name: str = "floor",
        block: int = 100, block_warm: int = 10,
        timeout: float = 600.0) -> dict[str, dict[str, Any]]:
    """``requests`` timed paced requests per target, in blocks of ``block`` (after
    ``block_warm`` untimed ones) over one connection per target, target after target; per
    target ``{requests, rps, p50_us, p90_us, p99_us, errors, connections}`` (wrk's keys;
    rps: during its blocks).  ``relay`` (a floor.BareRelay without a cgroup) gets the
    ``relay_name`` connection as its client."""
    names = list(targets)
    arg = [cpu, names, [list(targets[k]) for k in names], requests, block, block_warm,
           pace_ms / 1000, REQUEST, (b"\r\n\r\n" + body).decode("latin-1")]
    proc = spawn([sys.executable, "-c", CLIENT, json.dumps(arg)],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with borrowed_fds(proc) as fds:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the paired latency client exited before connecting")
        if relay is not None:
            theirs = json.loads(line)[names.index(relay_name)]
            fds.append(getfd(proc.pid, theirs))
            relay.pair(fds[0], 0)
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip().splitlines() or ["no message"]
        raise RuntimeError(f"the paired latency client failed ({proc.returncode}): {why[-1]}")
    paths = json.loads(out.splitlines()[-1])
    return {k: {**p, "errors": 0, "connections": 1}
            for k, p in zip(names, paths, strict=True)}


@contextlib.contextmanager
def borrowed_fds(proc: subprocess.Popen[bytes]) -> Iterator[list[int]]:
    """A list for descriptors copied from ``proc`` (getfd); on the way out the process is
    killed if it still runs and the copies are closed."""
    fds: list[int] = []
    try:
        yield fds
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for fd in fds:
            os.close(fd)


def getfd(pid: int, fd: int) -> int:
    """A copy of process ``pid``'s descriptor ``fd`` (pidfd_getfd)."""
    libc = C.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            raise OSError(C.get_errno(), "pidfd_getfd")
        return int(got)
    finally:
        os.close(pidfd)

