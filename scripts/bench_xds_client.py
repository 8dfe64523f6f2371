#!/usr/bin/env python3
"""How long the xDS client takes to take in an Istio-sized config (not a timed test).

Builds a synthetic snapshot with Istio's shapes (3,000 EDS clusters named
``outbound|PORT||SVC.NS.svc.cluster.local`` with Istio's transport socket matches and
metadata, 3,000 ClusterLoadAssignments with localities and several endpoints each, 550
listeners: outbound ``0.0.0.0_PORT`` HTTP listeners naming RDS config ``PORT`` and per-VIP
TCP listeners with tcp_proxy, and 250 route configs of virtual hosts per service),
serves it from the embedded ADS server on loopback, and reports the time from the first
response the client receives to everything ACKed and delivered, for SotW and delta.
It also times the protocol core alone on the same responses (decode + validate + ACK).

Run:  .venv/bin/python scripts/bench_xds_client.py [--rounds 3] [--variant sotw|delta|both]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import wrappers_pb2

from integration.validation import translator_validator
from integration.xds_server import AckEvent, AdsServer
from translator.resources import ResourceSet
from xds_client import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    AdsProtocol,
    XdsClient,
    istio_node,
)
from xds_client.protocol import Output

N_CLUSTERS = 3000
N_ROUTE_CONFIGS = 250
N_TCP_LISTENERS = 300  # + one HTTP listener per route config = 550 listeners
ENDPOINTS_PER_CLUSTER = 3
TYPES = (CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION)


def _ads(src: config_source_pb2.ConfigSource) -> config_source_pb2.ConfigSource:
    src.ads.SetInParent()
    src.resource_api_version = config_source_pb2.V3
    return src


def _svc(i: int) -> tuple[str, str]:
    ns = f"ns-{i % 40}"
    return f"svc-{i}.{ns}.svc.cluster.local", ns


def _port(i: int) -> int:
    return 8000 + i % N_ROUTE_CONFIGS


def _cluster(i: int) -> cluster_pb2.Cluster:
    host, ns = _svc(i)
    name = f"outbound|{_port(i)}||{host}"
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS,
                            lb_policy=cluster_pb2.Cluster.LEAST_REQUEST)
    _ads(c.eds_cluster_config.eds_config)
    c.eds_cluster_config.service_name = name
    c.connect_timeout.seconds = 10
    th = c.circuit_breakers.thresholds.add()
    th.max_connections.value = th.max_pending_requests.value = 4294967295
    th.max_requests.value = th.max_retries.value = 4294967295
    th.track_remaining = True
    c.common_lb_config.locality_weighted_lb_config.SetInParent()
    istio = c.metadata.filter_metadata["istio"]
    istio.update({"services": [{"host": host, "name": f"svc-{i}", "namespace": ns}],
                  "default_original_port": _port(i)})
    m = c.transport_socket_matches.add(name="tlsMode-istio")
    m.match.update({"tlsMode": "istio"})
    tls = tls_pb2.UpstreamTlsContext(sni=f"outbound_.{_port(i)}_._.{host}")
    ctx = tls.common_tls_context
    ctx.alpn_protocols.extend(["istio-peer-exchange", "istio"])
    ctx.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
    sds = ctx.tls_certificate_sds_secret_configs.add(name="default")
    sds.sds_config.api_config_source.api_type = config_source_pb2.ApiConfigSource.GRPC
    sds.sds_config.api_config_source.grpc_services.add().envoy_grpc.cluster_name = "sds-grpc"
    v = ctx.combined_validation_context
    v.default_validation_context.match_typed_subject_alt_names.add().matcher.exact = (
        f"spiffe://cluster.local/ns/{ns}/sa/svc-{i}")
    v.validation_context_sds_secret_config.name = "ROOTCA"
    m.transport_socket.name = "envoy.transport_sockets.tls"
    m.transport_socket.typed_config.Pack(tls)
    raw = c.transport_socket_matches.add(name="tlsMode-disabled")
    raw.transport_socket.name = "envoy.transport_sockets.raw_buffer"
    raw.transport_socket.typed_config.Pack(raw_buffer_pb2.RawBuffer())
    return c


def _cla(i: int) -> endpoint_pb2.ClusterLoadAssignment:
    host, ns = _svc(i)
    a = endpoint_pb2.ClusterLoadAssignment(cluster_name=f"outbound|{_port(i)}||{host}")
    loc = a.endpoints.add()
    loc.locality.region, loc.locality.zone = "us-central1", f"us-central1-{'abc'[i % 3]}"
    loc.load_balancing_weight.value = ENDPOINTS_PER_CLUSTER
    for k in range(ENDPOINTS_PER_CLUSTER):
        lb = loc.lb_endpoints.add(health_status=health_check_pb2.HEALTHY)
        sa = lb.endpoint.address.socket_address
        sa.address = f"10.{(i >> 8) & 255}.{i & 255}.{10 + k}"
        sa.port_value = _port(i)
        lb.load_balancing_weight.value = 1
        lb.metadata.filter_metadata["istio"].update({"workload": f"svc-{i}-v1;{ns};svc-{i}"})
        lb.metadata.filter_metadata["envoy.transport_socket_match"].update({"tlsMode": "istio"})
    return a


def _route_config(r: int) -> route_pb2.RouteConfiguration:
    port = 8000 + r
    rc = route_pb2.RouteConfiguration(name=str(port), validate_clusters=_false())
    for i in range(r, N_CLUSTERS, N_ROUTE_CONFIGS):
        host, ns = _svc(i)
        short = f"svc-{i}"
        vh = rc.virtual_hosts.add(name=f"{host}:{port}", domains=[
            host, f"{host}:{port}", f"{short}.{ns}", f"{short}.{ns}:{port}",
            f"{short}.{ns}.svc", f"{short}.{ns}.svc:{port}",
            f"10.96.{(i >> 8) & 255}.{i & 255}", f"10.96.{(i >> 8) & 255}.{i & 255}:{port}"])
        rt = vh.routes.add(name="default")
        rt.match.prefix = "/"
        rt.route.cluster = f"outbound|{port}||{host}"
        rt.route.timeout.SetInParent()
        rt.route.max_stream_duration.grpc_timeout_header_max.SetInParent()
        rp = rt.route.retry_policy
        rp.retry_on = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        rp.num_retries.value = 2
        rp.host_selection_retry_max_attempts = 5
        rp.retriable_status_codes.append(503)
        rt.decorator.operation = f"{host}:{port}/*"
    allow = rc.virtual_hosts.add(name="allow_any", domains=["*"])
    rt = allow.routes.add(name="allow_any")
    rt.match.prefix = "/"
    rt.route.cluster = "PassthroughCluster"
    return rc


def _false() -> wrappers_pb2.BoolValue:
    return wrappers_pb2.BoolValue(value=False)


def _http_listener(r: int) -> listener_pb2.Listener:
    port = 8000 + r
    lis = listener_pb2.Listener(name=f"0.0.0.0_{port}",
                                traffic_direction=base_pb2.OUTBOUND)
    lis.address.socket_address.address = "0.0.0.0"
    lis.address.socket_address.port_value = port
    lis.bind_to_port.value = False
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=f"outbound_0.0.0.0_{port}")
    _ads(hcm.rds.config_source)
    hcm.rds.route_config_name = str(port)
    hcm.use_remote_address.value = False
    hcm.normalize_path.value = True
    hcm.path_with_escaped_slashes_action = hcm_pb2.HttpConnectionManager.KEEP_UNCHANGED
    router = hcm.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    chain = lis.filter_chains.add()
    chain.filter_chain_match.application_protocols.extend(["http/1.1", "h2c"])
    f = chain.filters.add(name="envoy.filters.network.http_connection_manager")
    f.typed_config.Pack(hcm)
    return lis


def _tcp_listener(i: int) -> listener_pb2.Listener:
    host, _ = _svc(i)
    vip = f"10.97.{(i >> 8) & 255}.{i & 255}"
    port = 9000 + i % 50
    lis = listener_pb2.Listener(name=f"{vip}_{port}", traffic_direction=base_pb2.OUTBOUND)
    lis.address.socket_address.address = vip
    lis.address.socket_address.port_value = port
    lis.bind_to_port.value = False
    tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=f"outbound|{port}||{host}",
                                 cluster=f"outbound|{port}||{host}")
    f = lis.filter_chains.add().filters.add(name="envoy.filters.network.tcp_proxy")
    f.typed_config.Pack(tcp)
    return lis


def istio_sized() -> ResourceSet:
    """The synthetic snapshot: 3,000 clusters and CLAs, 550 listeners, 250 route configs."""
    rs = ResourceSet()
    for i in range(N_CLUSTERS):
        rs.add(_cluster(i))
        rs.add(_cla(i))
    for r in range(N_ROUTE_CONFIGS):
        rs.add(_route_config(r))
        rs.add(_http_listener(r))
    for i in range(N_TCP_LISTENERS):
        rs.add(_tcp_listener(i))
    return rs


async def one_round(rs: ResourceSet, delta: bool, validate: bool) -> dict[str, float]:
    server = AdsServer(rs)
    port = await server.start()
    node = istio_node("10.0.0.1", "bench-0", "default", labels={"app": "bench"})
    client = XdsClient(f"127.0.0.1:{port}", node, delta=delta,
                       validator=translator_validator if validate else None)
    first: list[float] = []
    receive = client.core.receive

    def timed_receive(resp: Any, now: float) -> Output:
        if not first:
            first.append(time.perf_counter())
        return receive(resp, now)

    client.core.receive = timed_receive  # type: ignore[method-assign]
    client.watch(LISTENER, None, lambda ev: None)
    client.watch(CLUSTER, None, lambda ev: None)
    t0 = time.perf_counter()
    await client.start()
    try:
        await client.wait_synced(60.0)
        synced = time.perf_counter()
        snap = server.snapshot
        for t in TYPES:
            want = snap.get(t).version

            def is_ack(e: AckEvent, t: str = t, want: str = want) -> bool:
                return e.type_url == t and e.ack and e.version == want

            await server.wait_for(is_ack, 30.0)
        acked = time.perf_counter()
        counts = {t: client.status.types[t].resources for t in TYPES}
        assert counts == {t: len(rs.by_type(t)) for t in TYPES}, counts
        assert client.status.nacks == 0
    finally:
        await client.stop()
        await server.stop()
    return {"connect_to_first": first[0] - t0, "first_to_synced": synced - first[0],
            "first_to_all_acked_at_server": acked - first[0]}


def core_only(rs: ResourceSet, delta: bool, validate: bool) -> float:
    """Decode + validate + ACK of the whole snapshot in the protocol core, no network."""
    core = AdsProtocol(istio_node("10.0.0.1", "bench-0", "default"), delta=delta,
                       validator=translator_validator if validate else None)
    core.subscribe(LISTENER, None, 0.0)
    core.subscribe(CLUSTER, None, 0.0)
    core.stream_started(0.0)
    responses = []
    for t in TYPES:
        if delta:
            resp = discovery_pb2.DeltaDiscoveryResponse(type_url=t, system_version_info="1",
                                                        nonce=t)
            for name, msg in rs.by_type(t).items():
                r = resp.resources.add(name=name, version="1")
                r.resource.Pack(msg)
        else:
            resp = discovery_pb2.DiscoveryResponse(type_url=t, version_info="1", nonce=t)
            for msg in rs.by_type(t).values():
                resp.resources.add().Pack(msg)
        # what the wire hands the client: parse from bytes
        responses.append(type(resp).FromString(resp.SerializeToString()))
    start = time.perf_counter()
    for resp in responses:
        out = core.receive(resp, 0.0)
        assert not any(r.HasField("error_detail") for r in out.requests)
    elapsed = time.perf_counter() - start
    assert core.synced()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", choices=("sotw", "delta", "both"), default="both")
    ap.add_argument("--validate", action="store_true",
                    help="also run the translator's per-resource validation (as the agent will)")
    args = ap.parse_args()
    t = time.perf_counter()
    rs = istio_sized()
    sizes = {t: len(rs.by_type(t)) for t in TYPES}
    wire = sum(m.ByteSize() for _, _, m in rs.items())
    if args.validate:
        print("with the translator's validation of every resource")
    print(f"snapshot: {len(rs)} resources "
          f"(CDS {sizes[CLUSTER]}, EDS {sizes[CLUSTER_LOAD_ASSIGNMENT]}, "
          f"LDS {sizes[LISTENER]}, RDS {sizes[ROUTE_CONFIGURATION]}), "
          f"{wire / 1e6:.1f} MB serialized, built in {time.perf_counter() - t:.1f} s")
    variants = ["sotw", "delta"] if args.variant == "both" else [args.variant]
    for v in variants:
        core_times = [core_only(rs, v == "delta", args.validate) for _ in range(args.rounds)]
        print(f"{v:5s} core only (decode+validate+ACK, no network): "
              f"median {statistics.median(core_times) * 1000:.0f} ms "
              f"(min {min(core_times) * 1000:.0f})")
        results = [asyncio.run(one_round(rs, v == "delta", args.validate))
                   for _ in range(args.rounds)]
        for key in ("first_to_synced", "first_to_all_acked_at_server"):
            vals = [r[key] for r in results]
            print(f"{v:5s} {key}: median {statistics.median(vals):.3f} s "
                  f"(min {min(vals):.3f}, max {max(vals):.3f}, {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
