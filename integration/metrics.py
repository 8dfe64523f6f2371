"""Prometheus metrics of the agent, read at scrape time from the xDS client and the kernel.

Every metric is documented, with its labels, in docs/metrics.md.  Nothing is sampled in the
background: a scrape reads the datapath's pinned counter maps and the client's protocol
state as they are at that moment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from integration.agent import Agent

log = logging.getLogger(__name__)


def _safe(fn: Callable[[], Any], what: str) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one failing probe must not break the scrape
        log.warning("metrics: reading %s failed: %s", what, exc)
        return None


class AgentCollector(Collector):
    """Collects the ``sockmesh_*`` metrics of one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (called by prometheus_client on each scrape)."""
        yield from self._xds()
        yield from self._config()
        yield from self._datapath()

    # ---- xDS ------------------------------------------------------------------------

    def _xds(self) -> Iterator[Metric]:
        from xds_client.resource_types import SHORT_NAMES

        st = self.agent.client.status
        connected = GaugeMetricFamily(
            "sockmesh_xds_connected", "1 while an ADS stream to the control server is up",
            labels=["server"])
        connected.add_metric([st.server], 1.0 if st.connected else 0.0)
        yield connected
        streams = CounterMetricFamily(
            "sockmesh_xds_streams_opened", "ADS streams opened (first connect + reconnects)",
            labels=["server"])
        streams.add_metric([st.server], st.streams_opened)
        yield streams
        acks = CounterMetricFamily("sockmesh_xds_acks", "xDS responses ACKed", labels=["type"])
        nacks = CounterMetricFamily("sockmesh_xds_nacks",
                                    "xDS responses NACKed (rejected; last good config kept)",
                                    labels=["type"])
        resources = GaugeMetricFamily("sockmesh_xds_resources",
                                      "resources currently held (last good)", labels=["type"])
        version = GaugeMetricFamily("sockmesh_xds_version_info",
                                    "always 1; the label carries the ACKed version",
                                    labels=["type", "version"])
        for type_url, ts in st.types.items():
            short = SHORT_NAMES.get(type_url, type_url)
            acks.add_metric([short], ts.acks)
            nacks.add_metric([short], ts.nacks)
            resources.add_metric([short], ts.resources)
            version.add_metric([short, ts.version], 1.0)
        yield acks
        yield nacks
        yield resources
        yield version

    # ---- config apply ---------------------------------------------------------------

    def _config(self) -> Iterator[Metric]:
        a = self.agent
        applies = CounterMetricFamily("sockmesh_config_applies",
                                      "snapshots translated and written to the datapath")
        applies.add_metric([], a.applies)
        yield applies
        errors = CounterMetricFamily(
            "sockmesh_config_apply_errors",
            "snapshots that could not be translated or written (last good kept)")
        errors.add_metric([], a.apply_errors)
        yield errors
        if a.applied is not None:
            secs = GaugeMetricFamily("sockmesh_config_apply_duration_seconds",
                                     "how long the last successful apply took")
            secs.add_metric([], a.applied.seconds)
            yield secs
            ts = GaugeMetricFamily("sockmesh_config_last_apply_timestamp_seconds",
                                   "Unix time of the last successful apply")
            ts.add_metric([], a.applied.started)
            yield ts

    # ---- datapath -------------------------------------------------------------------

    def _datapath(self) -> Iterator[Metric]:
        a = self.agent
        loaded = GaugeMetricFamily("sockmesh_datapath_loaded",
                                   "1 when the eBPF datapath is attached; 0 = failing open")
        loaded.add_metric([], 1.0 if a.datapath is not None else 0.0)
        yield loaded
        dp = a.datapath
        if dp is None:
            return
        counters = _safe(dp.counters, "datapath counters")  # type: ignore[attr-defined]
        if isinstance(counters, Mapping):
            yield from self._counters(counters)
        from integration import datapath_info as info

        stats = _safe(dp.keeper_stats, "socket keeper stats") if hasattr(dp, "keeper_stats") \
            else None
        if isinstance(stats, Mapping):
            yield from self._keeper(stats)

        endpoints = _safe(lambda: info.endpoints_of(dp), "endpoint stats")
        if endpoints:
            yield from self._endpoints(endpoints)
        reqs = _safe(lambda: info.request_stats_of(dp), "request stats")
        if isinstance(reqs, Mapping):
            yield self._requests(reqs)
        fill = _safe(lambda: info.fill_of(dp), "map fill")
        if isinstance(fill, Mapping):
            entries = GaugeMetricFamily("sockmesh_map_entries", "entries in a kernel map",
                                        labels=["map"])
            cap = GaugeMetricFamily("sockmesh_map_capacity", "max_entries of a kernel map",
                                    labels=["map"])
            for name, (n, limit) in sorted(fill.items()):
                entries.add_metric([name], n)
                cap.add_metric([name], limit)
            yield entries
            yield cap

    def _counters(self, counters: Mapping[str, int]) -> Iterator[Metric]:
        from integration.agent import SLOW_PATH_REASONS

        fast = CounterMetricFamily("sockmesh_requests_fast_path",
                                   "requests routed and dispatched in the kernel")
        fast.add_metric([], counters.get("fast", 0))
        yield fast
        slow = CounterMetricFamily("sockmesh_requests_slow_path",
                                   "requests handed to the user-space slow path, by reason",
                                   labels=["reason"])
        events = CounterMetricFamily("sockmesh_datapath_events",
                                     "other datapath events (framing, pool, L4), by kind",
                                     labels=["event"])
        for name, value in sorted(counters.items()):
            if name in SLOW_PATH_REASONS:
                slow.add_metric([name], value)
            elif name != "fast":
                events.add_metric([name], value)
        yield slow
        yield events

    def _requests(self, totals: Mapping[tuple[str, ...], int]) -> Metric:
        from integration.datapath_info import REQUEST_LABELS

        fam = CounterMetricFamily(
            "sockmesh_requests",
            "requests routed in the kernel whose response completed, by route, cluster, "
            "endpoint and response status class", labels=list(REQUEST_LABELS))
        for labels, n in sorted(totals.items()):
            fam.add_metric(list(labels), n)
        return fam

    def _keeper(self, stats: Mapping[str, Any]) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "sockmesh_slow_path_outcomes", "what the user-space slow path did with requests "
            "handed to it", labels=["outcome"])
        for name, n in sorted(stats.get("slow_path", {}).items()):
            outcomes.add_metric([name], n)
        yield outcomes
        replaced = CounterMetricFamily("sockmesh_pool_replaced_connections",
                                       "pooled connections replaced after the backend closed them")
        replaced.add_metric([], stats.get("pool_replaced", 0))
        yield replaced
        grown = CounterMetricFamily("sockmesh_pool_grown_connections",
                                    "pooled connections added because no idle one was found")
        grown.add_metric([], stats.get("pool_grown", 0))
        yield grown

    def _endpoints(self, endpoints: Any) -> Iterator[Metric]:
        active = GaugeMetricFamily("sockmesh_endpoint_active_requests",
                                   "requests in flight to an endpoint (kernel count)",
                                   labels=["cluster", "endpoint"])
        pool = GaugeMetricFamily("sockmesh_pool_connections",
                                 "pooled backend connections set up for an endpoint",
                                 labels=["cluster", "endpoint"])
        idle = GaugeMetricFamily("sockmesh_pool_idle_connections",
                                 "pooled connections idle right now", labels=["cluster", "endpoint"])
        requests = CounterMetricFamily("sockmesh_endpoint_requests",
                                       "requests dispatched to an endpoint by the kernel",
                                       labels=["cluster", "endpoint"])
        has_idle = has_requests = False
        for ep in endpoints:
            labels = [str(ep.get("cluster", "")), str(ep["endpoint"])]
            active.add_metric(labels, ep.get("active", 0))
            pool.add_metric(labels, ep.get("pool", 0))
            if "idle" in ep:
                has_idle = True
                idle.add_metric(labels, ep["idle"])
            if "requests" in ep:
                has_requests = True
                requests.add_metric(labels, ep["requests"])
        yield active
        yield pool
        if has_idle:
            yield idle
        if has_requests:
            yield requests
