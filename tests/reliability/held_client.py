"""One keep-alive connection a test drives request by request (run inside the test cgroup).

    python -m tests.reliability.held_client VIP PORT HOST

Connects to VIP:PORT and prints ``{"local": [ip, port]}``; then for every line PATH read
from stdin sends ``GET PATH`` with ``Host: HOST`` on that same connection and prints
``{"status": ..., "backend": ...}`` (``{"error": ...}`` when the exchange failed).  Every
read has a timeout, so it never hangs; it exits at the end of stdin.
"""

from __future__ import annotations

import json
import socket
import sys

TIMEOUT = 10.0


def _exchange(sock: socket.socket, path: str, host: str) -> dict[str, object]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return {"error": "closed before the response head"}
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return {"error": "closed before the response body"}
        body += chunk
    return {"status": int(lines[0].split(" ")[1]), "backend": headers.get("x-backend")}


def main(argv: list[str]) -> int:
    vip, port, host = argv[0], int(argv[1]), argv[2]
    sock = socket.create_connection((vip, port), timeout=TIMEOUT)
    print(json.dumps({"local": list(sock.getsockname())}), flush=True)
    for line in sys.stdin:
        try:
            out = _exchange(sock, line.strip(), host)
        except OSError as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
