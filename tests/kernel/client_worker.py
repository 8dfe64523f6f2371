"""A test client that runs inside the test cgroup and obeys JSON-line commands on stdin.

Started by tests/support/cgroup.spawn_in_cgroup (so every connect() it makes is seen by the
datapath).  One command per line, one JSON reply per line:
  {"op": "connect", "conn": "a", "host": H, "port": P}
  {"op": "request", "conn": "a", "raw": b64, "parts": [n1, ...], "pause_ms": 0,
   "method": "GET"}          -> {"status", "headers", "body_b64", "us"}
  {"op": "requests", "conn": "a", "raws": [b64, ...]}  -> sequential, {"responses": [...]}
  {"op": "send", "conn": "a", "raw": b64}; {"op": "recv_all", "conn": "a"} (until EOF)
  {"op": "pipeline", "conn": "a", "raw": b64, "methods": [...]} -> {"responses": [...]}
  {"op": "recv_n", "conn": "a", "n": N} -> {"data_b64"}
  {"op": "close", "conn": "a"};  {"op": "parallel", "n": N, "host", "port", "raws": [...]}
  {"op": "exit"}
Responses are framed the way HTTP/1.1 says (Content-Length, chunked, no body for HEAD, 1xx,
204, 304).  Every blocking read has a timeout.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import threading
import time

TIMEOUT = 10.0


def read_response(f: socket.socket, buf: bytearray, method: str) -> dict:
    def fill() -> None:
        chunk = f.recv(1 << 20)
        if not chunk:
            raise EOFError("connection closed")
        buf.extend(chunk)

    while True:
        while b"\r\n\r\n" not in buf:
            fill()
        end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:end]).decode("latin-1")
        del buf[:end]
        lines = head.split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if 100 <= status < 200:
            continue
        break
    body = bytearray()
    if method == "HEAD" or status in (204, 304):
        pass
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in buf:
                fill()
            i = buf.index(b"\r\n")
            size = int(bytes(buf[:i]).split(b";")[0], 16)
            del buf[: i + 2]
            if size == 0:
                while b"\r\n" not in buf:
                    fill()
                while not buf.startswith(b"\r\n"):  # trailers
                    i = buf.index(b"\r\n")
                    del buf[: i + 2]
                    while b"\r\n" not in buf:
                        fill()
                del buf[:2]
                break
            while len(buf) < size + 2:
                fill()
            body.extend(buf[:size])
            del buf[: size + 2]
    else:
        n = int(headers.get("content-length", "0"))
        while len(buf) < n:
            fill()
        body.extend(buf[:n])
        del buf[:n]
    return {"status": status, "headers": headers, "body_b64": base64.b64encode(body).decode()}


class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def request(self, raw: bytes, parts: list[int] | None = None, pause_ms: int = 0,
                method: str = "GET") -> dict:
        t0 = time.perf_counter()
        if parts:
            pos = 0
            for n in parts:
                self.sock.sendall(raw[pos : pos + n])
                pos += n
                if pause_ms:
                    time.sleep(pause_ms / 1000)  # the test is about split writes
            if pos < len(raw):
                self.sock.sendall(raw[pos:])
        else:
            self.sock.sendall(raw)
        r = read_response(self.sock, self.buf, method)
        r["us"] = (time.perf_counter() - t0) * 1e6
        return r


def run_parallel(cmd: dict) -> list:
    """cmd["n"] connections at once, each sending cmd["raws"] in order."""
    results: list = [None] * cmd["n"]

    def run(i: int) -> None:
        c = None
        res: list = []
        try:
            c = Conn(cmd["host"], cmd["port"])
            for r in cmd["raws"]:
                raw = base64.b64decode(r)
                res.append(c.request(raw, method=method_of(raw)))
            c.sock.close()
            results[i] = res
        except Exception as exc:  # noqa: BLE001 - reported to the test
            # which connection, after how many answers: the test's failure names them
            results[i] = {"error": repr(exc), "answered": len(res),
                          "local": c.sock.getsockname() if c is not None else None}

    threads = [threading.Thread(target=run, args=(i,)) for i in range(cmd["n"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    return results


def method_of(raw: bytes) -> str:
    return raw.split(b" ", 1)[0].decode("latin-1")


def main() -> None:
    conns: dict[str, Conn] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "exit":
                break
            if op == "connect":
                c = Conn(cmd["host"], cmd["port"])
                conns[cmd["conn"]] = c
                out: dict = {"local": list(c.sock.getsockname())}
            elif op == "request":
                raw = base64.b64decode(cmd["raw"])
                out = conns[cmd["conn"]].request(raw, cmd.get("parts"), cmd.get("pause_ms", 0),
                                                 cmd.get("method") or method_of(raw))
            elif op == "requests":
                c = conns[cmd["conn"]]
                res = []
                for r in cmd["raws"]:
                    raw = base64.b64decode(r)
                    res.append(c.request(raw, method=method_of(raw)))
                out = {"responses": res}
            elif op == "pipeline":
                c = conns[cmd["conn"]]
                c.sock.sendall(base64.b64decode(cmd["raw"]))
                out = {"responses": [read_response(c.sock, c.buf, m) for m in cmd["methods"]]}
            elif op == "recv_n":
                c = conns[cmd["conn"]]
                while len(c.buf) < cmd["n"]:
                    chunk = c.sock.recv(1 << 16)
                    if not chunk:
                        break
                    c.buf.extend(chunk)
                data = bytes(c.buf[: cmd["n"]])
                del c.buf[: cmd["n"]]
                out = {"data_b64": base64.b64encode(data).decode()}
            elif op == "send":
                conns[cmd["conn"]].sock.sendall(base64.b64decode(cmd["raw"]))
                out = {}
            elif op == "recv_all":
                c = conns[cmd["conn"]]
                data = bytearray(c.buf)
                while True:
                    chunk = c.sock.recv(1 << 16)
                    if not chunk:
                        break
                    data.extend(chunk)
                out = {"data_b64": base64.b64encode(data).decode()}
            elif op == "close":
                conns.pop(cmd["conn"]).sock.close()
                out = {}
            elif op == "parallel":
                out = {"results": run_parallel(cmd)}
            else:
                out = {"error": f"unknown op {op}"}
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out = {"error": repr(exc)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
