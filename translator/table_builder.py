"""Whole-set and incremental translation: TableBuilder, TablesDiff, diff_tables.

``TableBuilder`` keeps the translated piece of every resource, so one xDS update (an
endpoint change, a new route config) re-translates only what depends on it and returns a
``TablesDiff`` naming just the changed rows: the kernel encoder writes diffs, not tables.
``translate()`` is a builder fed the whole set at once, so there is one translation path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from translator import resources as res
from translator.cluster_table import (
    ParsedEndpoints,
    build_cluster,
    cla_endpoints,
    eds_service_name,
)
from translator.errors import TranslationError, resource_label
from translator.route_table import referenced_clusters, translate_route_config
from translator.service_table import (
    ListenerTargets,
    inline_table_names,
    listener_targets,
    merge_services,
    sorted_services,
    with_table_names,
)
from translator.tables import Cluster, RouteTable, Service, Tables

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class KeyedDiff(Generic[K, V]):
    """Rows of one table that were added or changed (``upserted``) or deleted (``removed``)."""

    upserted: Mapping[K, V] = field(default_factory=dict)
    removed: tuple[K, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upserted or self.removed)


@dataclass(frozen=True)
class TablesDiff:
    """What changed between two Tables, per table; empty diffs are falsy."""

    services: KeyedDiff[tuple[str, int], Service] = field(default_factory=KeyedDiff)
    route_tables: KeyedDiff[str, RouteTable] = field(default_factory=KeyedDiff)
    clusters: KeyedDiff[str, Cluster] = field(default_factory=KeyedDiff)

    def __bool__(self) -> bool:
        return bool(self.services or self.route_tables or self.clusters)


def _diff(old: Mapping[Any, Any], new: Mapping[Any, Any]) -> KeyedDiff[Any, Any]:
    upserted = {}
    for k, v in new.items():
        prev = old.get(k)
        # identity first: unchanged rows are usually the very same objects
        if prev is not v and prev != v:
            upserted[k] = v
    removed = tuple(k for k in old if k not in new)
    return KeyedDiff(upserted, removed)


def _services_by_key(tables: Tables) -> dict[tuple[str, int], Service]:
    return {(s.vip, s.port): s for s in tables.services}


def diff_tables(old: Tables, new: Tables) -> TablesDiff:
    """The rows that differ between ``old`` and ``new``."""
    return TablesDiff(
        services=_diff(_services_by_key(old), _services_by_key(new)),
        route_tables=_diff(old.route_tables, new.route_tables),
        clusters=_diff(old.clusters, new.clusters),
    )


def _check_validate_clusters(table: RouteTable, rc: route_pb2.RouteConfiguration,
                             default: bool, clusters: Mapping[str, Cluster]) -> None:
    # Envoy rejects a route config naming unknown clusters when validate_clusters is on
    # (default on for inline route configs, off for RDS).  Partial dumps carry no clusters,
    # so the check only runs when there are some.
    explicit = rc.validate_clusters.value if rc.HasField("validate_clusters") else None
    if not clusters or not (default if explicit is None else explicit):
        return
    missing = sorted(referenced_clusters(table) - clusters.keys())
    if missing:
        raise TranslationError(resource_label("RouteConfiguration", table.name),
                               f"validate_clusters: unknown cluster {missing[0]!r}")


class TableBuilder:
    """Translated state of a resource set, updated one resource at a time.

    ``apply`` validates and translates before changing anything, so a bad resource raises
    TranslationError and leaves the builder as it was (what an xDS NACK needs).
    """

    def __init__(self, resources: res.ResourceSet | None = None) -> None:
        self._cluster_msgs: dict[str, cluster_pb2.Cluster] = {}
        self._clas: dict[str, ParsedEndpoints] = {}  # CLA name -> parsed endpoints
        self._eds_users: dict[str, set[str]] = {}  # CLA name -> clusters using it
        self._clusters: dict[str, Cluster] = {}
        self._rds: dict[str, RouteTable] = {}
        self._rds_msgs: dict[str, route_pb2.RouteConfiguration] = {}
        self._listeners: dict[str, ListenerTargets] = {}
        # listener -> {inline route config name -> its table under that name}
        self._listener_inline: dict[str, dict[str, RouteTable]] = {}
        self._inline: dict[str, RouteTable] = {}  # inline route tables by final table name
        self._services: dict[tuple[str, int], Service] = {}
        if resources is not None:
            self._load(resources)

    # ------------------------------------------------------------ whole set

    def _load(self, rs: res.ResourceSet) -> None:
        for name in sorted(rs.endpoints):
            self._clas[name] = cla_endpoints(rs.endpoints[name])
        for name in sorted(rs.clusters):
            self._set_cluster_msg(rs.clusters[name])
            self._clusters[name] = self._translate_cluster(name)
        for name in sorted(rs.route_configs):
            rc = rs.route_configs[name]
            table = translate_route_config(rc)
            _check_validate_clusters(table, rc, False, self._clusters)
            self._rds[name] = table
            self._rds_msgs[name] = rc
        for name in sorted(rs.listeners):
            self._listeners[name], self._listener_inline[name] = \
                self._translate_listener(rs.listeners[name])
        self._inline, self._services = self._resolve_listeners()

    def tables(self) -> Tables:
        """The current tables (dicts sorted by name, services by port then VIP)."""
        route_tables = {**self._inline, **self._rds}
        return Tables(
            services=sorted_services(self._services.values()),
            route_tables=dict(sorted(route_tables.items())),
            clusters=dict(sorted(self._clusters.items())),
            skipped_listeners=tuple((n, t.skipped) for n, t in sorted(self._listeners.items())
                                    if t.skipped),
        )

    # ------------------------------------------------------------ pieces

    def _set_cluster_msg(self, c: cluster_pb2.Cluster) -> None:
        old = self._cluster_msgs.get(c.name)
        if old is not None:
            self._eds_users.get(eds_service_name(old), set()).discard(c.name)
        self._cluster_msgs[c.name] = c
        self._eds_users.setdefault(eds_service_name(c), set()).add(c.name)

    def _translate_cluster(self, name: str) -> Cluster:
        c = self._cluster_msgs[name]
        return build_cluster(c, self._clas.get(eds_service_name(c)))

    def _translate_listener(self, listener: listener_pb2.Listener
                            ) -> tuple[ListenerTargets, dict[str, RouteTable]]:
        targets = listener_targets(listener)
        inline = {}
        for rname, rc in targets.inline_route_configs:
            table = translate_route_config(rc, rname)
            _check_validate_clusters(table, rc, True, self._clusters)
            inline[rname] = table
        return targets, inline

    def _resolve_listeners(self) -> tuple[dict[str, RouteTable],
                                          dict[tuple[str, int], Service]]:
        """Inline route tables under their final names, and the merged services."""
        names = inline_table_names(
            {n: t.inline_route_configs for n, t in self._listeners.items()}, self._rds_msgs)
        inline: dict[str, RouteTable] = {}
        for lname, tables in sorted(self._listener_inline.items()):
            for rname, table in tables.items():
                final = names[lname][rname]
                if final not in self._rds and final not in inline:
                    inline[final] = (table if final == rname
                                     else dataclasses.replace(table, name=final))
        renamed = {n: with_table_names(t, names[n]) for n, t in self._listeners.items()}
        return inline, merge_services(renamed)

    def _inline_names(self) -> set[str]:
        return {r for tables in self._listener_inline.values() for r in tables}

    # ------------------------------------------------------------ updates

    def apply(self, type_url: str, name: str, msg: Message | None) -> TablesDiff:
        """Add/replace (``msg``) or delete (``None``) one resource; return the changed rows."""
        if type_url == res.CLUSTER_LOAD_ASSIGNMENT:
            return self._apply_cla(name, msg)  # type: ignore[arg-type]
        if type_url == res.CLUSTER:
            return self._apply_cluster(name, msg)  # type: ignore[arg-type]
        if type_url == res.ROUTE_CONFIGURATION:
            return self._apply_route_config(name, msg)  # type: ignore[arg-type]
        if type_url == res.LISTENER:
            return self._apply_listener(name, msg)  # type: ignore[arg-type]
        raise TranslationError(resource_label("resource", name), f"type: unsupported {type_url}")

    def _apply_cla(self, name: str, cla: endpoint_pb2.ClusterLoadAssignment | None) -> TablesDiff:
        users = sorted(self._eds_users.get(name, ()))
        endpoints = cla_endpoints(cla) if cla is not None else None
        updated = {}
        for cname in users:
            updated[cname] = build_cluster(self._cluster_msgs[cname], endpoints)
        if endpoints is None:
            self._clas.pop(name, None)
        else:
            self._clas[name] = endpoints
        changed = {}
        for cname, new in updated.items():
            if self._clusters.get(cname) != new:
                self._clusters[cname] = new
                changed[cname] = new
        return TablesDiff(clusters=KeyedDiff(changed))

    def _apply_cluster(self, name: str, c: cluster_pb2.Cluster | None) -> TablesDiff:
        if c is None:
            if name not in self._clusters:
                return TablesDiff()
            old = self._cluster_msgs.pop(name)
            self._eds_users.get(eds_service_name(old), set()).discard(name)
            del self._clusters[name]
            return TablesDiff(clusters=KeyedDiff(removed=(name,)))
        new = build_cluster(c, self._clas.get(eds_service_name(c)))
        self._set_cluster_msg(c)
        if self._clusters.get(name) == new:
            return TablesDiff()
        self._clusters[name] = new
        return TablesDiff(clusters=KeyedDiff({name: new}))

    def _apply_route_config(self, name: str,
                            rc: route_pb2.RouteConfiguration | None) -> TablesDiff:
        before = {**self._inline, **self._rds}
        if rc is not None:
            table = translate_route_config(rc)
            _check_validate_clusters(table, rc, False, self._clusters)
        if rc is None:
            self._rds.pop(name, None)
            self._rds_msgs.pop(name, None)
        else:
            self._rds[name] = table
            self._rds_msgs[name] = rc
        if name in self._inline_names():
            # an RDS config sharing an inline config's name can rename inline tables
            old_services = self._services
            self._inline, self._services = self._resolve_listeners()
            return TablesDiff(services=_diff(old_services, self._services),
                              route_tables=_diff(before, {**self._inline, **self._rds}))
        after = {**self._inline, **self._rds}
        return TablesDiff(route_tables=_diff({name: before[name]} if name in before else {},
                                             {name: after[name]} if name in after else {}))

    def _apply_listener(self, name: str, listener: listener_pb2.Listener | None) -> TablesDiff:
        old_routes = {**self._inline, **self._rds}
        old_services = self._services
        if listener is None:
            self._listeners.pop(name, None)
            self._listener_inline.pop(name, None)
        else:
            self._listeners[name], self._listener_inline[name] = \
                self._translate_listener(listener)
        self._inline, self._services = self._resolve_listeners()
        return TablesDiff(services=_diff(old_services, self._services),
                          route_tables=_diff(old_routes, {**self._inline, **self._rds}))


def translate(resources: res.ResourceSet) -> Tables:
    """Validate and flatten a whole ResourceSet; raise TranslationError on the first bad one."""
    return TableBuilder(resources).tables()
