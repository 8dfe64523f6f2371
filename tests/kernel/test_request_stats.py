"""Per-route request counts (sm_reqstats_v1 -> sockmesh_requests_total) equal what the
client sent and got back, per route, cluster, endpoint and response class."""

from __future__ import annotations

import collections

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from integration.datapath_info import request_stats_of
from integration.metrics import AgentCollector
from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost

VIP, PORT = "127.10.0.11", 8091
HOST = "stats.test"
# path -> (route name, cluster, response class); the "/status" rule wins for its paths
SENT = {"/a": 7, "/status/404": 5, "/status/503": 3, "/status/204": 2}


def _route(path: str) -> tuple[str, str]:
    return ("st", "c_st") if path.startswith("/status") else ("all", "c_all")


def test_request_counts_match_what_the_client_sent(mesh: Mesh, client: Client,
                                                   backends) -> None:
    a1, a2, s1 = make_backends(backends, "a1", "a2", "s1")
    mesh.apply(http_tables(
        VIP, PORT,
        [vhost("stats", [HOST], [rule("/", action=to("c_all"), name="all"),
                                 rule("/status", action=to("c_st"), name="st")])],
        [cluster("c_all", [a1, a2]), cluster("c_st", [s1])], rt_name="rt_stats"))
    before = request_stats_of(mesh.dp)
    fast = mesh.counters()["fast"]

    client.connect("s", VIP, PORT)
    paths = [p for p, n in SENT.items() for _ in range(n)]
    rs = client.requests("s", [http("GET", p, HOST) for p in paths])

    addr = {b.name: f"{b.host}:{b.port}" for b in (a1, a2, s1)}
    want: collections.Counter[tuple[str, ...]] = collections.Counter()
    for p, r in zip(paths, rs, strict=True):
        route, cl = _route(p)
        want[("rt_stats", "stats", route, cl, addr[r["headers"]["x-backend"]],
              f"{r['status'] // 100}xx")] += 1
    assert mesh.counters()["fast"] - fast == len(paths)  # all of them on the kernel path

    after = request_stats_of(mesh.dp)
    got = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    assert got == dict(want)
    assert {k[5] for k in got} == {"2xx", "4xx", "5xx"}

    # the exposition name and labels
    reg = CollectorRegistry()

    class Only(AgentCollector):
        def collect(self):  # type: ignore[no-untyped-def]
            yield self._requests(after)

    reg.register(Only(None))  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    k = next(iter(want))
    assert (f'sockmesh_requests_total{{cluster="{k[3]}",endpoint="{k[4]}",'
            f'response_class="{k[5]}",route="{k[2]}",route_config="rt_stats",'
            f'virtual_host="stats"}} {float(after[k])}') in text
