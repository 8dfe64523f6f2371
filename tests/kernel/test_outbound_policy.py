"""connect4 enforces Istio's outboundTrafficPolicy on the test cgroup.

The policy entries come from translating the stored real istiod dumps
(tests/peers/istiod/dumps, see tests/unit/test_outbound_policy.py); one hand-built HTTP
service with a real backend stands for the known services.  A probe process in the cgroup
connects (TCP and UDP) and reports what each connect() and exchange gave.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import Mesh, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost
from tests.unit.test_outbound_policy import load
from translator.model import decide_connect
from translator.tables import BLACKHOLE_CLUSTER, Service, ServiceKind, Tables

VIP, PORT = "127.10.9.1", 8093
UNKNOWN = "127.30.0.1"  # no service entry names it
DENIED_VIP = "127.10.9.2"  # a per-VIP tcp_proxy to BlackHoleCluster
SPLICE_ADDR = "127.0.0.9"
PROBE_TIMEOUT_S = 30

# connects in order; TCP sends one request and reads the response head
PROBE = r"""
import json, socket, sys
out = []
for proto, host, port in json.loads(sys.argv[1]):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(5)
    try:
        s.connect((host, port))
    except OSError as exc:
        out.append({"connect": exc.errno})
        s.close()
        continue
    try:
        if proto == "udp":
            s.send(b"probe")
            out.append({"connect": 0})
        else:
            s.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
            lines = head.split(b"\r\n")
            backend = [l.split(b":", 1)[1].strip().decode() for l in lines
                       if l.lower().startswith(b"x-backend:")]
            status = int(lines[0].split()[1]) if lines[0].startswith(b"HTTP/") else None
            out.append({"connect": 0, "status": status,
                        "backend": backend[0] if backend else None})
    except OSError as exc:
        out.append({"connect": 0, "error": exc.errno})
    finally:
        s.close()
print(json.dumps(out))
"""


def probe(cgroup: Path, targets: list[tuple[str, str, int]]) -> list[dict[str, Any]]:
    """Run the connects in ``targets`` (proto, host, port) from a process in ``cgroup``:
    per target {"connect": errno or 0, and for TCP "status" and "backend" (x-backend)}."""
    from tests.support.cgroup import spawn_in_cgroup

    proc = spawn_in_cgroup([sys.executable, "-c", PROBE, json.dumps(targets)], cgroup,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=PROBE_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()  # our own child, by PID
            proc.wait(5)
    assert proc.returncode == 0, err
    result: list[dict[str, Any]] = json.loads(out)
    return result


def policy_tables(mode: str, backends: dict[str, Any]) -> Tables:
    """The known HTTP service (backend "known") plus the stored dump's policy entries."""
    (known,) = make_backends(backends, "known")
    policy = tuple(s for s in load(mode).services if s.listener == "virtualOutbound")
    denied = Service(DENIED_VIP, PORT, ServiceKind.BLACKHOLE, cluster=BLACKHOLE_CLUSTER)
    return http_tables(VIP, PORT, [vhost("r", ["*"], [rule("/", action=to("c1"))])],
                       [cluster("c1", [known])], extra_services=(*policy, denied))


@pytest.fixture
def clean(mesh: Mesh) -> Iterator[None]:
    """Leave the session's datapath without the policy for the next test."""
    try:
        yield
    finally:
        mesh.dp.apply(Tables())


@pytest.fixture
def udp_sink() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((UNKNOWN, 0))
    s.settimeout(5)
    try:
        yield s
    finally:
        s.close()


