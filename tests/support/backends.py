"""A tiny HTTP/1.1 keep-alive backend on loopback that answers with its own identity.

Every response is 200 with header ``x-backend: NAME``, ``x-path: <request path>`` and body
``NAME``, so a test sees which endpoint a proxy picked.  Run it in a thread::

    with Backend("b1") as b:
        ...  # b.port, b.requests

or as a subprocess (prints ``listening on HOST:PORT`` once bound, exits on SIGTERM)::

    python -m tests.support.backends --name b1 [--host 127.0.0.1] [--port 0]

Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import http.server
import ipaddress
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Self

from integration import processes

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]


def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"backends listen on loopback only, not {host}")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive by default
    # headers and body are two writes: without TCP_NODELAY, Nagle + delayed ACK hold the
    # body back ~20 ms per request
    disable_nagle_algorithm = True
    server: _IdentityServer

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = b"" if self.command == "HEAD" else self.server.name.encode()
        self.server.count_request()
        self.send_response(200)
        self.send_header("x-backend", self.server.name)
        self.send_header("x-path", self.path)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(self.server.name.encode())))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read counters, not logs


class _IdentityServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, addr: tuple[str, int]) -> None:
        self.name = name
        self.requests = 0
        self._lock = threading.Lock()
        super().__init__(addr, _Handler)

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1


class Backend:
    """An identity backend serving in a background thread; use as a context manager."""

    def __init__(self, name: str, host: str = LOOPBACK, port: int = 0) -> None:
        _check_loopback(host)
        self.name = name
        self.host = host
        self._server = _IdentityServer(name, (host, port))
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"backend-{name}", daemon=True)

    @property
    def requests(self) -> int:
        """How many requests this backend has answered."""
        return self._server.requests

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving (returns self)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BackendProcess:
    """An identity backend in its own Python process (for tests that need a separate PID)."""

    def __init__(self, name: str, host: str = LOOPBACK, port: int = 0,
                 python: str = sys.executable, start_timeout: float = 10.0) -> None:
        _check_loopback(host)
        self.name = name
        self.host = host
        self.proc = subprocess.Popen(
            [python, "-m", "tests.support.backends", "--name", name, "--host", host,
             "--port", str(port)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.port = self._read_port(start_timeout)

    def _read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        # The child prints one line once bound; readline blocks, so guard it with a timer.
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        if not line.startswith("listening on ") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"backend {self.name} did not start: {line!r}")
        return int(line.rsplit(":", 1)[1])

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Terminate the process by PID and reap it."""
        processes.end(self.proc, timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (prefer binding port 0 where the API allows it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    """Run one identity backend until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    backend = Backend(args.name, args.host, args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with backend:
        print(f"listening on {backend.address}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
