"""The xDS client over TLS (CA file) with a bearer token, and a token on plaintext, on loopback.

The embedded ADS server's servicer is mounted on a gRPC server with TLS credentials and an
interceptor that records the ``authorization`` header of every stream.  The token file is
re-read on every connect: rotating it and restarting the server shows the new token.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from integration.xds_server import AdsServer
from tests.e2e.test_xds_client import config
from xds_client import CLUSTER, LISTENER, XdsClient, make_node

WAIT = 5.0
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


def self_signed(dir_: Path, stem: str) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1/localhost (its own CA)."""
    key, cert = dir_ / f"{stem}.key", dir_ / f"{stem}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj",
         "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30)
    return key, cert


class RecordAuth(grpc.aio.ServerInterceptor):
    """Remembers the authorization header of each incoming call."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        md = dict(details.invocation_metadata or ())
        self.seen.append(md.get("authorization"))  # type: ignore[arg-type]
        return await continuation(details)


@dataclass
class Served:
    ads: AdsServer
    auth: RecordAuth
    port: int = 0
    servers: list[grpc.aio.Server] = field(default_factory=list)

    async def start(self, creds: grpc.ServerCredentials | None, port: int = 0) -> int:
        server = grpc.aio.server(interceptors=[self.auth])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.ads, server)
        addr = f"127.0.0.1:{port}"
        bound = (server.add_secure_port(addr, creds) if creds is not None
                 else server.add_insecure_port(addr))
        await server.start()
        self.servers.append(server)
        self.port = bound
        return bound

    async def stop_all(self) -> None:
        for s in self.servers:
            await s.stop(None)
        self.servers.clear()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    s = Served(AdsServer(config()), RecordAuth())
    yield s
    await s.stop_all()


def tls_creds(key: Path, cert: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])


async def test_tls_with_bearer_token_reread_on_reconnect(served: Served, tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path, "server")
    token = tmp_path / "token"
    token.write_text("first-token\n")
    creds = tls_creds(key, cert)
    port = await served.start(creds)
    client = XdsClient(f"127.0.0.1:{port}", make_node("tls-node"), ca_file=str(cert),
                       token_file=str(token), backoff_initial=0.05, backoff_max=0.3)
    client.watch(LISTENER, None, lambda ev: None)
    client.watch(CLUSTER, None, lambda ev: None)
    await client.start()
    try:
        await client.wait_synced(WAIT)
        assert served.auth.seen[-1] == "Bearer first-token"
        # rotate the token; a restarted server forces a new connect which must read it
        token.write_text("second-token\n")
        await served.stop_all()
        await client.wait_for(lambda c: not c.status.connected, WAIT)
        await served.start(creds, port)
        await client.wait_for(lambda c: c.status.streams_opened >= 2 and c.core.synced(), WAIT)
        assert served.auth.seen[-1] == "Bearer second-token"
        assert len(client.snapshot().of(LISTENER)) == 2
    finally:
        await client.stop()


async def test_tls_with_wrong_ca_never_connects(served: Served, tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path, "server")
    _, other_ca = self_signed(tmp_path, "other")
    port = await served.start(tls_creds(key, cert))
    client = XdsClient(f"127.0.0.1:{port}", make_node("tls-node"), ca_file=str(other_ca),
                       backoff_initial=0.05, backoff_max=0.2)
    client.watch(CLUSTER, None, lambda ev: None)
    await client.start()
    try:
        await client.wait_for(lambda c: c.status.last_error is not None, WAIT)
        assert not client.status.connected and client.responses_received == 0
        assert served.auth.seen == []  # no call ever reached the server
    finally:
        await client.stop()


async def test_plaintext_with_token_sends_header(served: Served, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("plain-token")
    port = await served.start(None)
    client = XdsClient(f"127.0.0.1:{port}", make_node("plain-node"), token_file=str(token))
    client.watch(CLUSTER, None, lambda ev: None)
    await client.start()
    try:
        await client.wait_synced(WAIT)
        assert served.auth.seen == ["Bearer plain-token"]
    finally:
        await client.stop()
