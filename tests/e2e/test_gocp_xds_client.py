"""sockmesh's xDS client against a go-control-plane server (tests/peers/gocp), SotW and delta.

go-control-plane is the reference Go xDS server library (Contour, Gloo and others build on
it).  The peer serves a snapshot file written from the same resources the embedded server
serves; the tests change the file and the server pushes the new version.  The server logs
every request and response as JSON lines, so the tests check what it saw (ACK versions,
NACK error details) and what it did after a NACK.

Waits are conditions with deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from integration.validation import translator_validator
from integration.xds_server import AdsServer, load_config
from tests.e2e.test_xds_client import cla, config
from tests.support.capabilities import ROOT
from tests.support.gocp import GocpServer, write_snapshot
from tests.support.testdata import BOOKINFO_DUMP, istio_dump
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
from xds_client.protocol import DEFAULT_NACK_BACKOFF_INITIAL, DEFAULT_NACK_BACKOFF_MAX

pytestmark = pytest.mark.gocp

WAIT = 10.0
NACK_WINDOW = 3.0
DNE_TIMEOUT = 0.5
VARIANTS = pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
ALL_TYPES = (LISTENER, ROUTE_CONFIGURATION, CLUSTER, CLUSTER_LOAD_ASSIGNMENT)
Event = dict[str, Any]


@pytest.fixture
def snap_file(tmp_path: Path) -> Path:
    p = tmp_path / "snapshot.json"
    write_snapshot(config(), p, version="v1")
    return p


@pytest.fixture
def gocp(snap_file: Path, tmp_path: Path) -> Iterator[GocpServer]:
    srv = GocpServer(snap_file, tmp_path / "gocp")
    srv.start()
    yield srv
    srv.stop()


def new_client(address: str, delta: bool, events: list[WatchEvent] | None = None
               ) -> XdsClient:
    client = XdsClient(address, make_node("gocp-e2e-node", "e2e"), delta=delta,
                       does_not_exist_timeout=DNE_TIMEOUT, backoff_initial=0.05,
                       backoff_max=0.5, validator=translator_validator)
    return watch_all(client, events)


async def wait_event(srv: GocpServer, predicate: Callable[[Event], bool],
                     timeout: float = WAIT) -> Event:
    """GocpServer.wait_event without blocking the event loop the client runs on."""
    return await asyncio.to_thread(srv.wait_event, predicate, timeout)


def acked_v1(type_url: str) -> Callable[[Event], bool]:
    """A SotW request that ACKs version v1 of ``type_url``."""
    return lambda e: (e["event"] == "request" and e["type"] == type_url
                      and e["version"] == "v1" and e["error"] is None)


def delta_response(type_url: str) -> Callable[[Event], bool]:
    """A delta response of ``type_url``."""
    return lambda e: e["event"] == "response" and e["type"] == type_url and bool(e["delta"])


def assert_same_resources(got: Mapping[str, Any], want: ResourceSet, type_url: str) -> None:
    expected = want.by_type(type_url)
    assert set(got) == set(expected), type_url
    for name, msg in expected.items():
        assert got[name] == msg, f"{type_url} {name} differs"


@VARIANTS
async def test_full_sync(gocp: GocpServer, delta: bool) -> None:
    client = new_client(gocp.address, delta)
    await client.start()
    try:
        await client.wait_synced(WAIT)
        snap = client.snapshot()
        for t in ALL_TYPES:
            assert_same_resources(snap.of(t), config(), t)
            assert client.status.types[t].nacks == 0
        if not delta:
            # the server saw an ACK of its version for every type
            for t in ALL_TYPES:
                await wait_event(gocp, acked_v1(t))
                assert client.status.types[t].version == "v1"
        else:
            for t in ALL_TYPES:
                await wait_event(gocp, delta_response(t))
        assert client.status.connected
    finally:
        await client.stop()


@VARIANTS
async def test_update_and_removal(gocp: GocpServer, snap_file: Path, delta: bool) -> None:
    events: list[WatchEvent] = []
    client = new_client(gocp.address, delta, events)
    await client.start()
    try:
        await client.wait_synced(WAIT)
        # an endpoint moves: the changed file is served as a new version
        write_snapshot(config(port=9000), snap_file, version="v2")
        await wait_event(gocp, lambda e: e["event"] == "serving" and e["version"] == "v2")
        await client.wait_for(
            lambda c: c.snapshot().of(CLUSTER_LOAD_ASSIGNMENT)["svc-a"].endpoints[0]
            .lb_endpoints[0].endpoint.address.socket_address.port_value == 9000, WAIT)
        if not delta:
            await client.wait_for(
                lambda c: c.status.types[CLUSTER_LOAD_ASSIGNMENT].version == "v2", WAIT)
        # a listener, its route config, cluster and endpoints disappear
        write_snapshot(config(port=9000, extra_listener=False), snap_file, version="v3")
        await client.wait_for(lambda c: "l90" not in c.snapshot().of(LISTENER)
                              and "svc-b" not in c.snapshot().of(CLUSTER), WAIT)
        removed = {(e.type_url, e.name) for e in events if e.kind == WatchEventKind.REMOVED}
        assert (LISTENER, "l90") in removed and (CLUSTER, "svc-b") in removed
        assert set(client.snapshot().of(LISTENER)) == {"l80"}
        assert set(client.snapshot().of(CLUSTER)) == {"svc-a"}
        assert client.status.nacks == 0
    finally:
        await client.stop()


@VARIANTS
async def test_sighup_reload(gocp: GocpServer, snap_file: Path, delta: bool) -> None:
    """Besides polling, SIGHUP re-reads the file (poll made slow to show the difference)."""
    gocp.stop()
    slow = GocpServer(snap_file, gocp.workdir / "slow", poll="1h")
    slow.start()
    client = new_client(slow.address, delta)
    await client.start()
    try:
        await client.wait_synced(WAIT)
        write_snapshot(config(port=9100), snap_file, version="v2")
        slow.reload()
        await wait_event(slow, lambda e: e["event"] == "serving" and e["why"] == "SIGHUP")
        await client.wait_for(
            lambda c: c.snapshot().of(CLUSTER_LOAD_ASSIGNMENT)["svc-a"].endpoints[0]
            .lb_endpoints[0].endpoint.address.socket_address.port_value == 9100, WAIT)
    finally:
        await client.stop()
        slow.stop()


def server_time(event: Event) -> float:
    """An event's time stamp (Go RFC 3339 with nanoseconds) as POSIX seconds."""
    stamp = event["time"].removesuffix("Z")
    whole, _, frac = stamp.partition(".")
    return (datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
            + float(f"0.{frac or 0}"))


