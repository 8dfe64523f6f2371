"""The kernel path and the Python model (translator.model) make the same decision for every
request of a corpus over the real Istio dumps and generated tables: same route (rule), same
cluster (for weighted_clusters: one of the candidates), and the kernel handled them itself."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import rule, to, vhost, weighted
from translator import translate
from translator.model import Request, route
from translator.resources import parse_config_dump
from translator.tables import (
    ActionKind,
    Cluster,
    Endpoint,
    LbPolicy,
    PathKind,
    RouteTable,
    Service,
    ServiceKind,
    StringKind,
    Tables,
    ValueMatch,
)

PORT = 8085


def _istio_dir() -> Path:
    for parent in Path(__file__).resolve().parents:
        cand = parent / "shared" / "testdata" / "istio"
        if cand.is_dir():
            return cand
    pytest.fail("shared/testdata/istio not found")
    raise AssertionError


def _with_backends(tables: Tables, backends: dict, vip_base: int) -> Tables:
    """Give every cluster a route names one identity backend, and each route table a VIP."""
    names = set(tables.clusters)
    for rt in tables.route_tables.values():
        for vh in rt.virtual_hosts:
            for r in vh.rules:
                if r.action.cluster:
                    names.add(r.action.cluster)
                names.update(w.cluster for w in r.action.weighted)
    clusters = {}
    for i, name in enumerate(sorted(names)):
        key = f"k{len(backends)}"
        (b,) = make_backends(backends, key)
        b.cluster = name  # type: ignore[attr-defined]
        clusters[name] = Cluster(name, LbPolicy.ROUND_ROBIN, (Endpoint(b.host, b.port),))
    services = tuple(Service(f"127.10.1.{vip_base + i}", PORT, ServiceKind.HTTP, route_table=n)
                     for i, n in enumerate(sorted(tables.route_tables)))
    return replace(tables, services=services, clusters=clusters)


def _istio(name: str) -> Tables:
    with open(_istio_dir() / name) as f:
        return translate(parse_config_dump(json.load(f)))


PATHS = ["/", "/a", "/a/b", "/api", "/api/v1", "/Api", "/x/y/z", "/get", "/getx", "/get/1",
         "/static", "/static/x.css", "/productpage", "/login", "/logout", "/api/v1/products/1"]
HDRS = {"x-user": ["jason", "mike"], "x-env": ["prod", "dev"], "x-canary": ["1"]}


def _generated(seed: int) -> Tables:
    rng = random.Random(seed)

    def cond() -> ValueMatch:
        name = rng.choice(list(HDRS) + [":method"])
        if name == ":method":
            return ValueMatch(":method", StringKind.EXACT, rng.choice(["GET", "POST"]))
        if rng.random() < 0.3:
            return ValueMatch(name, StringKind.PRESENT, present=rng.random() < 0.7,
                              invert=rng.random() < 0.2)
        return ValueMatch(name, StringKind.EXACT, rng.choice(HDRS[name]),
                          invert=rng.random() < 0.2)

    def rules() -> list:
        out = [rule("/", action=to("c0"))] if rng.random() < 0.7 else []
        for _ in range(rng.randint(2, 12)):
            kind = rng.choice([PathKind.PREFIX, PathKind.EXACT, PathKind.PATH_SEPARATED_PREFIX])
            path = rng.choice(["/a", "/a/b", "/api", "/api/v1", "/Api", "/x", "/get"])
            action = (weighted(("c1", 1), ("c2", 3)) if rng.random() < 0.15
                      else to(rng.choice(["c0", "c1", "c2", "c3"])))
            out.append(rule(path, kind, action=action,
                            headers=tuple(cond() for _ in range(rng.randint(0, 2))),
                            case_sensitive=rng.random() > 0.2))
        return out

    vhs = [vhost("v-exact", ["a.test", "b.test:8080"], rules()),
           vhost("v-suffix", ["*.wild.test", "*-x.wild.test"], rules()),
           vhost("v-prefix", ["pre.*"], rules())]
    if rng.random() < 0.6:
        vhs.append(vhost("v-any", ["*"], rules()))
    rt = RouteTable(f"gen{seed}", tuple(vhs), ignore_port_in_host_matching=rng.random() < 0.5)
    return Tables(route_tables={rt.name: rt})


HOSTS = ["a.test", "A.Test", "b.test:8080", "a.test:8080", "foo.wild.test", "q-x.wild.test",
         "wild.test", "pre.anything", "pre.", "other.test", "httpbin.example.com",
         "httpbin.example.com:80", "bookinfo.example.com"]


def _hosts_of(rt: RouteTable) -> list[str]:
    """Hosts the table's domains take (and near misses): most requests should route."""
    out = []
    for vh in rt.virtual_hosts:
        for d in vh.domains:
            h = "bookinfo.example.com" if d == "*" else (
                "foo" + d[1:] if d.startswith("*") else d[:-1] + "zz" if d.endswith("*") else d)
            out += [h, h.upper(), h + ":80"]
    return out