def test_registry_only_refuses_unknown_tcp_destinations(mesh: Mesh, backends, clean: None,
                                                        udp_sink: socket.socket) -> None:
    tables = policy_tables("REGISTRY_ONLY", backends)
    mesh.dp.apply(tables)
    (unknown,) = make_backends(backends, "unknown", host=UNKNOWN)
    (local,) = make_backends(backends, "local", host="127.0.0.1")
    udp_port = udp_sink.getsockname()[1]
    before = mesh.counters()["blackhole"]
    targets = [("tcp", UNKNOWN, unknown.port), ("tcp", VIP, PORT), ("udp", UNKNOWN, udp_port),
               ("tcp", "127.0.0.1", local.port), ("tcp", DENIED_VIP, PORT),
               ("tcp", UNKNOWN, unknown.port)]
    got = probe(mesh.cgroup, targets)
    assert got[0] == {"connect": errno.EPERM}
    assert got[1] == {"connect": 0, "status": 200, "backend": "known"}
    assert got[2] == {"connect": 0}
    assert udp_sink.recvfrom(64)[0] == b"probe"  # UDP is never touched
    assert got[3] == {"connect": 0, "status": 200, "backend": "local"}  # 127.0.0.1 is exempt
    assert got[4] == {"connect": errno.EPERM}  # a per-VIP BlackHoleCluster entry
    assert got[5] == {"connect": errno.EPERM}
    assert mesh.counters()["blackhole"] - before == 3
    assert unknown.requests == 0
    # the model says the same for every TCP target
    model = [decide_connect(tables, host, port).verdict
             for proto, host, port in targets if proto == "tcp"]
    assert model == ["refused", "http", "pass", "refused", "refused"]
    # `sockmesh dump` reads the policy from the pinned map
    from integration.commands import dump

    doc = dump.read(mesh.dp.pin_dir, None)
    assert doc["unknown_destinations"] == "refused"
    kinds = {(s["vip"], s["port"]): s["kind"] for s in doc["services"]}
    assert kinds == {("0.0.0.0", 0): "blackhole", (DENIED_VIP, PORT): "blackhole",
                     (VIP, PORT): "http"}
    assert "0.0.0.0:0      blackhole -> connect refused (EPERM)" in dump.render(doc)


def test_the_splice_listeners_address_is_exempt(backends) -> None:
    """A splice listener off 127.0.0.1 (a node IP in a real deployment) stays reachable
    under REGISTRY_ONLY; the rest of its address is not exempt."""
    from bpf.datapath import Datapath
    from tests.support import cgroup as cgsupport

    with cgsupport.test_cgroup() as cg:
        dp = Datapath(cg, cgsupport.pin_dir_for(cg), splice_addr=SPLICE_ADDR, warm=1)
        dp.load()
        try:
            tables = policy_tables("REGISTRY_ONLY", backends)
            dp.apply(tables)
            assert dp.splice is not None
            splice = dp.splice.addr
            (other,) = make_backends(backends, "other", host=SPLICE_ADDR)
            got = probe(cg, [("tcp", *splice), ("tcp", SPLICE_ADDR, other.port),
                                       ("tcp", VIP, PORT)])
            assert got[0]["connect"] == 0 and "error" not in got[0]
            assert got[1] == {"connect": errno.EPERM}
            assert got[2] == {"connect": 0, "status": 200, "backend": "known"}
            assert [decide_connect(tables, h, p, splice=splice).verdict
                    for h, p in (splice, (SPLICE_ADDR, other.port))] == ["pass", "refused"]
        finally:
            dp.close()


def test_allow_any_lets_unknown_destinations_through(mesh: Mesh, backends,
                                                     clean: None) -> None:
    mesh.dp.apply(policy_tables("ALLOW_ANY", backends))
    (unknown,) = make_backends(backends, "unknown", host=UNKNOWN)
    before = mesh.counters()["blackhole"]
    got = probe(mesh.cgroup, [("tcp", UNKNOWN, unknown.port), ("tcp", VIP, PORT)])
    assert got == [{"connect": 0, "status": 200, "backend": "unknown"}, {"connect": 0, "status": 200, "backend": "known"}]
    assert mesh.counters()["blackhole"] == before
    from integration.commands import dump

    assert dump.read(mesh.dp.pin_dir, None)["unknown_destinations"] == "left alone"