def nacks_allowed(window: float) -> int:
    """How many NACKs of one type the client's default backoff lets out in ``window`` s."""
    sent, at, delay = 1, 0.0, DEFAULT_NACK_BACKOFF_INITIAL
    while at + delay < window:
        at += delay
        sent += 1
        delay = min(2 * delay, DEFAULT_NACK_BACKOFF_MAX)
    return sent


def rejected_by_sockmesh() -> ResourceSet:
    """config() with a malformed endpoint address (not an IP; Envoy rejects it too) in
    cluster svc-a; go-control-plane does not validate resources and serves it."""
    bad = config()
    bad_cla = cla("svc-a", 8080)
    bad_cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address = "10.0.0.01"
    bad.endpoints["svc-a"] = bad_cla
    return bad


@VARIANTS
async def test_nack(gocp: GocpServer, snap_file: Path, delta: bool) -> None:
    """What go-control-plane does with a NACK.

    SotW: the snapshot cache answers a request whose version differs from the snapshot's
    right away, and a NACK carries the last good version, so every NACK is answered with
    the same rejected resources again: the server resends until the snapshot changes.
    Delta: the server records what it sent as the client's state and does not resend.
    The client keeps serving the last good resources either way, and spaces its NACKs
    (50 ms doubling up to 5 s): without that, SotW looped at ~2,200 NACKs/s.
    """
    nacks: list[Nack] = []
    client = new_client(gocp.address, delta)
    client.on_nack(nacks.append)
    await client.start()
    try:
        await client.wait_synced(WAIT)
        write_snapshot(rejected_by_sockmesh(), snap_file, version="bad")
        ev = await wait_event(gocp, lambda e: e["event"] == "request"
                              and e["type"] == CLUSTER_LOAD_ASSIGNMENT and e["error"])
        assert "svc-a" in ev["error"] and "not an IP address" in ev["error"], ev
        if not delta:
            assert ev["version"] == "v1"  # the NACK names the last good version
        kept = client.snapshot().of(CLUSTER_LOAD_ASSIGNMENT)["svc-a"]
        assert kept.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address \
            == "127.0.0.1"
        # watch what the server does next
        t0 = time.monotonic()
        await client.wait_for(lambda c: time.monotonic() - t0 > NACK_WINDOW, NACK_WINDOW + WAIT)
        eds_nacks = client.status.types[CLUSTER_LOAD_ASSIGNMENT].nacks
        resent = [e for e in gocp.events() if e["event"] == "response"
                  and e["type"] == CLUSTER_LOAD_ASSIGNMENT and e.get("version") == "bad"]
        # NACKs as the server received them, by its clock, in the window after the first
        seen = [server_time(e) for e in gocp.events() if e["event"] == "request"
                and e["type"] == CLUSTER_LOAD_ASSIGNMENT and e["error"]]
        in_window = [t for t in seen if t - seen[0] < NACK_WINDOW]
        print(f"{'delta' if delta else 'sotw'}: go-control-plane sent the rejected EDS "
              f"{len(resent)}x, client NACKed {eds_nacks}x, {len(in_window)} NACKs reached "
              f"the server in the {NACK_WINDOW} s after the first")
        if delta:
            assert eds_nacks == 1 and len(resent) == 1
        else:
            assert len(resent) >= 3  # resent after each NACK
            assert 3 <= len(in_window) <= nacks_allowed(NACK_WINDOW) + 1
        # a good snapshot ends it
        write_snapshot(config(port=9200), snap_file, version="good")
        await client.wait_for(
            lambda c: c.snapshot().of(CLUSTER_LOAD_ASSIGNMENT)["svc-a"].endpoints[0]
            .lb_endpoints[0].endpoint.address.socket_address.port_value == 9200, WAIT)
        assert nacks and all(n.type_url == CLUSTER_LOAD_ASSIGNMENT for n in nacks)
    finally:
        await client.stop()


