"""The node agent's xDS side, admin endpoint and CLI, against the embedded ADS server.

No kernel here (``datapath=False`` / ``--no-datapath``): what is checked is that the agent
validates with the translator (NACK with the TranslationError message, last good kept),
applies each ACKed snapshot, reports what it holds in /status, /metrics and
``sockmesh status`` with the numbers the server sent, and fails clearly on bad flags and an
unreachable server.  The kernel half is in test_agent_datapath.py.  Runtime ~10 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from envoy.config.route.v3 import route_pb2

from integration.agent import Agent, AgentConfig
from integration.demo import mesh
from integration.xds_server import AdsServer
from tests.e2e.agent_harness import http_get, poll
from tests.support.backends import free_port
from xds_client import make_node

ROOT = Path(__file__).resolve().parents[2]
SOCKMESH = [sys.executable, "-m", "integration.cli"]
WAIT = 10.0
# a `sockmesh run` process may take a while to import and bind on a loaded 2-core CI box
START = 60.0


def demo_endpoints(base_port: int = 20000) -> dict[str, list[tuple[str, int]]]:
    specs = mesh.backends()
    return mesh.endpoints_of(specs, {b.name: base_port + i for i, b in enumerate(specs)})


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (fails when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    raise AssertionError(f"no sample {name}{{{want}}} in /metrics")


@pytest.fixture
async def server() -> AsyncIterator[tuple[AdsServer, int]]:
    srv = AdsServer(mesh.mesh_resources(demo_endpoints()))
    port = await srv.start("127.0.0.1", 0)
    try:
        yield srv, port
    finally:
        await srv.stop(grace=0.2)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_agent_applies_nacks_and_reports(server: tuple[AdsServer, int],
                                               delta: bool) -> None:
    srv, port = server
    agent = Agent(AgentConfig(server=f"127.0.0.1:{port}", node=make_node("agent-test"),
                              delta=delta, admin_addr=("127.0.0.1", 0), datapath=False))
    await agent.start()
    try:
        await agent.wait_applied(lambda a: a.applied is not None and a.applied.endpoints == 9,
                                 WAIT)
        first = dict(agent.applied.versions)  # type: ignore[union-attr]
        assert agent.tables is not None and set(agent.tables.clusters) == set(mesh.CLUSTERS)

        # a route config the translator rejects (bad regex) -> NACK naming it, last good kept
        rs = mesh.mesh_resources(demo_endpoints())
        bad = route_pb2.RouteConfiguration()
        bad.CopyFrom(rs.route_configs[mesh.ROUTE_CONFIG])
        bad.virtual_hosts[0].routes[0].match.ClearField("prefix")
        bad.virtual_hosts[0].routes[0].match.safe_regex.regex = "(unclosed"
        rs.route_configs[mesh.ROUTE_CONFIG] = bad
        srv.set_resources(rs)
        ev = await srv.wait_for(lambda e: not e.ack, WAIT)  # NACKs carry the kept version
        assert ev.error_detail is not None and "regex" in ev.error_detail.lower()
        await agent.client.wait_for(lambda c: agent.last_nack is not None, WAIT)
        assert agent.last_nack is not None and agent.last_nack["type"] == "RDS"
        assert agent.last_nack["reason"] == ev.error_detail
        assert agent.tables.route_tables[mesh.ROUTE_CONFIG].virtual_hosts[0].rules[0].path \
            .value == "/"  # still the last good route config

        # a good change afterwards applies
        eps = demo_endpoints()
        eps["details"] = eps["details"][:1]
        good = srv.set_resources(mesh.mesh_resources(eps))
        await agent.wait_applied(
            lambda a: a.applied is not None and a.applied.endpoints == 8, WAIT)
        assert agent.applied.versions["EDS"] == good  # type: ignore[union-attr]
        assert agent.applied.versions["EDS"] != first["EDS"]  # type: ignore[union-attr]

        # /status and /metrics say the same as the server and the agent
        assert agent.admin is not None
        st = json.loads(await asyncio.to_thread(http_get, agent.admin.port, "/status"))
        assert st["xds"]["connected"] is True
        assert st["xds"]["types"]["EDS"]["version"] == good
        assert st["xds"]["types"]["CDS"]["resources"] == len(mesh.CLUSTERS)
        assert st["xds"]["types"]["LDS"]["resources"] == len(mesh.SERVICES)
        assert st["xds"]["last_nack"]["reason"] == ev.error_detail
        assert st["config"]["applied"]["endpoints"] == 8
        assert st["datapath"] == {**st["datapath"], "enabled": False, "loaded": False}
        text = await asyncio.to_thread(http_get, agent.admin.port, "/metrics")
        acks = [e for e in srv.events if e.ack and e.type_url.endswith("RouteConfiguration")]
        assert metric(text, "sockmesh_xds_nacks_total", type="RDS") == 1
        assert metric(text, "sockmesh_xds_acks_total", type="RDS") == \
            st["xds"]["types"]["RDS"]["acks"] >= 1
        assert len(acks) >= 1
        assert metric(text, "sockmesh_xds_resources", type="CDS") == len(mesh.CLUSTERS)
        assert metric(text, "sockmesh_xds_version_info", type="EDS", version=good) == 1
        assert metric(text, "sockmesh_config_applies_total") == agent.applies
        assert metric(text, "sockmesh_datapath_loaded") == 0
    finally:
        await agent.stop()


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(SOCKMESH + list(args), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize(("argv", "flag"), [
    (["--xds-server", "nocolon", "--no-datapath"], "--xds-server"),
    (["--xds-server", "127.0.0.1:99999", "--no-datapath"], "--xds-server"),
    (["--xds-server", "127.0.0.1:1", "--cgroup", "/"], "--cgroup"),
    (["--xds-server", "127.0.0.1:1", "--cgroup", "/sys/fs/cgroup/unified"], "--cgroup"),
    (["--xds-server", "127.0.0.1:1", "--cgroup", "no-such-cgroup-xyz"], "--cgroup"),
    (["--xds-server", "127.0.0.1:1", "--no-datapath", "--metrics-addr", "localhost:1"],
     "--metrics-addr"),
    (["--xds-server", "127.0.0.1:1", "--no-datapath", "--pin-dir", "/tmp/x"], "--pin-dir"),
    (["--xds-server", "127.0.0.1:1", "--no-datapath", "--missing-after", "-1"],
     "--missing-after"),
    (["--xds-server", "127.0.0.1:1"], "--cgroup"),
    (["--no-datapath"], "--xds-server"),
])
def test_run_bad_flags_exit_2_naming_the_flag(argv: list[str], flag: str) -> None:
    env_clean = {k: v for k, v in os.environ.items()
                 if k not in ("POD_NAME", "POD_NAMESPACE", "INSTANCE_IP")}
    r = subprocess.run(SOCKMESH + ["run"] + argv, cwd=ROOT, capture_output=True, text=True,
                       timeout=20, env=env_clean, check=False)
    assert r.returncode == 2, r.stderr
    assert flag in r.stderr, r.stderr


def _start_run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(SOCKMESH + ["run", "--no-datapath", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
    return proc.returncode, out, err


def _get_status(port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body) of a GET on the agent's admin port, 5xx included."""
    try:
        return 200, http_get(port, path)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_run_unreachable_server_keeps_retrying_and_says_so() -> None:
    dead = free_port()
    admin = free_port()
    proc = _start_run("--xds-server", f"127.0.0.1:{dead}", "--metrics-addr",
                      f"127.0.0.1:{admin}", "--backoff-max", "0.5")
    try:
        st = poll(lambda: json.loads(http_get(admin, "/status")), START, "the agent's /status")
        assert st["xds"]["connected"] is False
        # several attempts have been made (backoff <= 0.5 s) and the agent is still up
        poll(lambda: json.loads(http_get(admin, "/status"))["xds"]["streams_opened"] >= 3,
             WAIT, "three xDS stream attempts")
        r = run_cli("status", "--admin-addr", f"127.0.0.1:{admin}")
        assert r.returncode == 0 and "NOT connected" in r.stdout, r.stdout
        # alive, but not ready: nothing applied yet, and /ready says why
        assert http_get(admin, "/healthz") == "ok\n"
        code, body = _get_status(admin, "/ready")
        assert code == 503 and f"no xDS stream to 127.0.0.1:{dead}" in body, (code, body)
    finally:
        code, _, err = _stop(proc)
    assert code == 0, err
    assert f"127.0.0.1:{dead}" in err and "retrying" in err, err


