"""`sockmesh explain` against a real Envoy, request by request.

Generated Istio-shaped route configs (tests/support/routegen.py, fixed seeds) and the three
real Istio dumps are loaded into Envoy 1.40 on loopback; every generated request goes through
Envoy with a unique ``x-req-id`` and Envoy's access log labels it (cluster, status, Location,
route name).  The same requests go through ``sockmesh explain --requests`` and both decisions
must agree on every request.  A weighted route per config is sampled 400 times and Envoy's
split is checked against the weights with a chi-square test.  Wire-level cases (repeated and
padded header values, 'host' matchers, gRPC) are generated on their own configs
(routegen.EXTRAS) and compared the same way.  Envoy's own admin /config_dump is explained too.

Runtime: ~20 s on 2 busy cores (two Envoy starts < 1 s each, ~16,000 requests over
keep-alive, explain as a subprocess for the main and Istio suites, in-process for the rest).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from integration.bench.envoy_compat import envoy_loadable, referenced_clusters
from tests.diff.compare import candidate_weights, disagreements, explain_batch, run_explain
from tests.diff.envoy_oracle import (
    REQ_ID_HEADER,
    EnvoyDecision,
    KeepAliveClient,
    LoopbackBackend,
    bootstrap,
    listener_ports,
    read_decisions,
    start_envoy,
)
from tests.support.routegen import (
    EXTRAS,
    GeneratedConfig,
    GeneratedRequest,
    WeightedProbe,
    boundary_requests,
    config_dump,
    generate,
)
from tests.support.testdata import istio_testdata, require_istio_testdata

pytestmark = pytest.mark.envoy

# SOCKMESH_DIFF_SEEDS=FIRST-LAST widens the sweep when hunting for disagreements
_first, _, _last = os.environ.get("SOCKMESH_DIFF_SEEDS", "0-6").partition("-")
SEEDS = tuple(range(int(_first), int(_last or _first) + 1))
GAP_SEEDS_BASE = 100
EXTRA_SEEDS = int(os.environ.get("SOCKMESH_DIFF_EXTRA_SEEDS", "3"))  # configs per extra
MIN_REQUESTS = 2000
# Seeds wide sweeps found where explain and Envoy differed, run every time (the reason is
# what Envoy was seen to do); those still differing are in KNOWN_DISAGREEMENTS (strict xfail,
# so the fix shows).
SWEEP_SEEDS = {
    90: "redirect prefix_rewrite with ignore_path_parameters_in_path_matching and ';p=1' "
        "inside the matched prefix: Envoy leaves the path as sent",
    149: "same as seed 90 (case-insensitive prefix)",
}
KNOWN_DISAGREEMENTS: frozenset[int] = frozenset()
SPLIT_SAMPLES = 400
SPLIT_ROUTES = 3
ISTIO_DIR = istio_testdata()  # None when shared/testdata/istio is not next to the repository
ISTIO_DUMPS = (
    "istio_bookinfo_gateway_rds_cds.json",
    "istio_k8s_gateway_path_separated_prefix_rds.json",
    "istio_gateway_prefix_rds.json",
)
# chi-square critical values at p = 1e-4 by degrees of freedom: a correct split fails 1 run in
# 10,000 per route, while a wrong one (35/65 served as 50/50) scores ~40 at 400 samples
CHI2_CRIT = {1: 15.137, 2: 18.421, 3: 21.108, 4: 23.513}


@dataclass
class Suite:
    """One route config under test: where it came from, its requests, both decisions."""

    key: str  # listener key in Envoy
    route_config: str  # name to pass to explain
    dump_path: Path
    requests: list[GeneratedRequest]
    envoy: list[EnvoyDecision | None]
    ours: list[dict[str, Any]]


def istio_route_configs(dump: dict[str, Any]) -> list[dict[str, Any]]:
    """The named route configs of a dump (inline unnamed admin ones cannot be referenced)."""
    out = []
    for section in dump["configs"]:
        for key in ("static_route_configs", "dynamic_route_configs"):
            for entry in section.get(key, []):
                rc = entry["route_config"]
                if rc.get("name"):
                    out.append(rc)
    return out


def send_all(port: int, requests: list[GeneratedRequest], first_id: int) -> None:
    client = KeepAliveClient(port)
    try:
        for i, r in enumerate(requests):
            client.send(r.method, r.authority, r.path,
                        [*r.header_pairs(), (REQ_ID_HEADER, str(first_id + i))])
    finally:
        client.close()


@pytest.fixture(scope="module")
def generated() -> list[tuple[str, GeneratedConfig]]:
    """(suite key, config): the main seeds, then each wire-level extra on its own seeds."""
    out = [(f"seed{seed}", generate(seed)) for seed in SEEDS]
    out += [(f"known-seed{seed}", generate(seed)) for seed in sorted(SWEEP_SEEDS)
            if seed not in SEEDS]
    for i, extra in enumerate(sorted(EXTRAS)):
        # distinct seeds per extra: route config names (which carry the seed) stay unique
        first = GAP_SEEDS_BASE + 1000 * i
        out += [(f"extra-{extra}-seed{seed}", generate(seed, frozenset({extra})))
                for seed in range(first, first + EXTRA_SEEDS)]
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("diff")


@dataclass
class Run:
    suites: list[Suite]
    split: list[tuple[WeightedProbe, dict[str, Any], Counter[str]]]
    seconds: float
    envoy_dump: dict[str, Any]  # the main Envoy's own admin /config_dump
    ports: dict[str, int]  # its listener ports by suite key


def dump_clusters(dump: dict[str, Any]) -> set[str]:
    """Names of the clusters a config dump defines."""
    names: set[str] = set()
    for section in dump["configs"]:
        for key in ("static_clusters", "dynamic_active_clusters"):
            names.update(str(e["cluster"]["name"]) for e in section.get(key, []))
    return names


def with_clusters(dump: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """``dump`` plus STATIC loopback clusters ``names`` (so explain knows what Envoy knows)."""
    extra = config_dump([], sorted(names))["configs"][0]
    return {**dump, "configs": [*dump["configs"], extra]}


def istio_suites(workdir: Path) -> tuple[list[tuple[Suite, dict[str, Any]]], set[str],
                                         list[tuple[Suite, dict[str, Any]]], set[str]]:
    """Every named route config of the three dumps, in two variants with their cluster sets.

    ``complete``: the clusters the routes name exist (added as loopback STATIC clusters for
    Envoy and, in the same shape, to the dump explain reads), so requests reach a cluster.
    ``as-is``: only the clusters the dump itself defines exist (a placeholder when it defines
    none, so that "no clusters known" does not mean "partial dump"); routes naming another
    cluster get their cluster_not_found_response_code from both.
    """
    complete: list[tuple[Suite, dict[str, Any]]] = []
    as_is: list[tuple[Suite, dict[str, Any]]] = []
    complete_clusters: set[str] = set()
    as_is_clusters: set[str] = set()
    paths = [ISTIO_DIR / f for f in ISTIO_DUMPS] if ISTIO_DIR is not None else []
    for dump_path in paths:
        fname = dump_path.name
        dump = json.loads(dump_path.read_text())
        own = dump_clusters(dump)
        for j, rc in enumerate(istio_route_configs(dump)):
            stem = f"istio_{fname.split('.')[0].removeprefix('istio_')}_{j}"
            changes: list[str] = []
            envoy_rc = envoy_loadable(rc, changes)
            if changes:
                print(f"\n{fname} {rc['name']}: for Envoy: {sorted(set(changes))} "
                      f"x{len(changes)}")
            named = referenced_clusters(rc)
            requests = boundary_requests(rc)
            path = workdir / f"{stem}-complete.json"
            path.write_text(json.dumps(with_clusters(dump, named - own)))
            complete.append((Suite(f"{stem}_complete", rc["name"], path, requests, [], []),
                             envoy_rc))
            complete_clusters |= named | own
            placeholder = set() if own else {"placeholder-cluster"}
            path = workdir / f"{stem}-as-is.json"
            path.write_text(json.dumps(with_clusters(dump, placeholder)))
            as_is.append((Suite(f"{stem}_as_is", rc["name"], path, requests, [], []),
                          envoy_rc))
            as_is_clusters |= own | placeholder
    return complete, complete_clusters, as_is, as_is_clusters


def label_with_envoy(route_configs: dict[str, dict[str, Any]], clusters: set[str],
                     batches: list[tuple[str, list[GeneratedRequest]]], workdir: Path,
                     ) -> tuple[list[list[EnvoyDecision | None]], dict[str, Any], dict[str, int]]:
    """Start one Envoy, send each batch to the listener of its route config key, read labels.

    Also returns Envoy's own admin /config_dump and the listener ports by key.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "access.log"
    with LoopbackBackend() as backend, \
            start_envoy(bootstrap(route_configs, clusters, backend.port, log),
                        workdir) as envoy:
        ports = listener_ports(envoy, route_configs)
        next_id = 0
        ids: list[list[str]] = []
        for key, requests in batches:
            send_all(ports[key], requests, next_id)
            ids.append([str(next_id + i) for i in range(len(requests))])
            next_id += len(requests)
        found = read_decisions(log, {i for v in ids for i in v})
        dump = envoy.config_dump()
    return [[found.get(i) for i in v] for v in ids], dump, ports