@VARIANTS
async def test_reconnect_after_restart(gocp: GocpServer, snap_file: Path,
                                       delta: bool) -> None:
    client = new_client(gocp.address, delta)
    await client.start()
    try:
        await client.wait_synced(WAIT)
        opened = client.status.streams_opened
        gocp.stop()
        await client.wait_for(lambda c: not c.status.connected, WAIT)
        # the last good config keeps serving while the server is away
        assert set(client.snapshot().of(LISTENER)) == {"l80", "l90"}
        write_snapshot(config(port=9300), snap_file, version="v2")
        gocp.start()  # same port
        await client.wait_for(lambda c: c.status.connected
                              and c.status.streams_opened > opened, WAIT)
        await client.wait_for(
            lambda c: c.snapshot().of(CLUSTER_LOAD_ASSIGNMENT)["svc-a"].endpoints[0]
            .lb_endpoints[0].endpoint.address.socket_address.port_value == 9300, WAIT)
        # the client resubscribed saying what it had (SotW: version v1 on the new stream)
        first = [e for e in gocp.events() if e["event"] == "request"
                 and e["type"] == CLUSTER]
        assert first, gocp.log_tail()
        if not delta:
            assert first[0]["version"] == "v1" and first[0]["nonce"] == ""
    finally:
        await client.stop()


def run_dump(address: str, delta: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "integration.cli", "xds-dump", "--server", address,
           "--timeout", "8", "--missing-after", "1"]
    if delta:
        cmd.append("--delta")
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30, cwd=ROOT)
    # the Istio dump names an endpoint assignment it does not contain: exit 0 with a note
    assert out.stdout, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def resources_of(doc: dict[str, Any]) -> list[Any]:
    """The resources of a config dump, without version strings (each server has its own)."""
    out = []
    for section in doc["configs"]:
        for key, entries in section.items():
            if key.startswith("dynamic_"):
                for e in entries:
                    body = e.get("active_state", e)
                    out.append({k: v for k, v in body.items() if k != "version_info"})
    return out


@VARIANTS
async def test_same_snapshot_as_embedded_server(tmp_path: Path, delta: bool) -> None:
    """A real Istio dump served by go-control-plane and by the embedded server: xds-dump
    prints the same resources from both."""
    snap = tmp_path / "istio.json"
    dump = istio_dump(BOOKINFO_DUMP)
    write_snapshot(dump, snap)
    embedded = AdsServer(load_config(dump))
    port = await embedded.start("127.0.0.1", 0)
    try:
        with GocpServer(snap, tmp_path / "gocp") as srv:
            from_gocp, from_embedded = await asyncio.gather(
                asyncio.to_thread(run_dump, srv.address, delta),
                asyncio.to_thread(run_dump, f"127.0.0.1:{port}", delta))
    finally:
        await embedded.stop()
    assert resources_of(from_gocp) == resources_of(from_embedded)
    assert len(resources_of(from_gocp)) == len(load_config(dump))


def test_refuses_non_loopback(snap_file: Path, tmp_path: Path) -> None:
    from tests.support.gocp import gocp_binary

    binary = gocp_binary()
    assert binary is not None
    out = subprocess.run([str(binary), "--listen", "0.0.0.0:0", "--snapshot", str(snap_file)],
                         check=False, capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "not a loopback" in out.stderr