def _corpus(seed: int, n: int, rt: RouteTable) -> list[tuple[str, str, str, dict[str, str]]]:
    rng = random.Random(seed * 7919)
    own = _hosts_of(rt)
    paths = [r.path.value for vh in rt.virtual_hosts for r in vh.rules if r.path.value] or PATHS
    out = []
    for _ in range(n):
        path = rng.choice(paths if rng.random() < 0.5 else PATHS)
        path += rng.choice(["", "", "/", "/z", "?q=1", "x"])
        headers = {k: rng.choice(v) for k, v in HDRS.items() if rng.random() < 0.4}
        host = rng.choice(own) if rng.random() < 0.6 else rng.choice(HOSTS)
        out.append((rng.choice(["GET", "GET", "POST"]), host, path, headers))
    return out


SETS = [("istio_bookinfo", "istio_bookinfo_gateway_rds_cds.json", 70),
        ("istio_path_sep", "istio_k8s_gateway_path_separated_prefix_rds.json", 50),
        ("istio_prefix", "istio_gateway_prefix_rds.json", 50),
        ("gen1", 1, 120), ("gen2", 2, 120), ("gen3", 3, 120)]


@pytest.mark.parametrize("name,source,n", SETS, ids=[s[0] for s in SETS])
def test_kernel_and_model_agree(mesh: Mesh, client: Client, backends, name: str,
                                source: object, n: int) -> None:
    base = _istio(source) if isinstance(source, str) else _generated(source)  # type: ignore[arg-type]
    tables = _with_backends(base, backends, vip_base=10 * (SETS.index((name, source, n)) + 1))
    mesh.apply(tables)
    assert mesh.dp.encoder.user_reasons == []
    by_cluster = {b.cluster: b.name for b in backends.values()}  # type: ignore[attr-defined]
    fast = handed = 0
    for rt_name in sorted(tables.route_tables):
        rt = tables.route_tables[rt_name]
        svc = next(s for s in tables.services if s.route_table == rt_name)
        local = client.connect("a", svc.vip, PORT)
        for method, host, path, headers in _corpus(len(name) + n, n, rt):
            want = route(rt, Request(method=method, authority=host, path=path,
                                     headers=tuple(headers.items())), tables.clusters)
            before = mesh.client_state(local).requests
            c0 = mesh.counters()
            r = client.request("a", http(method, path, host, headers))
            st = mesh.client_state(local)
            routed_in_kernel = st.requests == before + 1
            why = {k: v - c0[k] for k, v in mesh.counters().items() if v != c0[k]}
            ctx = (method, host, path, headers, want, why)
            if want.action in (ActionKind.CLUSTER, ActionKind.WEIGHTED_CLUSTERS):
                assert routed_in_kernel, ctx
                fast += 1
                got_rule = mesh.dp.encoder.rule_index[st.last_rule]
                assert got_rule == (want.route_config, want.virtual_host, want.rule), ctx
                got_cluster = mesh.dp.encoder.cluster_name(st.last_cluster)
                if want.action is ActionKind.CLUSTER:
                    assert got_cluster == want.cluster, ctx
                else:
                    assert got_cluster in {w.cluster for w in want.candidates if w.weight}, ctx
                assert r["headers"]["x-backend"] == by_cluster[got_cluster], ctx
            else:
                # no route or a local reply: user space answers with the model's status
                assert not routed_in_kernel, ctx
                assert r["status"] == (want.status or 404), ctx
                handed += 1
                mesh.wait_released(local)
        client.cmd(op="close", conn="a")
    print(f"{name}: {fast} routed in kernel, {handed} answered by user space (no route)")
    assert fast + handed == n * len(tables.route_tables)
    assert fast >= 10, (fast, handed)  # routable requests of the corpus all ran in kernel