@pytest.fixture(scope="module")
def run(generated: list[tuple[str, GeneratedConfig]], workdir: Path) -> Iterator[Run]:
    """Explain and Envoy over every generated config and every Istio dump, once."""
    started = time.monotonic()
    suites: list[Suite] = []
    rcs: dict[str, dict[str, Any]] = {}
    clusters: set[str] = set()
    for key, g in generated:
        path = workdir / f"{key}.json"
        path.write_text(json.dumps(g.config_dump()))
        rcs[key] = g.route_config
        clusters.update(g.clusters)
        suites.append(Suite(key, g.name, path, g.requests, [], []))
    complete, complete_clusters, as_is, as_is_clusters = istio_suites(workdir)
    for s, rc in complete:
        rcs[s.key] = rc
        suites.append(s)
    clusters |= complete_clusters
    for s in suites + [s for s, _ in as_is]:
        s.ours = explain_batch(s.dump_path, s.route_config, s.requests, workdir,
                               subprocess_cli=s.key.startswith(("seed", "istio")))
    # Weighted split: one probe per config whose request explain puts on its weighted route
    split_jobs: list[tuple[str, WeightedProbe, dict[str, Any]]] = []
    for key, g in generated:
        if len(split_jobs) >= SPLIT_ROUTES or not g.weighted or not key.startswith("seed"):
            continue
        decisions = explain_batch(workdir / f"{key}.json", g.name,
                                  [p.request for p in g.weighted], workdir,
                                  subprocess_cli=False)
        reachable = [(p, d) for p, d in zip(g.weighted, decisions, strict=True)
                     if d["action"] == "weighted_clusters" and d.get("route") == p.route]
        if reachable:  # the split with the most clusters: the test sees df 1 and 2
            split_jobs.append((key, *max(reachable, key=lambda pd: len(pd[0].weights))))
    batches = [(s.key, s.requests) for s in suites]
    batches += [(key, [p.request] * SPLIT_SAMPLES) for key, p, _ in split_jobs]
    labels, envoy_dump, ports = label_with_envoy(rcs, clusters, batches, workdir / "envoy-main")
    for s, envoy_labels in zip(suites, labels, strict=False):
        s.envoy = envoy_labels
    split = [(p, d, Counter(str(e.cluster) for e in envoy_labels if e is not None))
             for (_, p, d), envoy_labels in zip(split_jobs, labels[len(suites):], strict=True)]
    # The as-is variants need another cluster set, so another Envoy
    labels, _, _ = label_with_envoy({s.key: rc for s, rc in as_is}, as_is_clusters,
                                    [(s.key, s.requests) for s, _ in as_is],
                                    workdir / "envoy-as-is")
    for (s, _), envoy_labels in zip(as_is, labels, strict=True):
        s.envoy = envoy_labels
        suites.append(s)
    yield Run(suites, split, time.monotonic() - started, envoy_dump, ports)


