"""The xDS client against the embedded ADS server over real gRPC on loopback, SotW and delta.

Every test runs in both variants.  Waits are conditions with deadlines (the client's and
the server's ``wait_for``), never sleeps.  The does-not-exist timeout is 0.5 s here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import re2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from integration.xds_server import AckEvent, AdsServer
from tests.support.xds_watch import watch_all
from translator.resources import ResourceSet
from xds_client import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    Nack,
    WatchEvent,
    WatchEventKind,
    XdsClient,
    make_node,
)

DNE_TIMEOUT = 0.5
WAIT = 5.0
VARIANTS = pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])


def listener(name: str, route: str, port: int) -> listener_pb2.Listener:
    lis = listener_pb2.Listener(name=name)
    lis.address.socket_address.address = "0.0.0.0"
    lis.address.socket_address.port_value = port
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = route
    f = lis.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager")
    f.typed_config.Pack(hcm)
    return lis


def route(name: str, cluster: str, regex: str | None = None) -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name=name)
    r = rc.virtual_hosts.add(name="vh", domains=["*"]).routes.add()
    if regex is None:
        r.match.prefix = "/"
    else:
        r.match.safe_regex.regex = regex
    r.route.cluster = cluster
    return rc


def eds_cluster(name: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.eds_cluster_config.eds_config.ads.SetInParent()
    return c


def cla(name: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    a = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    sa = a.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    sa.address, sa.port_value = "127.0.0.1", port
    return a


def config(port: int = 8080, extra_listener: bool = True) -> ResourceSet:
    rs = ResourceSet()
    rs.add(listener("l80", "r80", 80))
    rs.add(route("r80", "svc-a"))
    rs.add(eds_cluster("svc-a"))
    rs.add(cla("svc-a", port))
    if extra_listener:
        rs.add(listener("l90", "r90", 90))
        rs.add(route("r90", "svc-b"))
        rs.add(eds_cluster("svc-b"))
        rs.add(cla("svc-b", port + 1))
    return rs


def validate_regexes(type_url: str, resources: Mapping[str, Message]) -> None:
    """What the agent's translator does: a route whose regex RE2 rejects is invalid."""
    if type_url != ROUTE_CONFIGURATION:
        return
    for name, rc in resources.items():
        for vh in rc.virtual_hosts:  # type: ignore[attr-defined]
            for r in vh.routes:
                if r.match.HasField("safe_regex"):
                    try:
                        re2.compile(r.match.safe_regex.regex)
                    except re2.error as exc:
                        raise ValueError(f"route config {name!r}: bad regex: {exc}") from None


