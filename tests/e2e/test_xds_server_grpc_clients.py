"""Two real gRPC xDS clients take their config from the embedded ADS server.

grpcio's built-in xDS client (a Python subprocess, since the bootstrap must be in its
environment before grpc starts) and npm ``@grpc/grpc-js-xds`` (tests/peers/node) resolve
``xds:///echo.test`` through the server: LDS (an API listener whose HCM names an RDS config),
RDS, CDS (an EDS cluster) and EDS (a loopback gRPC server), then complete unary RPCs.
Both speak SotW ADS only.  Runtime: about 2-5 s per client.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from integration.xds_server import AckEvent, AdsServer
from translator.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    ResourceSet,
    parse_resource,
)

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "tests" / "peers"
TARGET_NAME = "echo.test"
METHOD = "/sockmesh.test.Echo/Call"
CALLS = 5
CALL_TIMEOUT_S = 20
PROCESS_TIMEOUT_S = 40.0
WAIT_S = 20.0
ALL_TYPES = (LISTENER, ROUTE_CONFIGURATION, CLUSTER, CLUSTER_LOAD_ASSIGNMENT)
ADS = {"ads": {}, "resource_api_version": "V3"}

pytestmark = pytest.mark.timeout(90)


def grpc_xds_config(backend_port: int, cluster: str = "echo-cluster") -> ResourceSet:
    """The four resources a gRPC xDS client needs for ``xds:///echo.test``."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "rds": {"route_config_name": "echo-route", "config_source": ADS},
        "http_filters": [{"name": "router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    objs: list[dict[str, Any]] = [
        {"@type": LISTENER, "name": TARGET_NAME, "api_listener": {"api_listener": hcm}},
        {"@type": ROUTE_CONFIGURATION, "name": "echo-route",
         "virtual_hosts": [{"name": "echo", "domains": [TARGET_NAME],
                            "routes": [{"match": {"prefix": ""},
                                        "route": {"cluster": cluster}}]}]},
        {"@type": CLUSTER, "name": cluster, "type": "EDS", "lb_policy": "ROUND_ROBIN",
         "eds_cluster_config": {"eds_config": ADS}},
        # gRPC ignores localities without a load_balancing_weight.
        {"@type": CLUSTER_LOAD_ASSIGNMENT, "cluster_name": cluster,
         "endpoints": [{"locality": {"region": "local", "zone": "loopback"},
                        "load_balancing_weight": 1,
                        "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": "127.0.0.1", "port_value": backend_port}}}}]}]},
    ]
    rs = ResourceSet()
    for obj in objs:
        rs.add(parse_resource(obj, "grpc test config"))
    return rs


def bootstrap(xds_port: int, node_id: str) -> str:
    """A gRPC xDS bootstrap (JSON) pointing at the embedded server, plaintext."""
    return json.dumps({
        "xds_servers": [{"server_uri": f"127.0.0.1:{xds_port}",
                         "channel_creds": [{"type": "insecure"}],
                         "server_features": ["xds_v3"]}],
        "node": {"id": node_id, "cluster": "sockmesh-test",
                 "locality": {"region": "local", "zone": "loopback"}},
    })


class EchoBackend:
    """A loopback gRPC server answering METHOD with ``NAME:<request>``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self._call)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "sockmesh.test.Echo", {"Call": handler})])
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        return f"{self.name}:{request.decode()}".encode()


async def check_client(cmd: list[str], node_id: str, cwd: Path) -> None:
    """Run one peer client against the server; it must complete RPCs and ACK all types."""
    backend = EchoBackend("echo-1")
    await backend.server.start()
    server = AdsServer(grpc_xds_config(backend.port))
    xds_port = await server.start()
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP_CONFIG": bootstrap(xds_port, node_id)}
    # stderr to a file: a pipe nobody reads could fill up and stall the client.
    with tempfile.TemporaryFile() as errfile:
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=cwd, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=errfile)
        try:
            await _check_peer(proc, errfile, server, backend, node_id)
        finally:
            if proc.returncode is None:
                proc.kill()  # by PID: the process this test started
                await proc.wait()
            await server.stop()
            await backend.server.stop(None)


async def _check_peer(proc: asyncio.subprocess.Process, errfile: IO[bytes], server: AdsServer,
                      backend: EchoBackend, node_id: str) -> None:
    assert proc.stdout is not None and proc.stdin is not None
    line = await asyncio.wait_for(proc.stdout.readline(), PROCESS_TIMEOUT_S)
    if not line:
        await asyncio.wait_for(proc.wait(), WAIT_S)
        errfile.seek(0)
        err = errfile.read().decode(errors="replace")
        pytest.fail(f"xDS client failed (rc={proc.returncode}): {err[-3000:]}")
    result = json.loads(line)
    assert result["ok"] == CALLS
    assert all(r.startswith("echo-1:") for r in result["replies"]), result
    assert backend.calls == CALLS
    # The client keeps its xDS stream open until stdin closes: its ACKs race its RPCs.
    for type_url in ALL_TYPES:
        version = server.snapshot.get(type_url).version
        await server.wait_for(_acked_by(node_id, type_url, version), WAIT_S)
    assert not [e for e in server.events if e.node_id == node_id and not e.ack], \
        "the client NACKed"
    # The client asked for the names it needed, not a wildcard, for RDS and EDS.
    asked = {(r.type_url, tuple(r.resource_names)) for r in server.requests}
    assert (ROUTE_CONFIGURATION, ("echo-route",)) in asked
    assert (CLUSTER_LOAD_ASSIGNMENT, ("echo-cluster",)) in asked
    proc.stdin.close()
    assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0


def _acked_by(node_id: str, type_url: str, version: str) -> Callable[[AckEvent], bool]:
    def pred(e: AckEvent) -> bool:
        return (e.ack and e.node_id == node_id and e.type_url == type_url
                and e.version == version and not e.delta)

    return pred


async def test_grpcio_xds_client_completes_rpcs() -> None:
    cmd = [sys.executable, str(PEERS / "grpcio_xds_client.py"), f"xds:///{TARGET_NAME}",
           METHOD, str(CALLS), str(CALL_TIMEOUT_S)]
    await check_client(cmd, "grpcio-peer", ROOT)


@pytest.mark.node
async def test_grpc_js_xds_client_completes_rpcs() -> None:
    node = shutil.which("node")
    assert node is not None
    cmd = [node, "xds_client.js", f"xds:///{TARGET_NAME}", METHOD, str(CALLS),
           str(CALL_TIMEOUT_S * 1000)]
    await check_client(cmd, "grpc-js-peer", PEERS / "node")
