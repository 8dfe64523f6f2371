"""The embedded server serving files: Istio config dumps intact, reload, broken files, CLI.

A raw ADS subscriber (plain grpc.aio stubs, SotW or delta) stands in for a client so that
what arrives is exactly what the server sent.  The CLI tests run ``sockmesh xds-server`` as
a real subprocess on loopback and stop it by PID.  Runtime: about 5-8 s in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from integration.xds_server import AdsServer, load_config
from tests.support.testdata import BOOKINFO_DUMP, istio_dump, istio_dumps
from translator.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    RESOURCE_TYPES,
    ROUTE_CONFIGURATION,
    parse_config_dump,
    resource_name,
    to_json,
)

ROOT = Path(__file__).resolve().parents[2]
ISTIO_DUMPS = istio_dumps()
ALL_TYPES = (CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION)
WAIT_S = 20.0

pytestmark = pytest.mark.timeout(120)


class RawSubscriber:
    """One ADS stream driven by hand: subscribe, read responses, ACK them."""

    def __init__(self, port: int, delta: bool, node_id: str = "raw-subscriber") -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.delta = delta
        self.node_id = node_id
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(self._requests())

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            req = await self._out.get()
            if req is None:
                return
            yield req

    def subscribe(self, type_url: str) -> None:
        """Wildcard subscription to ``type_url``."""
        node = {"id": self.node_id}
        if self.delta:
            self._out.put_nowait(discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, node=node))
        else:
            self._out.put_nowait(discovery_pb2.DiscoveryRequest(type_url=type_url, node=node))

    async def next(self, timeout: float = WAIT_S) -> Any:
        """The next response (ACKed before returning)."""
        resp = await asyncio.wait_for(self.call.read(), timeout)
        assert resp is not grpc.aio.EOF, "stream ended"
        if self.delta:
            self._out.put_nowait(discovery_pb2.DeltaDiscoveryRequest(
                type_url=resp.type_url, response_nonce=resp.nonce))
        else:
            self._out.put_nowait(discovery_pb2.DiscoveryRequest(
                type_url=resp.type_url, version_info=resp.version_info,
                response_nonce=resp.nonce))
        return resp

    async def fetch_all(self, type_urls: tuple[str, ...]) -> dict[str, list[any_pb2.Any]]:
        """Subscribe to every type and collect the first response of each."""
        for t in type_urls:
            self.subscribe(t)
        got: dict[str, list[any_pb2.Any]] = {}
        for _ in range(len(type_urls)):
            resp = await self.next()
            got[resp.type_url] = [r.resource if self.delta else r for r in resp.resources]
        assert set(got) == set(type_urls)
        return got

    async def close(self) -> None:
        self._out.put_nowait(None)
        self.call.cancel()
        await self.channel.close()


def unpack(a: any_pb2.Any) -> Any:
    msg = RESOURCE_TYPES[a.type_url]()
    assert a.Unpack(msg)
    return msg


def dump_objects(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(type URL, name) -> the resource's JSON object exactly as written in a config dump."""
    out = {}
    for section in json.loads(path.read_text())["configs"]:
        for value in section.values():
            for entry in value if isinstance(value, list) else []:
                for obj in entry.values():
                    if isinstance(obj, dict) and obj.get("@type") in RESOURCE_TYPES and (
                            obj.get("name") or obj.get("cluster_name")):
                        out[(obj["@type"], obj.get("name") or obj["cluster_name"])] = obj
    return out