def packed(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


@pytest.fixture
async def server() -> AsyncIterator[AdsServer]:
    srv = AdsServer(config())
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop()


def new_client(port: int, delta: bool, **kw: object) -> XdsClient:
    return XdsClient(f"127.0.0.1:{port}", make_node("e2e-node", "e2e"), delta=delta,
                     does_not_exist_timeout=DNE_TIMEOUT, backoff_initial=0.05,
                     backoff_max=0.5, validator=validate_regexes, **kw)  # type: ignore[arg-type]


async def started(port: int, delta: bool, events: list[WatchEvent] | None = None,
                  **kw: object) -> XdsClient:
    client = watch_all(new_client(port, delta, **kw), events)
    await client.start()
    return client


async def poll(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Re-check ``predicate`` every 10 ms until it holds (for state with no event to wait
    on, like what the server has read); fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def acked(type_url: str, version: str) -> Callable[[AckEvent], bool]:
    return lambda ev: ev.type_url == type_url and ev.ack and ev.version == version


@VARIANTS
async def test_initial_fetch(server: AdsServer, delta: bool) -> None:
    client = await started(server.port, delta)
    try:
        await client.wait_synced(WAIT)
        snap = client.snapshot()
        assert set(snap.of(LISTENER)) == {"l80", "l90"}
        assert set(snap.of(ROUTE_CONFIGURATION)) == {"r80", "r90"}
        assert set(snap.of(CLUSTER)) == {"svc-a", "svc-b"}
        assert set(snap.of(CLUSTER_LOAD_ASSIGNMENT)) == {"svc-a", "svc-b"}
        want = server.snapshot
        for t in (LISTENER, ROUTE_CONFIGURATION, CLUSTER, CLUSTER_LOAD_ASSIGNMENT):
            await server.wait_for(acked(t, want.get(t).version), WAIT)
            assert client.status.types[t].version == want.get(t).version
        assert client.status.connected and client.status.nacks == 0
    finally:
        await client.stop()


@VARIANTS
async def test_update_is_delivered_and_acked(server: AdsServer, delta: bool) -> None:
    events: list[WatchEvent] = []
    client = await started(server.port, delta, events)
    try:
        await client.wait_synced(WAIT)
        version = server.set_resources(config(port=9000))
        await server.wait_for(acked(CLUSTER_LOAD_ASSIGNMENT, version), WAIT)
        await client.wait_for(
            lambda c: c.snapshot().of(CLUSTER_LOAD_ASSIGNMENT)["svc-a"].endpoints[0]
            .lb_endpoints[0].endpoint.address.socket_address.port_value == 9000, WAIT)
        assert client.status.types[CLUSTER_LOAD_ASSIGNMENT].version == version
    finally:
        await client.stop()


@VARIANTS
async def test_nack_of_invalid_route_keeps_last_good(server: AdsServer, delta: bool) -> None:
    nacks: list[Nack] = []
    client = await started(server.port, delta)
    client.on_nack(nacks.append)
    try:
        await client.wait_synced(WAIT)
        good_version = client.status.types[ROUTE_CONFIGURATION].version
        bad = config()
        bad.route_configs["r80"] = route("r80", "svc-a", regex="(unclosed")
        server.set_resources(bad)
        ev = await server.wait_for(lambda e: not e.ack and e.type_url == ROUTE_CONFIGURATION,
                                   WAIT)
        assert "bad regex" in (ev.error_detail or "") and "r80" in (ev.error_detail or "")
        if not delta:  # SotW NACKs carry the last good version
            assert ev.version == good_version
        st = client.status.types[ROUTE_CONFIGURATION]
        assert st.version == good_version and st.nacks == 1 and "bad regex" in (st.last_nack or "")
        kept = client.snapshot().of(ROUTE_CONFIGURATION)["r80"]
        assert kept.virtual_hosts[0].routes[0].match.prefix == "/"  # type: ignore[attr-defined]
        assert nacks and nacks[0].type_url == ROUTE_CONFIGURATION
        # an undecodable payload is NACKed the same way
        server.set_raw(CLUSTER, [any_pb2.Any(type_url=CLUSTER, value=b"\xff\xff")])
        ev = await server.wait_for(lambda e: not e.ack and e.type_url == CLUSTER, WAIT)
        assert "cannot decode" in (ev.error_detail or "")
        assert set(client.snapshot().of(CLUSTER)) == {"svc-a", "svc-b"}
    finally:
        await client.stop()


@VARIANTS
async def test_invalid_first_response(delta: bool) -> None:
    srv = AdsServer(config())
    srv.set_raw(CLUSTER, [packed(listener("not-a-cluster", "r", 1))])
    port = await srv.start()
    client = await started(port, delta)
    try:
        ev = await srv.wait_for(lambda e: not e.ack and e.type_url == CLUSTER, WAIT)
        assert "in a response for" in (ev.error_detail or "")
        if not delta:
            assert ev.version == ""  # nothing was ever accepted
        assert client.status.types[CLUSTER].version == ""
        # once the server sends something valid the client recovers
        version = srv.set_resources(config())
        await srv.wait_for(acked(CLUSTER, version), WAIT)
        await client.wait_synced(WAIT)
        assert set(client.snapshot().of(CLUSTER)) == {"svc-a", "svc-b"}
    finally:
        await client.stop()
        await srv.stop()


@VARIANTS
async def test_duplicate_names_in_one_response_are_nacked(server: AdsServer,
                                                         delta: bool) -> None:
    client = await started(server.port, delta)
    try:
        await client.wait_synced(WAIT)
        good = client.status.types[CLUSTER].version
        dup = packed(eds_cluster("svc-a"))
        server.set_raw(CLUSTER, [dup, dup, packed(eds_cluster("svc-c"))])
        ev = await server.wait_for(lambda e: not e.ack and e.type_url == CLUSTER, WAIT)
        assert "duplicate resource name 'svc-a'" in (ev.error_detail or "")
        assert client.status.types[CLUSTER].version == good
        assert "svc-c" not in client.snapshot().of(CLUSTER)
    finally:
        await client.stop()


@VARIANTS
async def test_removal(server: AdsServer, delta: bool) -> None:
    events: list[WatchEvent] = []
    client = await started(server.port, delta, events)
    try:
        await client.wait_synced(WAIT)
        server.set_resources(config(extra_listener=False))
        await client.wait_for(lambda c: "l90" not in c.snapshot().of(LISTENER), WAIT)
        await client.wait_for(lambda c: "svc-b" not in c.snapshot().of(CLUSTER), WAIT)
        snap = client.snapshot()
        # what only the removed listener/cluster referenced is dropped too
        assert set(snap.of(ROUTE_CONFIGURATION)) == {"r80"}
        assert set(snap.of(CLUSTER_LOAD_ASSIGNMENT)) == {"svc-a"}
        removed = {(e.type_url, e.name) for e in events if e.kind is WatchEventKind.REMOVED}
        assert {(LISTENER, "l90"), (CLUSTER, "svc-b")} <= removed
    finally:
        await client.stop()


@VARIANTS
async def test_does_not_exist(server: AdsServer, delta: bool) -> None:
    client = await started(server.port, delta)
    seen: list[WatchEvent] = []
    client.watch(ROUTE_CONFIGURATION, ["no-such-route"], seen.append)
    try:
        await client.wait_for(
            lambda c: any(e.kind is WatchEventKind.DOES_NOT_EXIST for e in seen), WAIT)
        assert [(e.kind, e.name) for e in seen] == [
            (WatchEventKind.DOES_NOT_EXIST, "no-such-route")]
        assert "no-such-route" in client.status.types[ROUTE_CONFIGURATION].does_not_exist
        await client.wait_synced(WAIT)  # a does-not-exist name no longer blocks sync
    finally:
        await client.stop()


def _first_requests_after(server: AdsServer, start: int, delta: bool) -> dict[str, Message]:
    """The first request of each type on streams opened after ``server.requests[start]``.

    A late ACK from the dropped stream can still arrive after the drop; it is not a
    resubscription, so requests are filtered by the stream that carried them.
    """
    out: dict[str, Message] = {}
    old_streams = set(server.request_streams[:start])
    for req, stream in zip(server.requests[start:], server.request_streams[start:]):
        if isinstance(req, discovery_pb2.DeltaDiscoveryRequest) != delta or stream in old_streams:
            continue
        out.setdefault(req.type_url, req)
    return out


@VARIANTS
async def test_stream_killed_reconnects_and_resubscribes_with_versions(
        server: AdsServer, delta: bool) -> None:
    client = await started(server.port, delta)
    try:
        await client.wait_synced(WAIT)
        versions = {t: s.version for t, s in client.status.types.items()}
        # the server has read every request of this stream once it has seen each ACK
        for t, v in versions.items():
            await server.wait_for(acked(t, v), WAIT)
        before = len(server.requests)
        server.drop_streams()
        await client.wait_for(lambda c: c.status.streams_opened >= 2 and c.core.synced(), WAIT)
        assert set(client.snapshot().of(LISTENER)) == {"l80", "l90"}
        # the client may be in sync before the server has read all its requests (delta
        # sends nothing back for names the client already holds): poll for them
        all_types = {LISTENER, ROUTE_CONFIGURATION, CLUSTER, CLUSTER_LOAD_ASSIGNMENT}
        await poll(lambda: set(_first_requests_after(server, before, delta)) == all_types)
        first = _first_requests_after(server, before, delta)
        for t, req in first.items():
            if delta:
                held = dict(req.initial_resource_versions)  # type: ignore[attr-defined]
                assert set(held) == set(client.snapshot().of(t)) and all(held.values())
            else:
                assert req.version_info == versions[t]  # type: ignore[attr-defined]
                assert req.response_nonce == ""  # type: ignore[attr-defined]
        assert sorted(first[ROUTE_CONFIGURATION].resource_names_subscribe if delta  # type: ignore[attr-defined]
                      else first[ROUTE_CONFIGURATION].resource_names) == ["r80", "r90"]  # type: ignore[attr-defined]
    finally:
        await client.stop()


@VARIANTS
async def test_server_restart_keeps_last_good_and_recovers(delta: bool) -> None:
    srv = AdsServer(config())
    port = await srv.start()
    client = await started(port, delta)
    srv2: AdsServer | None = None
    try:
        await client.wait_synced(WAIT)
        await srv.stop()
        await client.wait_for(lambda c: not c.status.connected, WAIT)
        assert set(client.snapshot().of(CLUSTER)) == {"svc-a", "svc-b"}  # still serving
        srv2 = AdsServer(config(port=7000))
        await srv2.start("127.0.0.1", port)
        await srv2.wait_for(lambda e: e.type_url == CLUSTER_LOAD_ASSIGNMENT and e.ack, WAIT)
        await client.wait_for(
            lambda c: c.core.synced() and c.snapshot().of(CLUSTER_LOAD_ASSIGNMENT)["svc-a"]
            .endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 7000,
            WAIT)
        assert client.status.connected and client.status.nacks == 0
    finally:
        await client.stop()
        if srv2 is not None:
            await srv2.stop()


@VARIANTS
async def test_subscribe_and_unsubscribe(server: AdsServer, delta: bool) -> None:
    # no LDS/CDS: only explicitly watched route configs
    client = new_client(server.port, delta)
    seen: list[WatchEvent] = []
    w80 = client.watch(ROUTE_CONFIGURATION, ["r80"], seen.append)
    await client.start()
    try:
        await client.wait_for(lambda c: "r80" in c.snapshot().of(ROUTE_CONFIGURATION), WAIT)
        client.watch(ROUTE_CONFIGURATION, ["r90"], seen.append)
        await client.wait_for(lambda c: "r90" in c.snapshot().of(ROUTE_CONFIGURATION), WAIT)
        before = len(server.requests)
        client.cancel(w80)
        assert set(client.snapshot().of(ROUTE_CONFIGURATION)) == {"r90"}  # dropped locally
        # change both; only r90 may reach us, and the ACK proves the server read our
        # narrowed subscription first (one stream, in order)
        changed = config()
        changed.route_configs["r80"] = route("r80", "svc-b")
        changed.route_configs["r90"] = route("r90", "svc-a")
        version = server.set_resources(changed)
        await server.wait_for(acked(ROUTE_CONFIGURATION, version), WAIT)
        await client.wait_for(lambda c: c.snapshot().of(ROUTE_CONFIGURATION)["r90"]
                              .virtual_hosts[0].routes[0].route.cluster == "svc-a", WAIT)
        narrowed = [r for r in server.requests[before:]
                    if (list(r.resource_names_unsubscribe) == ["r80"] if delta  # type: ignore[union-attr]
                        else list(r.resource_names) == ["r90"])]  # type: ignore[union-attr]
        assert narrowed
        assert set(client.snapshot().of(ROUTE_CONFIGURATION)) == {"r90"}
        assert [e.name for e in seen if e.kind is WatchEventKind.UPDATED] == ["r80", "r90", "r90"]
    finally:
        await client.stop()
