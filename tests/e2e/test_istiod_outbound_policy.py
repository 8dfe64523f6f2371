"""`sockmesh run --istio` enforces a real istiod's outboundTrafficPolicy, and follows a change.

A standalone istiod 1.29 with the test config and REGISTRY_ONLY (tests/peers/istiod/mesh.yaml)
serves the agent, whose datapath sits on a fresh child cgroup.  A probe process in that
cgroup connects to an unknown loopback destination (a real backend listens there), to a
service VIP, over UDP, and to 127.0.0.1.  Then istiod's mesh config is rewritten to ALLOW_ANY
(istiod watches the file and pushes) and the unknown destination becomes reachable.

Safety: programs only on the test's own child cgroup (removed with its pins afterwards);
istiod, backends and traffic on loopback only; every process ended by PID; every wait has a
deadline.
"""

from __future__ import annotations

import errno
import re
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from tests.e2e.agent_harness import AgentProc, mesh_cgroup, poll
from tests.kernel.test_outbound_policy import UNKNOWN, probe
from tests.support.backends import Backend
from tests.support.istio_sidecar import ISTIOD_ENV, SOCKMESH_IP
from tests.support.istiod import NAMESPACE, Istiod, copy_config

pytestmark = [pytest.mark.kernel, pytest.mark.istiod]

AGENT_START_S = 120.0  # bcc compiles the datapath at start
SWITCH_DEADLINE_S = 60.0
KNOWN_VIP, KNOWN_PORT = "127.10.0.1", 19080  # reviews.sockmesh.test (services.yaml)


def blackhole_events(agent: AgentProc) -> float:
    m = re.search(r'^sockmesh_datapath_events_total\{event="blackhole"\} (\S+)$',
                  agent.metrics(), re.MULTILINE)
    assert m, "no blackhole event in /metrics"
    return float(m.group(1))


def test_registry_only_then_allow_any_from_a_real_istiod(tmp_path: Path) -> None:
    with ExitStack() as stack:
        unknown = stack.enter_context(Backend("unknown", UNKNOWN))
        local = stack.enter_context(Backend("local", "127.0.0.1"))
        udp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        udp.bind((UNKNOWN, 0))
        udp.settimeout(5)
        istiod = stack.enter_context(Istiod(copy_config(tmp_path / "config"),
                                            tmp_path / "istiod", env=ISTIOD_ENV))
        assert yaml.safe_load(istiod.mesh_path.read_text())["outboundTrafficPolicy"] == {
            "mode": "REGISTRY_ONLY"}
        cg, pin = stack.enter_context(mesh_cgroup())
        agent = AgentProc(istiod.xds_address, cg, pin, env={
            "POD_NAME": "sockmesh-agent-0", "POD_NAMESPACE": NAMESPACE,
            "INSTANCE_IP": SOCKMESH_IP})
        stack.callback(agent.stop)
        agent.start("--istio", "--plaintext")
        st = agent.wait_applied(lambda s: s["config"]["applied"]["services"] > 0,
                                AGENT_START_S)
        assert st["datapath"]["loaded"], agent.output()
        assert st["xds"]["nacks"] == 0, st["xds"]["last_nack"]

        got = probe(cg, [("tcp", UNKNOWN, unknown.port), ("tcp", KNOWN_VIP, KNOWN_PORT),
                         ("udp", UNKNOWN, udp.getsockname()[1]),
                         ("tcp", "127.0.0.1", local.port)])
        assert got[0] == {"connect": errno.EPERM}
        # the VIP is spliced; the probe's Host is unknown, so istiod's block_all answers
        assert got[1] == {"connect": 0, "status": 502, "backend": None}
        assert got[2] == {"connect": 0} and udp.recvfrom(64)[0] == b"probe"
        assert got[3] == {"connect": 0, "status": 200, "backend": "local"}
        assert unknown.requests == 0
        assert blackhole_events(agent) == 1

        # ALLOW_ANY: istiod reloads its mesh config file and pushes virtualOutbound again
        mesh = yaml.safe_load(istiod.mesh_path.read_text())
        mesh["outboundTrafficPolicy"] = {"mode": "ALLOW_ANY"}
        tmp = istiod.mesh_path.with_name(".mesh.yaml.tmp")
        tmp.write_text(yaml.safe_dump(mesh))
        t0 = time.monotonic()
        tmp.replace(istiod.mesh_path)

        def passes() -> list[dict[str, object]] | None:
            res = probe(cg, [("tcp", UNKNOWN, unknown.port)])
            return res if res[0]["connect"] == 0 else None

        res = poll(passes, SWITCH_DEADLINE_S, "the unknown destination reachable after "
                   "ALLOW_ANY", interval=0.2)
        print(f"\nREGISTRY_ONLY -> ALLOW_ANY: connects pass {time.monotonic() - t0:.2f} s "
              "after the mesh config write")
        assert res == [{"connect": 0, "status": 200, "backend": "unknown"}]
        assert agent.status()["xds"]["nacks"] == 0