@pytest.mark.skipif(not ISTIO_DUMPS, reason="no Istio sample dumps (../shared/testdata/istio)")
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize("dump", ISTIO_DUMPS, ids=lambda p: p.stem)
async def test_istio_dump_served_intact(dump: Path, delta: bool) -> None:
    resources = load_config(dump)
    assert len(resources) > 0
    server = AdsServer(resources)
    port = await server.start()
    sub = RawSubscriber(port, delta)
    try:
        got = await sub.fetch_all(ALL_TYPES)
        originals = dump_objects(dump)
        received = {(a.type_url, resource_name(unpack(a))): a for t in got for a in got[t]}
        assert set(received) == set(originals), "resources missing or extra"
        for key, a in received.items():
            msg = unpack(a)
            assert msg == resources.by_type(key[0])[key[1]]  # equal protos
            # ... and the same JSON as the dump file, Istio-only extensions included.
            assert to_json(msg) == originals[key], key
        for ext in resources.unknown_extensions:
            assert any(ext in json.dumps(to_json(unpack(a))) for a in received.values())
    finally:
        await sub.close()
        await server.stop()


# -- the CLI as a subprocess ---------------------------------------------------------------


class CliServer:
    """``sockmesh xds-server`` in a subprocess; stderr lines collected for assertions."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []
        self.port = 0
        self._pump = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, config: Path, *extra: str) -> CliServer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "integration.cli", "xds-server", "--config", str(config),
            "--port", "0", "--poll-interval", "0.1", *extra, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self = cls(proc)
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), WAIT_S)).decode()
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            assert m, f"no listening address in {line!r}; stderr: {self.stderr}"
            self.port = int(m.group(1))
        except BaseException:
            await self.stop()
            raise
        return self

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode().rstrip("\n"))

    async def wait_log(self, pattern: str, start: int = 0) -> str:
        """The first stderr line (from index ``start``) matching ``pattern``, within WAIT_S."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while loop.time() < deadline:
            for line in self.stderr[start:]:
                if re.search(pattern, line):
                    return line
            await asyncio.sleep(0.02)  # polling a condition under a deadline
        raise AssertionError(f"no log line matching {pattern!r}; stderr:\n" + "\n".join(
            self.stderr[-20:]))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump


def cluster_yaml(name: str, timeout: str = "1s") -> str:
    return (f"'@type': {CLUSTER}\nname: {name}\ntype: EDS\nconnect_timeout: {timeout}\n"
            "eds_cluster_config: {eds_config: {ads: {}}}\n")


def names(resp: Any) -> list[str]:
    return sorted(resource_name(unpack(a)) for a in resp.resources)


async def test_cli_reloads_and_keeps_last_good_on_broken_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "a.yaml").write_text(cluster_yaml("alpha"))
    (cfg / "routes.json").write_text(json.dumps({"resources": [
        {"@type": ROUTE_CONFIGURATION, "name": "r1", "virtual_hosts": [
            {"name": "vh", "domains": ["*"],
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "alpha"}}]}]}]}))
    server = await CliServer.start(cfg)
    sub = RawSubscriber(server.port, delta=False)
    try:
        sub.subscribe(CLUSTER)
        v1 = await sub.next()
        assert names(v1) == ["alpha"]

        # A changed file is pushed as a new version on the open stream.
        (cfg / "b.yaml").write_text(cluster_yaml("beta"))
        v2 = await sub.next()
        assert names(v2) == ["alpha", "beta"] and v2.version_info != v1.version_info

        # Broken files: each error names the file and the field; nothing is pushed.
        mark = len(server.stderr)
        (cfg / "b.yaml").write_text(cluster_yaml("beta", timeout="soon"))
        line = await server.wait_log(r"b\.yaml.*connect_timeout", mark)
        assert "still serving version " + v2.version_info in line
        mark = len(server.stderr)
        (cfg / "b.yaml").write_text(cluster_yaml("beta") + "colour: blue\n")
        await server.wait_log(r"b\.yaml.*no field named \"colour\"", mark)
        mark = len(server.stderr)
        (cfg / "b.yaml").write_text("name: [unclosed\n")
        await server.wait_log(r"b\.yaml: invalid YAML", mark)
        mark = len(server.stderr)
        (cfg / "b.yaml").write_text(cluster_yaml("alpha"))
        await server.wait_log(r"b\.yaml.*duplicate Cluster name 'alpha'.*a\.yaml", mark)

        # A new subscriber still gets the last good snapshot.
        late = RawSubscriber(server.port, delta=True, node_id="late")
        try:
            got = await late.fetch_all((CLUSTER,))
            assert sorted(resource_name(unpack(a)) for a in got[CLUSTER]) == ["alpha", "beta"]
        finally:
            await late.close()

        # After the fix the next response on the first stream is the fixed content.
        (cfg / "b.yaml").write_text(cluster_yaml("gamma"))
        v3 = await sub.next()
        assert names(v3) == ["alpha", "gamma"]
        await server.wait_log(r"serving version " + v3.version_info)
        # The server logged the subscriber's ACKs with its node id.
        await server.wait_log(r"ACK Cluster from node 'raw-subscriber' version '"
                              + v2.version_info)
    finally:
        await sub.close()
        await server.stop()
    assert server.proc.returncode == 0, server.stderr[-10:]


