"""Kernel-test fixtures: one datapath per session attached to a dedicated test cgroup,
identity backends, and clients running inside that cgroup.

Every test in this directory needs root, BPF and cgroup v2 (marker ``kernel``): it skips on
a machine without them and fails when CI=true.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.backend import Backend
from tests.support.capabilities import missing_capability

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.kernel)


class Mesh:
    """The session's datapath and its cgroup."""

    def __init__(self, dp: Any, cgroup: Path) -> None:
        self.dp = dp
        self.cgroup = cgroup

    def counters(self) -> dict[str, int]:
        return self.dp.counters()

    def wait_counter(self, name: str, at_least: int, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            v = self.counters()[name]
            if v >= at_least or time.monotonic() > deadline:
                return v
            time.sleep(0.005)


    def apply(self, tables: Any, timeout: float = 10.0) -> Any:
        """Apply ``tables`` and wait until the pools have an idle connection to each of their
        endpoints (or saw its connect refused).  Until then the kernel hands that endpoint's
        requests to user space, which answers them right but is not what a test of the kernel
        path wants to see (under CPU load the warm-up can take a while)."""
        out = self.dp.apply(tables)
        pools = self.dp.pools
        addrs = {(e.address, e.port) for c in tables.clusters.values() for e in c.endpoints}
        ids = [i for i, a in self.dp.encoder.endpoints().items() if a in addrs]
        deadline = time.monotonic() + timeout
        while not all(pools.size(i) > 0 or i in pools._retry_at for i in ids):
            if time.monotonic() > deadline:
                raise AssertionError(f"pools not warm after {timeout:g} s: "
                                     f"{ {i: pools.size(i) for i in ids} }")
            time.sleep(0.005)
        return out

    def client_state(self, local: tuple[str, int]) -> Any:
        from bpf import layout
        from bpf.encoder import ip_net

        return self.dp.splice.clients.get(layout.SockKey(ip4=ip_net(local[0]), port=local[1]))

    def wait_released(self, local: tuple[str, int], timeout: float = 5.0) -> None:
        """Wait until the slow path handed the connection back to the kernel."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.client_state(local)
            if st is not None and not st.user:
                return
            time.sleep(0.002)
        raise AssertionError(f"connection {local} still in user-space mode")


@pytest.fixture(scope="session")
def mesh() -> Iterator[Mesh]:
    if missing_capability("kernel") is not None:
        pytest.skip(missing_capability("kernel") or "")
    from bpf.datapath import Datapath
    from tests.support.cgroup import pin_dir_for, sweep_leftovers, test_cgroup

    sweep_leftovers()
    with test_cgroup() as cg:
        dp = Datapath(cg, pin_dir_for(cg), warm=2)
        dp.load()
        try:
            yield Mesh(dp, cg)
        finally:
            dp.close()


@pytest.fixture
def backends() -> Iterator[dict[str, Backend]]:
    """A dict to fill: name -> Backend; all are closed afterwards."""
    made: dict[str, Backend] = {}
    try:
        yield made
    finally:
        for b in made.values():
            b.close()


def make_backends(store: dict[str, Backend], *names: str, host: str = "127.0.0.1") -> list[Backend]:
    out = []
    for n in names:
        b = Backend(n, host=host)
        store[n] = b
        out.append(b)
    return out


class Client:
    """tests/kernel/client_worker.py running inside the test cgroup."""

    def __init__(self, cgroup: Path) -> None:
        from tests.support.cgroup import spawn_in_cgroup

        self.proc = spawn_in_cgroup([sys.executable, str(HERE / "client_worker.py")], cgroup,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)

    def cmd(self, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(kw) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("client worker exited")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"client: {out['error']}")
        return out

    def connect(self, conn: str, host: str, port: int) -> tuple[str, int]:
        return tuple(self.cmd(op="connect", conn=conn, host=host, port=port)["local"])  # type: ignore[return-value]

    def request(self, conn: str, raw: bytes, **kw: Any) -> dict[str, Any]:
        r = self.cmd(op="request", conn=conn, raw=base64.b64encode(raw).decode(), **kw)
        r["body"] = base64.b64decode(r.pop("body_b64"))
        return r

    def requests(self, conn: str, raws: list[bytes]) -> list[dict[str, Any]]:
        out = self.cmd(op="requests", conn=conn,
                       raws=[base64.b64encode(r).decode() for r in raws])["responses"]
        for r in out:
            r["body"] = base64.b64decode(r.pop("body_b64"))
        return out

    def pipeline(self, conn: str, raw: bytes, methods: list[str]) -> list[dict[str, Any]]:
        out = self.cmd(op="pipeline", conn=conn, raw=base64.b64encode(raw).decode(),
                       methods=methods)["responses"]
        for r in out:
            r["body"] = base64.b64decode(r.pop("body_b64"))
        return out

    def send(self, conn: str, raw: bytes) -> None:
        self.cmd(op="send", conn=conn, raw=base64.b64encode(raw).decode())

    def recv_n(self, conn: str, n: int) -> bytes:
        return base64.b64decode(self.cmd(op="recv_n", conn=conn, n=n)["data_b64"])

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(b'{"op": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()  # our own child, by PID
                self.proc.wait(5)


@pytest.fixture
def client(mesh: Mesh) -> Iterator[Client]:
    c = Client(mesh.cgroup)
    try:
        yield c
    finally:
        c.close()


def http(method: str, path: str, host: str, headers: dict[str, str] | None = None,
         body: bytes | None = None, chunked: bool = False) -> bytes:
    """Build an HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    payload = b""
    if body is not None:
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c)
                               for c in (body[i:i + 1000] for i in range(0, len(body), 1000)))
            payload += b"0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(body)}")
            payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