def test_run_and_status_report_what_the_server_sent() -> None:
    async def main() -> None:
        srv = AdsServer(mesh.mesh_resources(demo_endpoints()))
        port = await srv.start("127.0.0.1", 0)
        admin = free_port()
        proc = _start_run("--xds-server", f"127.0.0.1:{port}", "--metrics-addr",
                          f"127.0.0.1:{admin}")
        try:
            def synced() -> dict | None:
                st = json.loads(http_get(admin, "/status"))
                ok = st["config"]["applied"] and st["config"]["applied"]["endpoints"] == 9
                return st if ok else None
            st = await asyncio.to_thread(poll, synced, START, "the agent synced to the new server")
            for short in ("LDS", "RDS", "CDS", "EDS"):
                assert st["xds"]["types"][short]["version"] == srv.version
            code, body = await asyncio.to_thread(_get_status, admin, "/ready")
            assert code == 200 and f"CDS={srv.version}" in body, (code, body)
            r = await asyncio.to_thread(run_cli, "status", "--admin-addr",
                                        f"127.0.0.1:{admin}")
            assert r.returncode == 0, r.stderr
            assert f"127.0.0.1:{port} (SotW): connected" in r.stdout
            assert f"CDS: version {srv.version}, {len(mesh.CLUSTERS)} resources" in r.stdout
            assert "9 endpoints" in r.stdout and "datapath        disabled" in r.stdout
            rj = await asyncio.to_thread(run_cli, "status", "--json", "--admin-addr",
                                         f"127.0.0.1:{admin}")
            assert json.loads(rj.stdout)["xds"]["server"] == f"127.0.0.1:{port}"
        finally:
            code, _, err = await asyncio.to_thread(_stop, proc)
            await srv.stop(grace=0.2)
        assert code == 0, err
    asyncio.run(main())


