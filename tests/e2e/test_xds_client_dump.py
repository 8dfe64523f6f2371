"""`sockmesh xds-dump` against the embedded ADS server on loopback, SotW and delta:
the real Istio sample configs come back with every resource intact, and failures
(nothing listening, a server that never answers) end with a message and a non-zero code."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from pathlib import Path

import pytest

from integration.commands import xds_dump
from integration.xds_server import AdsServer
from tests.support.testdata import istio_dumps
from translator.resources import ResourceSet, parse_config_dump

ISTIO_FILES = istio_dumps()
VARIANTS = pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])


def dump_args(port: int, delta: bool, timeout: float = 5.0, **kw: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    xds_dump.add_arguments(parser)
    argv = ["--server", f"127.0.0.1:{port}", "--timeout", str(timeout),
            "--missing-after", "0.5"]
    if delta:
        argv.append("--delta")
    args = parser.parse_args(argv)
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def same_resources(a: ResourceSet, b: ResourceSet) -> None:
    for t in ("listeners", "route_configs", "clusters", "endpoints"):
        want, got = getattr(a, t), getattr(b, t)
        assert set(want) == set(got), t
        for name in want:
            assert want[name] == got[name], f"{t} {name!r} changed on the way"
    assert a.unknown_extensions == b.unknown_extensions


@pytest.mark.skipif(not ISTIO_FILES, reason="shared Istio test data not present")
@pytest.mark.parametrize("path", ISTIO_FILES, ids=[p.stem for p in ISTIO_FILES])
@VARIANTS
async def test_istio_samples_round_trip(path: Path, delta: bool) -> None:
    original = parse_config_dump(json.loads(path.read_text()), str(path.name))
    assert len(original) > 0
    server = AdsServer(original)
    port = await server.start()
    try:
        code, doc = await xds_dump.dump(dump_args(port, delta))
    finally:
        await server.stop()
    assert code == 0 and doc is not None
    # through JSON text, as a user would save it
    same_resources(original, parse_config_dump(json.loads(json.dumps(doc))))


@VARIANTS
async def test_all_four_types_with_references(delta: bool) -> None:
    from tests.e2e.test_xds_client import config  # the shared small mesh

    original = config()
    server = AdsServer(original)
    port = await server.start()
    try:
        code, doc = await xds_dump.dump(dump_args(port, delta, referenced_only=True))
        await server.wait_for(lambda e: e.ack, 5.0)  # the client may finish first
    finally:
        await server.stop()
    assert code == 0 and doc is not None
    types = [c["@type"].rsplit(".", 1)[-1] for c in doc["configs"]]
    assert types == ["ListenersConfigDump", "ClustersConfigDump", "EndpointsConfigDump",
                     "RoutesConfigDump"]
    same_resources(original, parse_config_dump(doc))
    # the default node is an Istio sidecar identity (what istiod insists on)
    assert {e.node_id for e in server.events} == {
        "sidecar~127.0.0.1~sockmesh-xds-dump.default~default.svc.cluster.local"}


async def test_node_id_option(capsys: pytest.CaptureFixture[str]) -> None:
    server = AdsServer(ResourceSet())
    port = await server.start()
    try:
        code, doc = await xds_dump.dump(dump_args(port, False, node_id="my-node"))
        # the first request of a stream carries the node; the dump may stop before the
        # server has read its last ACK, so the node is checked on the requests
        await server.wait_for_request(lambda r: r.node.id != "", 5.0)
    finally:
        await server.stop()
    assert code == 0 and doc is not None
    assert all(not v for c in doc["configs"] for v in c.values() if isinstance(v, list))
    assert {r.node.id for r in server.requests if r.node.id} == {"my-node"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_fails_with_message(capsys: pytest.CaptureFixture[str]) -> None:
    code = xds_dump.run(dump_args(_free_port(), False, timeout=0.5))
    err = capsys.readouterr().err
    assert code != 0
    assert "no xDS response" in err and "127.0.0.1" in err


async def test_silent_server_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    # accepts TCP but never speaks HTTP/2: the client must give up at --timeout
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)

    srv = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        code, doc = await xds_dump.dump(dump_args(port, False, timeout=0.5))
    finally:
        for w in accepted:
            w.close()
        srv.close()
        await srv.wait_closed()
    assert code != 0 and doc is None
    assert "within 0.5 s" in capsys.readouterr().err


@VARIANTS
async def test_validate_with_translator_nacks_what_sockmesh_rejects(
        delta: bool, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.e2e.test_xds_client import config, route

    bad = config()
    bad.route_configs["r80"] = route("r80", "svc-a", regex="(unclosed")
    server = AdsServer(bad)
    port = await server.start()
    try:
        code, doc = await xds_dump.dump(dump_args(port, delta, validate=True))
        await server.wait_for(lambda e: not e.ack, 5.0)
        nacks = [e for e in server.events if not e.ack]
    finally:
        await server.stop()
    assert code != 0 and doc is not None
    assert nacks and {e.type_url for e in nacks} == {
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"}
    assert "r80" in (nacks[0].error_detail or "")
    assert "rejected RDS" in capsys.readouterr().err
    # the rejected response is not in the dump; everything else is
    got = parse_config_dump(doc)
    assert "r80" not in got.route_configs and set(got.clusters) == {"svc-a", "svc-b"}
