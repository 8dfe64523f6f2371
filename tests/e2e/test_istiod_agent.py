"""`sockmesh run --istio` against a real istiod routes real loopback traffic in the kernel
as a real Envoy sidecar of the same istiod does, and a YAML change reaches the kernel.

One standalone istiod 1.29 (tests/peers/istiod/config: ServiceEntries on VIPs
127.10.0.1-3:19080, WorkloadEntries on 127.0.1.x:19180, VirtualServices, DestinationRules)
serves two sidecars of namespace ``sockmesh-test``:

* sockmesh: ``sockmesh run --istio --plaintext`` as a real process (node identity from
  POD_NAME / POD_NAMESPACE / INSTANCE_IP, as istio-agent builds it), with the eBPF
  datapath on a fresh child cgroup; a client process inside that cgroup connects to the
  services' VIPs and sends each request; connect4, sk_msg and the agent's splice listener
  / slow path route it to an identity backend (``x-backend`` names the WorkloadEntry).
* Envoy: tests/support/istio_sidecar.SidecarEnvoy (istiod's own outbound HTTP connection
  manager on a loopback listener; its access log says route, cluster, status, Location).

Every request (hand-written for every VirtualService route, plus the translator's boundary
requests around istiod's route config) goes to both.  Per request: status and Location
equal; the cluster of the backend that answered through the kernel (the one cluster of
istiod's route config whose EDS holds that endpoint) equals Envoy's cluster when Envoy's
route has one cluster, and is one of that route's weighted clusters otherwise; no backend
answers when Envoy used none.
The weighted routes are sampled on both: the same candidate set, each split within a
chi-square test (p = 0.001) of the weights, and the two splits homogeneous; the config's
own weighted routes are picked by the agent's slow path (see below), so one more, made
weighted in the test's copy of the YAML, is picked by the kernel itself.

Then virtualservices.yaml is edited (ratings' v2-prefix route moved from subset v2 to v1)
and the time from the write to the first request the kernel serves from the new subset is
printed, and the edit reverted the same way.

Safety: programs only on the test's own child cgroup (removed with its pins afterwards),
traffic and istiod on loopback only, every process ended by PID, every wait has a deadline.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from integration.agent import SLOW_PATH_REASONS
from tests.diff.envoy_oracle import EnvoyDecision, read_decisions
from tests.e2e.agent_harness import AgentProc, mesh_cgroup, poll
from tests.kernel.conftest import Client
from tests.support.backends import Backend
from tests.support.istio_sidecar import (
    ISTIOD_ENV,
    PORT,
    SOCKMESH_IP,
    VS_ROUTES,
    SidecarEnvoy,
    cluster_endpoints,
    envoy_for,
    hand_written_requests,
    route_candidates,
    route_config_of,
    send_all,
    workload_entries,
    xds_dump,
)
from tests.support.istiod import NAMESPACE, Istiod, copy_config, edit_yaml
from tests.support.routegen import GeneratedRequest, boundary_requests

pytestmark = [pytest.mark.kernel, pytest.mark.istiod, pytest.mark.envoy]

# the service VIPs of tests/peers/istiod/config/services.yaml, by host
VIPS = {"reviews.sockmesh.test": "127.10.0.1", "ratings.sockmesh.test": "127.10.0.2",
        "details.sockmesh.test": "127.10.0.3"}
AGENT_START_S = 120.0  # bcc compiles the datapath at start; slow on a busy shared machine
CHANGE_DEADLINE_S = 30.0
SPLITS = {  # route -> (request, samples)
    "default-weighted": (GeneratedRequest("GET", "reviews.sockmesh.test", "/split"), 300),
    "canary-and-or": (GeneratedRequest("GET", "reviews.sockmesh.test", "/x",
                                       {"x-force-canary": "1"}), 200),
}
# chi-square critical values at p = 0.001 by degrees of freedom: a correct split fails one
# check in a thousand
CHI2_CRIT = {1: 10.828, 2: 13.816}
CHANGED = GeneratedRequest("GET", "ratings.sockmesh.test", "/ratings/v2/1",
                           note="v2-prefix, moved between subsets")


@dataclass
class Mesh:
    istiod: Istiod
    envoy: SidecarEnvoy
    agent: AgentProc
    client: Client
    pin: Path
    route_config: dict[str, Any]
    candidates: dict[str, dict[str, int]]
    direct_bodies: dict[str, str]
    backend_addr: dict[str, str]
    endpoints: dict[str, set[str]]
    next_id: int = 0
    conns: set[str] = field(default_factory=set)

    def counters(self) -> dict[str, int]:
        """The kernel's per-reason counters, read from the pinned map."""
        from bpf.datapath import Datapath

        return Datapath(self.agent.cgroup, self.pin).counters()

    def routed(self) -> int:
        """Requests the datapath routed so far (kernel fast path + handed to user space)."""
        c = self.counters()
        return c["fast"] + sum(v for k, v in c.items() if k in SLOW_PATH_REASONS)

    def cluster_of(self, backend: str) -> str:
        """The cluster of istiod's route config whose endpoints hold ``backend``."""
        addr = self.backend_addr[backend]
        named = {c for cands in self.candidates.values() for c in cands}
        found = sorted(c for c in named if addr in self.endpoints.get(c, set()))
        assert len(found) == 1, f"{backend} ({addr}) is in clusters {found}"
        return found[0]

    def via_kernel(self, requests: list[GeneratedRequest]) -> list[dict[str, Any]]:
        """Send each request from the client in the cgroup to its service's VIP (one
        keep-alive connection per VIP; reconnect if the datapath closed one)."""
        out = []
        for r in requests:
            host = r.authority.rsplit(":", 1)[0] if r.authority.count(":") == 1 else r.authority
            # any other authority: reviews' VIP (connect4 takes every destination on PORT)
            vip = host if host in VIPS.values() else VIPS.get(host, VIPS["reviews.sockmesh.test"])
            for attempt in range(2):
                if vip not in self.conns:
                    self.client.connect(vip, vip, PORT)
                    self.conns.add(vip)
                try:
                    out.append(self.client.request(vip, raw_request(r), method=r.method))
                    break
                except RuntimeError:
                    self.client.cmd(op="close", conn=vip)
                    self.conns.discard(vip)
                    if attempt:
                        raise
        return out

    def via_envoy(self, requests: list[GeneratedRequest]) -> list[EnvoyDecision | None]:
        ids = send_all(self.envoy.port, requests, self.next_id)
        self.next_id += len(requests)
        found = read_decisions(self.envoy.access_log, set(ids))
        return [found.get(i) for i in ids]