def test_status_without_agent_says_so() -> None:
    r = run_cli("status", "--admin-addr", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "no agent answering" in r.stderr


async def test_cross_resource_translation_error_is_a_nack(server: tuple[AdsServer, int]) -> None:
    """A route config that is valid alone but names a missing cluster with
    validate_clusters=true: the whole-snapshot translation fails, so it is NACKed."""
    srv, port = server
    agent = Agent(AgentConfig(server=f"127.0.0.1:{port}", node=make_node("agent-test"),
                              admin_addr=None, datapath=False))
    await agent.start()
    try:
        await agent.wait_applied(lambda a: a.applied is not None, WAIT)
        applied = dict(agent.applied.versions)  # type: ignore[union-attr]
        rs = mesh.mesh_resources(demo_endpoints(), [
            {"name": "to-nowhere", "match": {"prefix": "/"},
             "route": {"cluster": "no-such-cluster"}}])
        rs.route_configs[mesh.ROUTE_CONFIG].validate_clusters.value = True
        srv.set_resources(rs)
        ev = await srv.wait_for(lambda e: not e.ack, WAIT)
        assert ev.error_detail is not None and "no-such-cluster" in ev.error_detail
        await agent.client.wait_for(lambda c: agent.last_nack is not None, WAIT)
        assert agent.apply_errors == 0  # rejected at the door, not at apply time
        assert agent.applied is not None and agent.applied.versions == applied
        assert agent.tables is not None
        rules = agent.tables.route_tables[mesh.ROUTE_CONFIG].virtual_hosts[2].rules
        assert {r.name for r in rules} == {"reviews-jason", "reviews-split"}  # last good
    finally:
        await agent.stop()
