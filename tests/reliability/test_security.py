"""Security properties of the agent and its datapath.

* only the configured cgroup is intercepted: a client outside it that connects to a VIP is
  not redirected (nothing answers on the fake VIP), while the same connect from inside works;
  the agent and its socket keeper live outside the cgroup, and no program of ours sits on
  the cgroup v2 root;
* everything pinned is root-only (directory 0700, objects without group/other access);
* every socket the agent listens on is bound to loopback, and the defaults of the admin
  (metrics) address and the embedded xDS server are loopback;
* no product code can hand a string to a shell (AST scan: shell=True, os.system, os.popen,
  os.exec*/spawn* with a shell, asyncio.create_subprocess_shell).
The capabilities the DaemonSet needs, each one shown necessary and sufficient, are tested in
tests/e2e/test_deploy_capabilities.py and listed in deploy/helm/sockmesh/values.yaml.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import GOOD, PORT, VIP, LiveMesh, live_mesh

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("xds_client", "translator", "bpf", "integration")


def shell_calls(tree: ast.AST) -> list[str]:
    """Calls that run a shell: shell=True, os.system/popen, create_subprocess_shell."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name in ("os.system", "os.popen", "asyncio.create_subprocess_shell", "system",
                    "popen", "commands.getoutput", "subprocess.getoutput",
                    "subprocess.getstatusoutput"):
            found.append(f"{node.lineno}: {name}()")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append(f"{node.lineno}: {name}(shell=...)")
    return found


def test_no_product_code_runs_a_shell() -> None:
    hits = []
    files = [p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py")]
    assert len(files) > 30, "product packages not found"
    for path in files:
        for hit in shell_calls(ast.parse(path.read_text(), str(path))):
            hits.append(f"{path.relative_to(ROOT)}:{hit}")
    assert not hits, "a string could reach a shell:\n" + "\n".join(hits)


def test_the_shell_scan_finds_what_it_looks_for() -> None:
    src = ("import os, subprocess\nsubprocess.run(cmd, shell=True)\nos.system(x)\n"
           "subprocess.run(['ls'], shell=False)\n")
    assert len(shell_calls(ast.parse(src))) == 2


def test_admin_and_xds_server_default_to_loopback() -> None:
    from integration.agent import DEFAULT_ADMIN_ADDR
    from integration.cli import build_parser

    assert ipaddress.ip_address(DEFAULT_ADMIN_ADDR[0]).is_loopback
    parser = build_parser()
    run = parser.parse_args(["run", "--xds-server", "127.0.0.1:1"])
    assert ipaddress.ip_address(run.metrics_addr[0]).is_loopback
    xs = parser.parse_args(["xds-server", "--config", str(ROOT)])
    assert ipaddress.ip_address(xs.host).is_loopback


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMesh]:
    from tests.support.capabilities import missing_capability

    if missing_capability("kernel"):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and kernel capability missing: {missing_capability('kernel')}")
        pytest.skip(missing_capability("kernel") or "")
    with live_mesh(tmp_path_factory.mktemp("security")) as lv:
        yield lv


def _request_from_outside(host: str, port: int) -> str:
    """Send GOOD from this (un-grouped) process; say what happened."""
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(GOOD)
            return f"answered: {s.recv(200)[:40]!r}"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {exc}"


@pytest.mark.kernel
def test_only_the_configured_cgroup_is_intercepted(lm: LiveMesh) -> None:
    from integration import cgroups

    before = lm.counters()
    assert _request_from_outside(VIP, PORT) == "refused"
    assert lm.counters()["fast"] == before["fast"], "a connection from outside was routed"
    inside = cgroups.spawn_in(
        [sys.executable, "-c", ("import socket,sys; s=socket.create_connection("
         f"({VIP!r},{PORT}),timeout=3); s.sendall({GOOD!r}); "
         "sys.stdout.write(s.recv(200).decode('latin-1'))")],
        lm.cgroup, stdout=subprocess.PIPE, text=True)
    out, _ = inside.communicate(timeout=10)
    assert "x-backend: reviews-v1-1" in out, out


@pytest.mark.kernel
def test_agent_sockets_are_never_intercepted(lm: LiveMesh) -> None:
    st = lm.agent.status()["datapath"]
    members = set((lm.cgroup / "cgroup.procs").read_text().split())
    assert lm.agent.proc is not None
    for pid in (lm.agent.proc.pid, st.get("socket_keeper_pid")):
        if pid:
            assert str(pid) not in members, f"agent process {pid} is in the mesh cgroup"
    ours = set(st["programs"].values())
    from bpf.cgroup2 import cgroup2_root

    out = subprocess.run(["bpftool", "-j", "cgroup", "show", str(cgroup2_root())],
                         capture_output=True, text=True, check=True).stdout
    on_root = {p["id"] for p in json.loads(out.strip() or "[]")}
    assert not ours & on_root, "a sockmesh program is attached to the cgroup v2 root"
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", str(lm.cgroup)],
                         capture_output=True, text=True, check=True).stdout
    assert {p["id"] for p in json.loads(out.strip() or "[]")} <= ours


@pytest.mark.kernel
def test_pinned_objects_are_root_only(lm: LiveMesh) -> None:
    d = os.stat(lm.pin)
    assert d.st_uid == 0 and stat.S_IMODE(d.st_mode) & 0o077 == 0, oct(d.st_mode)
    pinned = list(lm.pin.iterdir())
    assert len(pinned) >= 10
    loose = [f"{p.name} {oct(stat.S_IMODE(p.stat().st_mode))}" for p in pinned
             if p.stat().st_uid != 0 or stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not loose, loose


def _listening_inodes() -> dict[str, str]:
    """socket inode -> local address of every TCP listener (IPv4 and IPv6)."""
    out = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            hexip = f[1].split(":")[0]
            raw = bytes.fromhex(hexip)
            if width == 8:
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                ip = socket.inet_ntop(socket.AF_INET6, b"".join(
                    raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            out[f[9]] = ip
    return out


@pytest.mark.kernel
def test_agent_listens_on_loopback_only(lm: LiveMesh) -> None:
    assert lm.agent.proc is not None
    pids = [lm.agent.proc.pid]
    keeper = lm.agent.status()["datapath"].get("socket_keeper_pid")
    if keeper:
        pids.append(keeper)
    listeners = _listening_inodes()
    bound = []
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                ip = listeners.get(target[8:-1])
                if ip is not None:
                    bound.append(ip)
    assert bound, "the agent listens on nothing (admin and splice listeners expected)"
    assert all(ipaddress.ip_address(ip).is_loopback for ip in bound), bound
