"""Istio mode: the node istio-agent would present, istiod credentials, and the listener
shapes istiod sends to sidecars mapped to service-table entries the agent programs.

No istiod process here (tests/e2e of the xDS client run against a real one); this checks the
bootstrap the agent builds from a pod's environment and what the agent's translation of
istiod-shaped listeners yields.  ~2 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from integration.istio import IstioConfigError, istio_bootstrap, istio_env_present
from translator import translate
from translator.resources import ResourceSet, parse_resource
from translator.tables import ServiceKind

ROOT = Path(__file__).resolve().parents[2]
T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
POD_ENV = {"POD_NAME": "reviews-v1-abc", "POD_NAMESPACE": "bookinfo",
           "INSTANCE_IP": "10.1.2.3", "SERVICE_ACCOUNT": "bookinfo-reviews",
           "ISTIO_META_CLUSTER_ID": "east", "ISTIO_META_MESH_ID": "mesh1",
           "ISTIO_META_LABELS": '{"app": "reviews", "version": "v1"}',
           "ISTIO_META_INTERCEPTION_MODE": "NONE"}


def _files(tmp: Path) -> tuple[str, str]:
    ca, tok = tmp / "root-cert.pem", tmp / "istio-token"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    tok.write_text("token\n")
    return str(ca), str(tok)


def test_node_identity_and_metadata_from_the_pod_environment(tmp_path: Path) -> None:
    ca, tok = _files(tmp_path)
    boot = istio_bootstrap(POD_ENV, ca_file=ca, token_file=tok)
    assert boot.node.id == "sidecar~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
    md = dict(boot.node.metadata)
    assert md["NAMESPACE"] == "bookinfo" and md["CLUSTER_ID"] == "east"
    assert md["MESH_ID"] == "mesh1" and md["SERVICE_ACCOUNT"] == "bookinfo-reviews"
    assert dict(md["LABELS"]) == {"app": "reviews", "version": "v1"}
    assert md["INTERCEPTION_MODE"] == "NONE"  # ISTIO_META_* passed through
    assert boot.server == "istiod.istio-system.svc:15012"
    assert (boot.ca_file, boot.token_file) == (ca, tok)
    assert boot.server_name == "istiod.istio-system.svc"
    plain = istio_bootstrap(POD_ENV, plaintext=True)
    assert plain.server.endswith(":15010") and plain.ca_file is None
    assert istio_env_present(POD_ENV) and not istio_env_present({"HOME": "/"})


@pytest.mark.parametrize(("env", "kw", "needle"), [
    ({k: v for k, v in POD_ENV.items() if k != "POD_NAMESPACE"}, {}, "POD_NAMESPACE"),
    ({k: v for k, v in POD_ENV.items() if k != "INSTANCE_IP"}, {}, "INSTANCE_IP"),
    (POD_ENV, {"token_file": "/dev/null"}, "mesh root certificate"),
])
def test_bootstrap_names_what_is_missing(env: dict[str, str], kw: dict[str, Any],
                                         needle: str) -> None:
    with pytest.raises(IstioConfigError, match=needle):
        istio_bootstrap(env, **kw)


def test_run_istio_without_credentials_exit_2_naming_them() -> None:
    r = subprocess.run([sys.executable, "-m", "integration.cli", "run", "--istio",
                        "--no-datapath"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30, env={"PATH": "/usr/bin:/bin", **POD_ENV}, check=False)
    assert r.returncode == 2
    assert "--istio" in r.stderr and "root certificate" in r.stderr


def _listener(obj: dict[str, Any]) -> Any:
    return parse_resource({"@type": T + "envoy.config.listener.v3.Listener", **obj})


def _hcm(rds: str) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typedConfig": {
        "@type": HCM, "statPrefix": "outbound_0.0.0.0_9080",
        "rds": {"routeConfigName": rds, "configSource": {"ads": {}}},
        "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
            "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}]}}


def _tcp(cluster: str) -> dict[str, Any]:
    return {"name": "envoy.filters.network.tcp_proxy",
            "typedConfig": {"@type": TCP, "statPrefix": cluster, "cluster": cluster}}


def test_istiod_listener_shapes_map_to_service_entries() -> None:
    """The outbound shapes istiod 1.2x sends a sidecar (see pilot/pkg/networking/core)."""
    rs = ResourceSet()
    # HTTP port: 0.0.0.0_9080, HTTP chain selected by ALPN, plain TCP falls to Passthrough
    rs.add(_listener({
        "name": "0.0.0.0_9080", "trafficDirection": "OUTBOUND",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 9080}},
        "filterChains": [{"filterChainMatch": {"applicationProtocols": ["http/1.1", "h2c"]},
                          "filters": [_hcm("9080")]}],
        "defaultFilterChain": {"filters": [_tcp("PassthroughCluster")]}}))
    # TCP service: per-VIP listener with tcp_proxy
    rs.add(_listener({
        "name": "10.96.0.20_3306", "trafficDirection": "OUTBOUND",
        "address": {"socketAddress": {"address": "10.96.0.20", "portValue": 3306}},
        "filterChains": [{"filters": [_tcp("outbound|3306||mysql.db.svc.cluster.local")]}]}))
    # a port shared by an HTTP and a TCP service: per-VIP chains on 0.0.0.0_8080
    rs.add(_listener({
        "name": "0.0.0.0_8080", "trafficDirection": "OUTBOUND",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 8080}},
        "filterChains": [
            {"filterChainMatch": {"prefixRanges": [{"addressPrefix": "10.96.0.30",
                                                    "prefixLen": 32}]},
             "filters": [_tcp("outbound|8080||legacy.db.svc.cluster.local")]},
            {"filterChainMatch": {"applicationProtocols": ["http/1.1", "h2c"]},
             "filters": [_hcm("8080")]}]}))
    # the original-destination dispatcher and the inbound listener: not service entries
    rs.add(_listener({
        "name": "virtualOutbound", "useOriginalDst": True, "trafficDirection": "OUTBOUND",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15001}},
        "filterChains": [{"filters": [_tcp("PassthroughCluster")]}],
        "defaultFilterChain": {"filters": [_tcp("BlackHoleCluster")]}}))
    rs.add(_listener({
        "name": "virtualInbound", "useOriginalDst": True, "trafficDirection": "INBOUND",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 15006}},
        "filterChains": [{"filters": [_tcp("InboundPassthroughCluster")]}]}))
    tables = translate(rs)
    got = {(s.vip, s.port): (s.kind, s.route_table or s.cluster) for s in tables.services}
    assert got == {
        ("0.0.0.0", 9080): (ServiceKind.HTTP, "9080"),
        ("10.96.0.20", 3306): (ServiceKind.TCP, "outbound|3306||mysql.db.svc.cluster.local"),
        ("10.96.0.30", 8080): (ServiceKind.TCP, "outbound|8080||legacy.db.svc.cluster.local"),
        ("0.0.0.0", 8080): (ServiceKind.HTTP, "8080"),
    }, json.dumps({f"{k[0]}:{k[1]}": [v[0].value, v[1]] for k, v in got.items()})
    skipped = dict(tables.skipped_listeners)
    assert "original-destination" in skipped["virtualOutbound"]
    assert "inbound" in skipped["virtualInbound"]


@pytest.mark.istiod
def test_agent_in_istio_mode_against_a_real_istiod(tmp_path: Path) -> None:
    """`sockmesh run --istio --plaintext` as a real process against a standalone istiod
    1.29: the sidecar identity is accepted, everything is ACKed (no NACK), and istiod's
    listeners become service entries (0.0.0.0_PORT HTTP), virtualInbound/Outbound skipped."""
    from tests.e2e.agent_harness import end, http_get, poll
    from tests.support.backends import free_port
    from tests.support.istiod import CONFIG_DIR, NAMESPACE, Istiod

    admin = free_port()
    with Istiod(CONFIG_DIR, tmp_path) as istiod:
        env = {"PATH": "/usr/bin:/bin", "POD_NAME": "sockmesh-agent-test",
               "POD_NAMESPACE": NAMESPACE, "INSTANCE_IP": "127.0.0.1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "integration.cli", "run", "--istio", "--plaintext",
             "--xds-server", istiod.xds_address, "--no-datapath", "--missing-after", "3",
             "--metrics-addr", f"127.0.0.1:{admin}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def applied() -> dict[str, Any] | None:
                st = json.loads(http_get(admin, "/status"))
                a = st["config"]["applied"]
                return st if a and a["services"] > 0 and a["clusters"] > 0 else None
            st = poll(applied, 60, "agent applied istiod's config")
        finally:
            end(proc)
    assert st["xds"]["nacks"] == 0, st["xds"]["last_nack"]
    assert st["xds"]["connected"]
    for short in ("LDS", "RDS", "CDS", "EDS"):
        assert st["xds"]["types"][short]["resources"] > 0, short
    assert st["config"]["applied"]["route_tables"] >= 1
    assert st["config"]["applied"]["endpoints"] >= 1