async def test_cli_serves_istio_dump_file() -> None:
    if not ISTIO_DUMPS:
        pytest.skip("no Istio sample dumps")
    dump = istio_dump(BOOKINFO_DUMP)
    server = await CliServer.start(dump)
    sub = RawSubscriber(server.port, delta=False)
    try:
        got = await sub.fetch_all((CLUSTER, ROUTE_CONFIGURATION))
        originals = dump_objects(dump)
        for t, anys in got.items():
            for a in anys:
                msg = unpack(a)
                assert to_json(msg) == originals[(t, resource_name(msg))]
        assert sum(len(v) for v in got.values()) == len(originals)
    finally:
        await sub.close()
        await server.stop()


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "integration.cli", "xds-server", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return int(proc.returncode or 0), (out + err).decode()


async def test_cli_rejects_bad_arguments_and_bad_initial_config(tmp_path: Path) -> None:
    rc, text = await run_cli()
    assert rc == 2 and "--config" in text and "required" in text
    rc, text = await run_cli("--config", str(tmp_path / "missing"))
    assert rc == 2 and "no such file or directory" in text
    rc, text = await run_cli("--config", str(tmp_path), "--port", "http")
    assert rc == 2 and "not a port number: 'http'" in text
    rc, text = await run_cli("--config", str(tmp_path), "--port", "70000")
    assert rc == 2 and "out of range" in text
    bad = tmp_path / "bad.json"
    bad.write_text('{"@type": "' + LISTENER + '", "name": "l", "adress": {}}')
    rc, text = await run_cli("--config", str(bad), "--port", "0")
    assert rc == 1 and "bad.json" in text and 'no field named "adress"' in text
    # A busy port is an error, not a second server sharing it (no SO_REUSEPORT).
    busy = AdsServer()
    port = await busy.start()
    try:
        good = tmp_path / "good.json"
        good.write_text(json.dumps({"@type": ROUTE_CONFIGURATION, "name": "r"}))
        rc, text = await run_cli("--config", str(good), "--port", str(port))
        assert rc == 1 and f"cannot listen on 127.0.0.1:{port}" in text
    finally:
        await busy.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_cli_server_to_cli_dump_round_trip(delta: bool) -> None:
    """`sockmesh xds-server` serving an Istio dump, read back by `sockmesh xds-dump`."""
    if not ISTIO_DUMPS:
        pytest.skip("no Istio sample dumps")
    dump = istio_dump(BOOKINFO_DUMP)
    server = await CliServer.start(dump)
    try:
        rc, out, err = await run_cli_raw(
            "xds-dump", "--server", f"127.0.0.1:{server.port}", "--timeout", "20",
            "--missing-after", "1", *(["--delta"] if delta else []))
        assert rc == 0, err
        received = parse_config_dump(json.loads(out), "xds-dump output")
        expected = load_config(dump)
        for type_url in ALL_TYPES:
            assert received.by_type(type_url) == expected.by_type(type_url), type_url
        assert expected.unknown_extensions <= received.unknown_extensions
        await server.wait_log(r"ACK Cluster from node")
    finally:
        await server.stop()


async def run_cli_raw(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "integration.cli", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S + 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return int(proc.returncode or 0), out.decode(), err.decode()