def category(req: GeneratedRequest) -> str:
    """What kind of boundary a request probes (its note without route and header names)."""
    kind = req.note.rsplit(": ", 1)[-1]
    return re.sub(r"^(x-[a-z]+|end-user|X-[A-Za-z]+|End-User) ", "HEADER ", kind)


def _report(suites: list[Suite]) -> tuple[int, list[str]]:
    """Compare every request of ``suites``; the count and a description of each disagreement."""
    total, bad = 0, []
    cats: Counter[str] = Counter()
    for s in suites:
        for req, env, ours in zip(s.requests, s.envoy, s.ours, strict=True):
            total += 1
            diff = disagreements(env, ours)
            if diff:
                cats[category(req)] += 1
                bad.append(f"[{s.key}] {req.method} {req.authority}{req.path} "
                           f"headers={req.headers} ({req.note}): {'; '.join(diff)}\n"
                           f"    envoy: {env}\n    ours:  {json.dumps(ours)}")
    if cats:
        print(f"\ndisagreements by kind of request: {dict(cats.most_common())}")
    return total, bad


def test_generated_configs_agree_with_envoy(run: Run) -> None:
    suites = [s for s in run.suites if s.key.startswith("seed")]
    total, bad = _report(suites)
    print(f"\ngenerated: {total} requests over {len(suites)} route configs, "
          f"{total - len(bad)} agree ({100 * (total - len(bad)) / max(total, 1):.2f}%), "
          f"whole run {run.seconds:.1f} s")
    assert total >= MIN_REQUESTS
    assert not bad, f"{len(bad)} of {total} disagree:\n" + "\n".join(bad[:60])