def raw_request(r: GeneratedRequest) -> bytes:
    """The HTTP/1.1 bytes of ``r`` (headers in wire order, no body)."""
    lines = [f"{r.method} {r.path} HTTP/1.1", f"Host: {r.authority}"]
    lines += [f"{k}: {v}" for k, v in r.header_pairs()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def direct_bodies(route_config: dict[str, Any]) -> dict[str, str]:
    """Route name -> inline body of its direct response."""
    return {str(r.get("name")): r["direct_response"].get("body", {}).get("inline_string", "")
            for vh in route_config["virtual_hosts"] for r in vh["routes"]
            if "direct_response" in r}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    binary = envoy_for("project")
    work = tmp_path_factory.mktemp("istiod-agent")
    config = copy_config(work / "istio-config")
    with ExitStack() as stack:
        backend_addr = {}
        for we in workload_entries(config):
            spec = we["spec"]
            name, host, port = we["metadata"]["name"], spec["address"], spec["ports"]["http"]
            stack.enter_context(Backend(name, host, int(port)))
            backend_addr[name] = f"{host}:{port}"
        istiod = stack.enter_context(Istiod(config, work / "istiod", env=ISTIOD_ENV))
        dump = xds_dump(istiod, work / "sockmesh-dump.json")
        envoy = stack.enter_context(SidecarEnvoy(istiod, dump, work, binary=binary))
        cg, pin = stack.enter_context(mesh_cgroup())
        agent = AgentProc(istiod.xds_address, cg, pin, env={
            "POD_NAME": "sockmesh-agent-0", "POD_NAMESPACE": NAMESPACE,
            "INSTANCE_IP": SOCKMESH_IP})
        stack.callback(agent.stop)
        t0 = time.monotonic()
        agent.start("--istio", "--plaintext")
        n_endpoints = len(backend_addr)
        st = agent.wait_applied(lambda s: s["config"]["applied"]["services"] > 0 and s[
            "config"]["applied"]["endpoints"] >= n_endpoints, AGENT_START_S)
        assert st["datapath"]["loaded"], agent.output()
        assert st["xds"]["nacks"] == 0, st["xds"]["last_nack"]
        print(f"\nagent up with istiod's config in {time.monotonic() - t0:.1f} s: "
              f"{st['config']['applied']}")
        client = Client(cg)
        stack.callback(client.close)
        rc = route_config_of(dump)
        yield Mesh(istiod, envoy, agent, client, pin, rc, route_candidates(rc),
                   direct_bodies(rc), backend_addr, cluster_endpoints(dump))
    # the agent detached on SIGTERM and removed its pins; the cgroup is gone
    assert agent.proc is not None and agent.proc.returncode == 0, agent.output()
    assert not pin.exists() and not cg.exists()


def disagreement(m: Mesh, env: EnvoyDecision | None, got: dict[str, Any]) -> list[str]:
    """How the kernel's answer differs from Envoy's decision (empty when they agree)."""
    if env is None:
        return ["no access log entry from Envoy"]
    out = []
    backend = got["headers"].get("x-backend")
    if got["status"] != env.status:
        out.append(f"status envoy={env.status} kernel={got['status']}")
    if got["headers"].get("location") != env.location:
        out.append(f"location envoy={env.location} kernel={got['headers'].get('location')}")
    if env.cluster is None:
        if backend is not None:
            out.append(f"kernel reached backend {backend}, Envoy no cluster ({env.route})")
        return out
    if backend is None:
        return [*out, f"Envoy used {env.cluster}, kernel reached no backend"]
    cluster = m.cluster_of(backend)
    cands = m.candidates.get(str(env.route), {})
    if len(cands) == 1 and cluster != env.cluster:
        out.append(f"cluster envoy={env.cluster} kernel={cluster} ({backend})")
    elif cluster not in cands or env.cluster not in cands:
        out.append(f"route {env.route} picks from {sorted(cands)}: envoy={env.cluster} "
                   f"kernel={cluster}")
    return out


def test_kernel_routes_every_request_as_envoy_does(mesh: Mesh) -> None:
    requests = hand_written_requests()
    requests += [r for r in boundary_requests(mesh.route_config) if "*" not in r.authority]
    before, c0, t0 = mesh.routed(), mesh.counters(), time.monotonic()
    got = mesh.via_kernel(requests)
    kernel_s = time.monotonic() - t0
    poll(lambda: mesh.routed() >= before + len(requests), 10, "datapath counters")
    c1 = mesh.counters()
    envoy = mesh.via_envoy(requests)
    bad, routes = [], Counter[str]()
    exact = 0
    for req, env, k in zip(requests, envoy, got, strict=True):
        routes[str(env.route if env else None)] += 1
        diff = disagreement(mesh, env, k)
        if diff:
            bad.append(f"{req.method} {req.authority}{req.path} {req.header_pairs()} "
                       f"({req.note}): {'; '.join(diff)}")
        elif env is not None and env.cluster and len(mesh.candidates[str(env.route)]) == 1:
            exact += 1
    fast = c1["fast"] - c0["fast"]
    slow = {k: c1[k] - c0[k] for k in SLOW_PATH_REASONS if c1.get(k, 0) != c0.get(k, 0)}
    print(f"\nkernel vs Envoy: {len(requests)} requests, {len(requests) - len(bad)} agree "
          f"({exact} on one exact cluster); routes hit: {dict(routes)}; kernel fast path "
          f"{fast}, handed to user space {slow}; sent through the kernel in "
          f"{kernel_s:.2f} s")
    assert not bad, f"{len(bad)} of {len(requests)} disagree:\n" + "\n".join(bad[:40])
    assert VS_ROUTES <= set(routes), VS_ROUTES - set(routes)
    # every request went through the datapath, none around it
    assert mesh.routed() - before == len(requests)
    assert fast > 0


def chi2(counts: Counter[str], weights: dict[str, int]) -> float:
    n, total = sum(counts.values()), sum(weights.values())
    return sum((counts[c] - n * w / total) ** 2 / (n * w / total) for c, w in weights.items())


def homogeneity_chi2(a: Counter[str], b: Counter[str], cats: list[str]) -> float:
    """Chi-square statistic of the 2 x k table (a, b): are both drawn from one split?"""
    na, nb = sum(a.values()), sum(b.values())
    stat = 0.0
    for c in cats:
        col = a[c] + b[c]
        for obs, n in ((a[c], na), (b[c], nb)):
            exp = n * col / (na + nb)
            stat += (obs - exp) ** 2 / exp if exp else 0.0
    return stat


def compare_split(m: Mesh, route: str, weights: dict[str, int], request: GeneratedRequest,
                  n: int) -> int:
    """Send ``request`` n times through the kernel and to Envoy; both must pick from the
    same candidates as ``weights`` say.  Returns how many the kernel fast path routed."""
    c0 = m.counters()
    got = m.via_kernel([request] * n)
    c1 = m.counters()
    envoy = m.via_envoy([request] * n)
    assert all(e is not None and e.route == route for e in envoy), envoy[:3]
    assert all(k["status"] == 200 for k in got), [k for k in got if k["status"] != 200][:3]
    kernel = Counter(m.cluster_of(k["headers"]["x-backend"]) for k in got)
    env = Counter(str(e.cluster) for e in envoy if e is not None)
    df = len(weights) - 1
    stats = (chi2(kernel, weights), chi2(env, weights),
             homogeneity_chi2(kernel, env, sorted(weights)))
    fast = c1["fast"] - c0["fast"]
    print(f"\n{route} {weights}: kernel {dict(kernel)}, Envoy {dict(env)}; chi2 kernel "
          f"{stats[0]:.2f}, Envoy {stats[1]:.2f}, kernel vs Envoy {stats[2]:.2f} "
          f"(critical {CHI2_CRIT[df]}); picked by the kernel fast path {fast}, by the "
          f"user-space slow path {sum(c1[k] - c0[k] for k in SLOW_PATH_REASONS if k in c1)}")
    assert set(kernel) == set(env) == set(weights)
    assert all(s < CHI2_CRIT[df] for s in stats), stats
    return fast


@pytest.mark.parametrize("route", sorted(SPLITS))
def test_weighted_split_through_the_datapath(mesh: Mesh, route: str) -> None:
    """The weighted routes of the test config.  All of reviews' requests are handed to the
    agent's slow path (its beta-query-v3 route matches on a query parameter, which only
    user space checks), so the slow path picks here; the next test has the kernel pick."""
    request, n = SPLITS[route]
    weights = mesh.candidates[route]
    assert len(weights) > 1, weights
    compare_split(mesh, route, weights, request, n)


def _ratings_default(split: dict[str, int] | None) -> Any:
    """Edit: ratings-default weighted over subsets (``split``), or back to the YAML's v1."""
    def dest(subset: str) -> dict[str, Any]:
        return {"host": "ratings.sockmesh.test", "subset": subset}

    def edit(docs: list[Any]) -> list[Any]:
        for d in docs:
            for r in d["spec"].get("http", []):
                if r.get("name") == "ratings-default":
                    r["route"] = ([{"destination": dest(s), "weight": w}
                                   for s, w in split.items()] if split
                                  else [{"destination": dest("v1")}])
        return docs
    return edit


def test_weighted_split_picked_in_the_kernel(mesh: Mesh) -> None:
    """ratings-default made a 60/40 split of v1/v2 in the test's copy of the YAML: a
    weighted route the kernel evaluates itself, against Envoy's picks."""
    split = {"v1": 60, "v2": 40}
    weights = {f"outbound|{PORT}|{s}|ratings.sockmesh.test": w for s, w in split.items()}
    v1, v2 = sorted(weights)
    request = GeneratedRequest("GET", "ratings.sockmesh.test", "/split")
    vs = mesh.istiod.config_dir / "virtualservices.yaml"

    def kernel_sees(cluster: str, n: int, every: bool) -> bool:
        got = {mesh.cluster_of(k["headers"]["x-backend"]) for k in mesh.via_kernel([request] * n)}
        return got == {cluster} if every else cluster in got

    edit_yaml(vs, _ratings_default(split))
    try:
        poll(lambda: kernel_sees(v2, 10, every=False), CHANGE_DEADLINE_S, "kernel split")
        poll(lambda: any(e is not None and e.cluster == v2
                         for e in mesh.via_envoy([request] * 10)), CHANGE_DEADLINE_S,
             "Envoy split")
        n = 300
        assert compare_split(mesh, "ratings-default", weights, request, n) == n
    finally:
        edit_yaml(vs, _ratings_default(None))
        poll(lambda: kernel_sees(v1, 20, every=True), CHANGE_DEADLINE_S, "YAML restored")


def _move_v2_prefix(to_subset: str) -> Any:
    def edit(docs: list[Any]) -> list[Any]:
        for d in docs:
            for r in d["spec"].get("http", []):
                if r.get("name") == "v2-prefix":
                    r["route"][0]["destination"]["subset"] = to_subset
        return docs
    return edit


def _change_reaches_kernel(mesh: Mesh, to_subset: str) -> tuple[float, str]:
    """Edit the YAML; poll through the kernel until a backend of ``to_subset`` answers;
    then wait until Envoy routes there too.  Returns (seconds from the write to that
    response, the backend)."""
    want = f"outbound|{PORT}|{to_subset}|ratings.sockmesh.test"
    t_write = time.monotonic()
    edit_yaml(mesh.istiod.config_dir / "virtualservices.yaml", _move_v2_prefix(to_subset))
    deadline = t_write + CHANGE_DEADLINE_S
    while True:
        f0 = mesh.counters()["fast"]
        k = mesh.via_kernel([CHANGED])[0]
        t_got = time.monotonic()
        backend = k["headers"].get("x-backend")
        if backend is not None and mesh.cluster_of(backend) == want:
            # the request that showed the change was routed by the kernel itself
            assert mesh.counters()["fast"] == f0 + 1, "served by the slow path"
            break
        assert t_got < deadline, f"{want} not reached in {CHANGE_DEADLINE_S} s"
    poll(lambda: (e := mesh.via_envoy([CHANGED])[0]) is not None and e.cluster == want,
         CHANGE_DEADLINE_S, f"Envoy routing to {want}")
    return t_got - t_write, str(backend)


def test_yaml_change_reaches_the_kernel_datapath(mesh: Mesh) -> None:
    start = mesh.via_kernel([CHANGED] * 5)
    assert {mesh.cluster_of(k["headers"]["x-backend"]) for k in start} == {
        f"outbound|{PORT}|v2|ratings.sockmesh.test"}
    took, backend = _change_reaches_kernel(mesh, "v1")
    # after the change: every request of that route through the kernel lands on v1
    after = mesh.via_kernel([CHANGED] * 20)
    assert {k["headers"].get("x-backend") for k in after} == {backend}
    back, _ = _change_reaches_kernel(mesh, "v2")
    print(f"\nYAML write -> first response from the new subset routed by the kernel fast "
          f"path: {took * 1000:.0f} ms (v2 -> v1), {back * 1000:.0f} ms (v1 -> v2)")
    assert took < CHANGE_DEADLINE_S and back < CHANGE_DEADLINE_S


def test_direct_response_body_through_the_kernel(mesh: Mesh) -> None:
    requests = [GeneratedRequest("GET", "reviews.sockmesh.test", "/admin"),
                GeneratedRequest("GET", "ratings.sockmesh.test", "/health")]
    got = mesh.via_kernel(requests)
    envoy = mesh.via_envoy(requests)
    for env, k in zip(envoy, got, strict=True):
        assert env is not None and env.route in mesh.direct_bodies, env
        assert k["status"] == env.status
        assert k["body"].decode(errors="replace") == mesh.direct_bodies[str(env.route)]
