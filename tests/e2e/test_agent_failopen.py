"""Fail open with a real load failure: the agent runs as root but without the capabilities
BPF needs (setpriv drops them), so the kernel refuses the programs.  The agent must say why,
keep its xDS side up, attach nothing, and leave the application's traffic untouched.  ~3 s.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from integration import cgroups
from integration.demo import mesh
from integration.xds_server import AdsServer
from tests.e2e.agent_harness import ROOT, SOCKMESH, Backends, end, http_get, mesh_cgroup, poll
from tests.support.backends import free_port

pytestmark = pytest.mark.kernel


def _bpftool_cgroup(cg: Path) -> str:
    return subprocess.run(["bpftool", "cgroup", "show", str(cg)], capture_output=True,
                          text=True, check=False).stdout


async def test_datapath_that_cannot_load_fails_open(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to drop capabilities")
    with mesh_cgroup() as (cg, pin):
        backends = await asyncio.to_thread(Backends, [("direct-1", "127.20.7.1")])
        srv = AdsServer(mesh.mesh_resources({"productpage": [backends.addr("direct-1")]}))
        port = await srv.start("127.0.0.1", 0)
        admin = free_port()
        log = tmp_path / "agent.log"
        with log.open("w") as fh:
            agent = await asyncio.to_thread(
                subprocess.Popen,
                ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *SOCKMESH, "run",
                 "--xds-server", f"127.0.0.1:{port}", "--cgroup", str(cg), "--pin-dir",
                 str(pin), "--metrics-addr", f"127.0.0.1:{admin}"],
                cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        try:
            st = await asyncio.to_thread(
                poll, lambda: (s := json.loads(http_get(admin, "/status")))["config"]["applied"]
                and s, 60, "agent applied config (fail open)")
            assert st["datapath"]["loaded"] is False
            assert st["datapath"]["error"], st["datapath"]
            assert "failing open" in log.read_text()
            assert st["xds"]["connected"] and st["config"]["applied"]["endpoints"] == 1
            assert "sockmesh_datapath_loaded 0.0" in await asyncio.to_thread(
                http_get, admin, "/metrics")
            # nothing attached to the cgroup, nothing left pinned, traffic untouched
            assert not _bpftool_cgroup(cg).strip().splitlines()[1:], _bpftool_cgroup(cg)
            assert not pin.exists()
            host, bport = backends.addr("direct-1")
            client = cgroups.spawn_in(
                ["curl", "-s", "--max-time", "5", f"http://{host}:{bport}/"], cg,
                stdout=subprocess.PIPE, text=True)
            out, _ = await asyncio.to_thread(client.communicate, None, 10)
            assert out == "direct-1"
            r = await asyncio.to_thread(lambda: subprocess.run(
                SOCKMESH + ["status", "--admin-addr", f"127.0.0.1:{admin}"], cwd=ROOT,
                capture_output=True, text=True, timeout=30, check=False))
            assert "NOT loaded, failing open" in r.stdout, r.stdout
            print(f"\nfail open: {st['datapath']['error']}")
        finally:
            await asyncio.to_thread(end, agent)
            await srv.stop(grace=0.2)
            await asyncio.to_thread(backends.stop)
        assert agent.returncode == 0, log.read_text()[-2000:]