# Wire-level cases generated on their own (routegen.EXTRAS), each with what Envoy 1.40 was
# measured to do.  The routing model first differed on all four; these tests hold the fix.
EXTRA_BEHAVIOUR = {
    "repeated_headers": "a repeated header matches when any one value matches (invert_match "
                        "applies to that result); values are not joined with ','",
    "padded_values": "whitespace around a header value is dropped by the HTTP/1 parser "
                     "(cluster_header values too)",
    "host_matcher": "a header matcher named 'host' is matched against the Host value",
    "grpc": "for gRPC requests local replies (no route, direct_response, cluster not found) "
            "are HTTP 200 with grpc-status",
}


@pytest.mark.parametrize("extra", sorted(EXTRA_BEHAVIOUR))
def test_wire_level_extras_agree_with_envoy(run: Run, extra: str) -> None:
    """Configs and requests with one extra's feature (see EXTRA_BEHAVIOUR): 100% agreement."""
    suites = [s for s in run.suites if s.key.startswith(f"extra-{extra}-")]
    total, bad = _report(suites)
    print(f"\n{extra}: {total} requests, {total - len(bad)} agree")
    assert total > 0
    assert not bad, (f"{EXTRA_BEHAVIOUR[extra]}\n{len(bad)} of {total} disagree:\n"
                     + "\n".join(bad[:30]))


def test_every_generator_extra_is_described() -> None:
    assert set(EXTRA_BEHAVIOUR) == set(EXTRAS)


@pytest.mark.parametrize("seed", [
    pytest.param(seed, marks=[pytest.mark.xfail(strict=True, reason=why)]
                 if seed in KNOWN_DISAGREEMENTS else [])
    for seed, why in sorted(SWEEP_SEEDS.items())])
def test_sweep_seeds(run: Run, seed: int) -> None:
    """Seeds a wide sweep found disagreeing: 100% agreement once the cause is fixed."""
    total, bad = _report([s for s in run.suites if s.key.endswith(f"seed{seed}")
                          and s.key.startswith(("seed", "known-"))])
    assert total > 0
    assert not bad, "\n".join(bad)


def test_generated_requests_cover_every_action(run: Run) -> None:
    """The agreement above means something only if every action and no-route occurred."""
    seen = Counter(d["action"] for s in run.suites if s.key.startswith("seed") for d in s.ours)
    print(f"\nactions: {dict(seen)}")
    for action in ("cluster", "weighted_clusters", "direct_response", "redirect", "no_route"):
        assert seen[action] >= 10, (action, seen)


def test_istio_dumps_agree_with_envoy(run: Run) -> None:
    require_istio_testdata()
    suites = [s for s in run.suites if s.key.startswith("istio")]
    assert len(suites) >= 2 * len(ISTIO_DUMPS)
    total, bad = _report(suites)
    statuses = Counter(e.status for s in suites for e in s.envoy if e is not None)
    print(f"\nistio dumps: {total} requests, {total - len(bad)} agree "
          f"({100 * (total - len(bad)) / max(total, 1):.2f}%); Envoy statuses {dict(statuses)}")
    # routed, no route, and cluster-not-found (503, and 500 where the route says so) all occur
    assert {200, 404, 500, 503} <= statuses.keys()
    assert not bad, f"{len(bad)} of {total} disagree:\n" + "\n".join(bad)


def test_path_separated_prefix_differs_from_prefix_in_envoy(run: Run) -> None:
    """`/getx` routes with prefix `/get` but not with path_separated_prefix `/get` (Envoy)."""
    require_istio_testdata()
    verdict: dict[str, dict[str, int]] = {}
    for s in run.suites:
        if s.key.startswith(("istio_k8s", "istio_gateway")) and s.key.endswith("complete"):
            for req, env in zip(s.requests, s.envoy, strict=True):
                if req.authority == "httpbin.example.com" and req.path in ("/getx", "/get/x"):
                    assert env is not None
                    verdict.setdefault(s.key.split("_")[1], {})[req.path] = env.status
    assert verdict["k8s"] == {"/getx": 404, "/get/x": 200}, verdict
    assert verdict["gateway"] == {"/getx": 200, "/get/x": 200}, verdict


