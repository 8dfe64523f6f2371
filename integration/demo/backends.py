"""Identity backends for the demo: HTTP/1.1 keep-alive servers on loopback in one process.

Each answers every request with 200, header ``x-backend: NAME`` and body ``NAME``, after an
optional delay (the demo's slow ratings endpoint).  Run as a process::

    python -m integration.demo.backends NAME=IP[:PORT][@DELAY_MS] ...

It prints one JSON line ``{"NAME": port, ...}`` once every listener is bound, serves until
SIGTERM/SIGINT, and listens on 127.0.0.0/8 only.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import signal
import sys
from dataclasses import dataclass

MAX_HEAD = 16384


@dataclass
class Listener:
    name: str
    host: str
    port: int = 0
    delay_ms: float = 0.0
    requests: int = 0


def parse_spec(text: str) -> Listener:
    """``NAME=IP[:PORT][@DELAY_MS]`` -> Listener; loopback only."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise ValueError(f"{text!r}: expected NAME=IP[:PORT][@DELAY_MS]")
    addr, _, delay = rest.partition("@")
    host, _, port = addr.partition(":")
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{text!r}: backends listen on loopback only")
    return Listener(name, host, int(port or 0), float(delay or 0))


async def _serve_conn(lst: Listener, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    body = lst.name.encode()
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if len(head) > MAX_HEAD:
                return
            lines = head.decode("latin-1").split("\r\n")
            method = lines[0].split(" ", 1)[0]
            length = 0
            close = False
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v.strip() or 0)
                elif k == "connection" and v.strip().lower() == "close":
                    close = True
            if length:
                await reader.readexactly(length)
            if lst.delay_ms:
                await asyncio.sleep(lst.delay_ms / 1000)
            lst.requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\nx-backend: " + body
                         + b"\r\ncontent-type: text/plain\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\n\r\n"
                         + (b"" if method == "HEAD" else body))
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()


async def serve(listeners: list[Listener], ready: asyncio.Future[dict[str, int]] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve ``listeners`` until ``stop`` is set (forever when None)."""
    servers = []
    for lst in listeners:
        srv = await asyncio.start_server(
            functools.partial(_serve_conn, lst), lst.host, lst.port, reuse_address=True)
        lst.port = srv.sockets[0].getsockname()[1]
        servers.append(srv)
    ports = {lst.name: lst.port for lst in listeners}
    if ready is not None:
        ready.set_result(ports)
    else:
        print(json.dumps(ports), flush=True)
    stop = stop or asyncio.Event()
    try:
        await stop.wait()
    finally:
        for srv in servers:
            srv.close()


async def _main(specs: list[str]) -> int:
    listeners = [parse_spec(s) for s in specs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(listeners, stop=stop)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(_main(sys.argv[1:])))
    except ValueError as exc:
        print(f"backends: {exc}", file=sys.stderr)
        sys.exit(2)
