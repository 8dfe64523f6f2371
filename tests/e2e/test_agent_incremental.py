"""The agent's config path is incremental: against the embedded ADS server, a change
re-translates only the resources it touches (counted on the translator's own functions, which
still run), the datapath gets the diff against what it holds, and the result equals a full
translation of what the server serves; cross-resource errors are still NACKs that leave the
last good config in place.  No kernel: the datapath is a recorder at the agent's edge.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import translator.table_builder as tb
from integration.agent import Agent, AgentConfig
from integration.demo import mesh
from integration.xds_server import AdsServer
from tests.e2e.test_agent import WAIT, demo_endpoints, server  # noqa: F401 - fixture
from translator import TablesDiff, translate
from translator.resources import ResourceSet
from translator.table_builder import apply_diff
from translator.tables import Tables
from xds_client import make_node


class RecordingDatapath:
    """Stands in for the kernel: keeps every (tables, diff) the agent applies."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tables, TablesDiff | None]] = []

    def load(self) -> RecordingDatapath:
        return self

    def apply(self, tables: Tables, diff: TablesDiff | None = None) -> dict[str, int]:
        self.calls.append((tables, diff))
        return {}

    def close(self, detach: bool = True) -> None:
        pass


def counting(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> Counter[str]:
    """Count calls of the builder's translation functions (the real ones still run)."""
    counts: Counter[str] = Counter()

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kw: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kw)
        return counted

    for name in names:
        monkeypatch.setattr(tb, name, wrap(name, getattr(tb, name)))
    return counts


async def _agent(port: int, delta: bool, dp: RecordingDatapath) -> Agent:
    def factory(cgroups: list[Path], pin: Path, splice: str | None) -> RecordingDatapath:
        return dp
    agent = Agent(AgentConfig(server=f"127.0.0.1:{port}", node=make_node("agent-incr"),
                              delta=delta, admin_addr=None, cgroups=[Path("/unused")]),
                  datapath_factory=factory)
    await agent.start()
    return agent


def _check_calls(calls: list[tuple[Tables, TablesDiff | None]]) -> None:
    """Every diff turns the previous tables into the next ones."""
    assert calls[0][1] is None  # the first apply: the datapath works out what it holds
    for (before, _), (after, diff) in itertools.pairwise(calls):
        assert diff is not None and apply_diff(before, diff) == after


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_change_translates_only_what_it_touches(
        server: tuple[AdsServer, int], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        delta: bool) -> None:
    srv, port = server
    dp = RecordingDatapath()
    agent = await _agent(port, delta, dp)
    try:
        await agent.wait_applied(lambda a: a.applied is not None and a.applied.endpoints == 9,
                                 WAIT)
        counts = counting(monkeypatch, ("cla_endpoints", "build_cluster",
                                        "translate_route_config", "listener_targets"))
        eps = demo_endpoints()
        eps["details"] = eps["details"][:1]  # one endpoint of one cluster goes
        good = mesh.mesh_resources(eps)
        srv.set_resources(good)
        await agent.wait_applied(lambda a: a.applied is not None and a.applied.endpoints == 8,
                                 WAIT)
        # one ClusterLoadAssignment parsed, one cluster rebuilt, nothing else translated
        assert counts == {"cla_endpoints": 1, "build_cluster": 1}, counts
        tables, diff = dp.calls[-1]
        assert diff is not None and list(diff.clusters.upserted) == ["details"]
        assert not diff.clusters.removed and not diff.services and not diff.route_tables
        assert tables == translate(good) == agent.tables

        # a route config the translator rejects: NACK; the builder keeps the last good one
        bad = mesh.mesh_resources(eps)
        rc = bad.route_configs[mesh.ROUTE_CONFIG]
        rc.virtual_hosts[0].routes[0].match.ClearField("prefix")
        rc.virtual_hosts[0].routes[0].match.safe_regex.regex = "(unclosed"
        start = len(srv.events)
        srv.set_resources(bad)
        ev = await srv.wait_for(lambda e: not e.ack and srv.events.index(e) >= start, WAIT)
        assert "regex" in (ev.error_detail or "").lower()
        # then an endpoint change with the bad route config still served: the RDS
        # resources are NACKed again, the endpoints apply on the last good route config
        eps["ratings"] = eps["ratings"][:1]
        nxt = mesh.mesh_resources(eps)
        nxt.route_configs[mesh.ROUTE_CONFIG] = rc
        srv.set_resources(nxt)
        n = sum(map(len, eps.values()))
        await agent.wait_applied(lambda a: a.applied is not None and a.applied.endpoints == n,
                                 WAIT)
        nxt.route_configs[mesh.ROUTE_CONFIG] = good.route_configs[mesh.ROUTE_CONFIG]
        assert dp.calls[-1][0] == translate(nxt) == agent.tables
        _check_calls(dp.calls)
    finally:
        await agent.stop()


def _without(rs: ResourceSet, cluster: str) -> ResourceSet:
    out = copy.deepcopy(rs)
    out.clusters.pop(cluster)
    out.endpoints.pop(cluster)
    return out


async def test_removing_a_cluster_a_validating_route_config_names_is_a_nack(
        server: tuple[AdsServer, int]) -> None:  # noqa: F811
    srv, port = server
    dp = RecordingDatapath()
    agent = await _agent(port, False, dp)

    def applied(type_short: str, version: str) -> Callable[[Agent], bool]:
        return lambda a: a.applied is not None and a.applied.versions[type_short] == version

    try:
        validating = mesh.mesh_resources(demo_endpoints())
        validating.route_configs[mesh.ROUTE_CONFIG].validate_clusters.value = True
        await agent.wait_applied(applied("RDS", srv.set_resources(validating)), WAIT)
        kept = dict(agent.applied.versions)  # type: ignore[union-attr]
        calls = len(dp.calls)

        start = len(srv.events)
        srv.set_resources(_without(validating, "ratings"))
        ev = await srv.wait_for(lambda e: not e.ack and srv.events.index(e) >= start, WAIT)
        assert ev.type_url.endswith("Cluster")
        assert "validate_clusters" in (ev.error_detail or "")
        assert "'ratings'" in (ev.error_detail or "")
        assert agent.applied is not None and agent.applied.versions == kept
        assert agent.apply_errors == 0 and len(dp.calls) == calls
        assert agent.tables == translate(validating)

        # once the route config stops validating its clusters, the removal is accepted
        # (clusters are pushed before route configs: that change goes first)
        relaxed = copy.deepcopy(validating)
        relaxed.route_configs[mesh.ROUTE_CONFIG].validate_clusters.value = False
        await agent.wait_applied(applied("RDS", srv.set_resources(relaxed)), WAIT)
        gone = _without(relaxed, "ratings")
        await agent.wait_applied(applied("CDS", srv.set_resources(gone)), WAIT)
        assert agent.tables == translate(gone)
        assert "ratings" not in agent.tables.clusters
        _check_calls(dp.calls)
    finally:
        await agent.stop()