def test_weighted_split_matches_weights(run: Run) -> None:
    assert run.split, "no weighted route reachable in the sampled seeds"
    for probe, decision, counts in run.split:
        weights = candidate_weights(decision["candidates"])
        assert weights == probe.weights, (weights, probe.weights)
        n = sum(counts.values())
        assert n == SPLIT_SAMPLES
        # every candidate (weights >= 5%) shows up in 400 samples: the sets are equal
        assert set(counts) == set(weights), (counts, weights)
        total_w = sum(weights.values())
        chi2 = sum((counts[c] - n * w / total_w) ** 2 / (n * w / total_w)
                   for c, w in weights.items())
        df = len(weights) - 1
        print(f"\n{probe.route}: weights {weights} observed {dict(counts)} chi2={chi2:.2f} "
              f"(df={df}, critical {CHI2_CRIT[df]})")
        assert chi2 < CHI2_CRIT[df], (probe.route, weights, counts, chi2)


def test_comparison_detects_first_match_wins_violation(run: Run, workdir: Path) -> None:
    """The agreement above is not vacuous: routes reversed for explain only must disagree.

    Reversing each virtual host's routes in the dump given to explain (Envoy keeps the
    original order) turns Envoy's first match into the last one; the comparison has to see it.
    """
    s = next(s for s in run.suites if s.key.startswith("seed"))
    dump = json.loads(s.dump_path.read_text())
    for section in dump["configs"]:
        for entry in section.get("dynamic_route_configs", []):
            for vh in entry["route_config"]["virtual_hosts"]:
                vh["routes"].reverse()
    reversed_path = workdir / "reversed.json"
    reversed_path.write_text(json.dumps(dump))
    ours = explain_batch(reversed_path, s.route_config, s.requests, workdir)
    bad = sum(1 for env, d in zip(s.envoy, ours, strict=True) if disagreements(env, d))
    print(f"\nroutes reversed for explain only: {bad} of {len(ours)} requests disagree")
    assert bad > 0


def with_bound_ports(dump: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
    """Envoy's dump shows the configured port 0; put in the ports its listeners really bound."""
    dump = json.loads(json.dumps(dump))
    for section in dump["configs"]:
        for entry in section.get("static_listeners", []):
            listener = entry["listener"]
            key = listener["name"].removeprefix("listener_")
            listener["address"]["socket_address"]["port_value"] = ports[key]
    return dump


def _explain_by_port(run: Run, dump: dict[str, Any], workdir: Path) -> None:
    """Every suite the main Envoy served, explained by its listener's port on ``dump``."""
    path = workdir / "envoy-own-dump.json"
    path.write_text(json.dumps(dump))
    total, bad = 0, []
    for n, s in enumerate(s for s in run.suites
                          if s.key in run.ports and not s.key.startswith("known-")):
        # once as a real command, then in-process to save interpreter starts
        code, out, err = run_explain(
            ["--config-dump", str(path), "--port", str(run.ports[s.key])], s.requests,
            workdir / f"by-port-{s.key}.jsonl", subprocess_cli=n == 0)
        assert code == 0, f"{s.key}: {err}"
        ours = [json.loads(x) for x in out.splitlines()]
        total += len(ours)
        bad += [f"[{s.key}] {r.authority}{r.path} ({r.note}): {d}" for r, e, o in
                zip(s.requests, s.envoy, ours, strict=True) if (d := disagreements(e, o))]
    print(f"\nexplain --port on Envoy's own /config_dump: {total - len(bad)} of {total} agree")
    assert total > 0
    assert not bad, "\n".join(bad[:30])


def test_explain_by_port_on_envoys_own_config_dump(run: Run, workdir: Path) -> None:
    """The admin /config_dump of the Envoy that labelled the requests, its listener by port.

    The one change: the listeners get the ports they bound (Envoy's dump shows the configured
    port 0).  The dump holds every listener of that Envoy, among them two whose inline route
    configs share a name (the bookinfo and gateway dumps both say http.8080), and Envoy's
    EndpointsConfigDump with locality load_balancing_weight 0.
    """
    _explain_by_port(run, with_bound_ports(run.envoy_dump, run.ports), workdir)
