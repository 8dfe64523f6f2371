"""Whole-set and incremental translation: TableBuilder, TablesDiff, diff_tables.

``TableBuilder`` keeps the translated piece of every resource, so one xDS update (an
endpoint change, a new route config) re-translates only what depends on it and returns a
``TablesDiff`` naming just the changed rows: the kernel encoder writes diffs, not tables.
``update`` applies the changed resources of one xDS response all or nothing (what the
agent's ACK/NACK needs); ``apply_diff`` rebuilds the next Tables from the previous one and a
diff (the socket keeper receives diffs, not tables).  ``translate()`` is a builder fed the
whole set at once, so there is one translation path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Mapping
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
    """What changed between two Tables, per table; empty diffs are falsy.

    ``skipped_listeners`` is the new list of skipped listeners when it changed (None: the
    same); it is reported, never encoded, so it alone does not make a diff true.
    """

    services: KeyedDiff[tuple[str, int], Service] = field(default_factory=KeyedDiff)
    route_tables: KeyedDiff[str, RouteTable] = field(default_factory=KeyedDiff)
    clusters: KeyedDiff[str, Cluster] = field(default_factory=KeyedDiff)
    skipped_listeners: tuple[tuple[str, str], ...] | None = None

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
        skipped_listeners=(None if old.skipped_listeners == new.skipped_listeners
                           else new.skipped_listeners),
    )


def _patched(old: Mapping[K, V], d: KeyedDiff[K, V]) -> dict[K, V]:
    if not d:
        return dict(old)
    out = {k: v for k, v in old.items() if k not in d.removed}
    out.update(d.upserted)
    return dict(sorted(out.items()))  # type: ignore[type-var]


def apply_diff(tables: Tables, diff: TablesDiff) -> Tables:
    """The Tables that ``diff`` turns ``tables`` into, in TableBuilder.tables()' order:
    ``apply_diff(a, diff_tables(a, b)) == b``.  Unchanged rows are the same objects."""
    services = (tables.services if not diff.services
                else sorted_services(_patched(_services_by_key(tables), diff.services).values()))
    return dataclasses.replace(
        tables, services=services,
        route_tables=_patched(tables.route_tables, diff.route_tables),
        clusters=_patched(tables.clusters, diff.clusters),
        skipped_listeners=(tables.skipped_listeners if diff.skipped_listeners is None
                           else diff.skipped_listeners))


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


# which of the builder's dicts an update of each resource type may change (update() saves
# these before it starts, to put them back when a resource is rejected)
_STATE_OF_TYPE = {
    res.CLUSTER_LOAD_ASSIGNMENT: ("_clas", "_clusters"),
    res.CLUSTER: ("_cluster_msgs", "_eds_users", "_clusters"),
    res.ROUTE_CONFIGURATION: ("_rds", "_rds_msgs", "_inline", "_services"),
    res.LISTENER: ("_listeners", "_listener_inline", "_inline", "_services"),
}


class TableBuilder:
    """Translated state of a resource set, updated one resource at a time.

    ``apply`` validates and translates before changing anything, so a bad resource raises
    TranslationError and leaves the builder as it was (what an xDS NACK needs).  ``update``
    does the same for several resources at once and also rejects removing a cluster that a
    route config with ``validate_clusters`` still names, as a full ``translate`` would.
    The builder's dicts are replaced or assigned, never mutated in place behind a value
    another dict shares, so a shallow copy of them is a snapshot (what ``update`` restores).
    """

    def __init__(self, resources: res.ResourceSet | None = None) -> None:
        self._cluster_msgs: dict[str, cluster_pb2.Cluster] = {}
        self._clas: dict[str, ParsedEndpoints] = {}  # CLA name -> parsed endpoints
        self._eds_users: dict[str, frozenset[str]] = {}  # CLA name -> clusters using it
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
            skipped_listeners=self._skipped(),
        )

    def _skipped(self) -> tuple[tuple[str, str], ...]:
        return tuple((n, t.skipped) for n, t in sorted(self._listeners.items()) if t.skipped)

    # ------------------------------------------------------------ pieces

    def _set_cluster_msg(self, c: cluster_pb2.Cluster) -> None:
        old = self._cluster_msgs.get(c.name)
        if old is not None:
            self._drop_eds_user(eds_service_name(old), c.name)
        self._cluster_msgs[c.name] = c
        eds = eds_service_name(c)
        self._eds_users[eds] = self._eds_users.get(eds, frozenset()) | {c.name}

    def _drop_eds_user(self, eds: str, cluster: str) -> None:
        users = self._eds_users.get(eds)
        if users is not None and cluster in users:
            self._eds_users[eds] = users - {cluster}

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
            self._drop_eds_user(eds_service_name(old), name)
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
        old_skipped = self._listeners.get(name, _NO_TARGETS).skipped
        if listener is None:
            self._listeners.pop(name, None)
            self._listener_inline.pop(name, None)
        else:
            self._listeners[name], self._listener_inline[name] = \
                self._translate_listener(listener)
        self._inline, self._services = self._resolve_listeners()
        skipped = (None if self._listeners.get(name, _NO_TARGETS).skipped == old_skipped
                   else self._skipped())
        return TablesDiff(services=_diff(old_services, self._services),
                          route_tables=_diff(old_routes, {**self._inline, **self._rds}),
                          skipped_listeners=skipped)

    def hold(self, type_url: str, name: str, msg: Message) -> None:
        """``msg`` equals the resource already applied under ``name``: keep its translation
        and hold this object instead, so that a state-of-the-world response repeating
        unchanged resources does not keep the previous copies alive next to the new ones."""
        held = {res.CLUSTER: self._cluster_msgs,
                res.ROUTE_CONFIGURATION: self._rds_msgs}.get(type_url)
        if held is not None and name in held and held[name] is not msg:
            held[name] = msg  # type: ignore[assignment]

    # ------------------------------------------------------------ batches

    def update(self, changes: Iterable[tuple[str, str, Message | None]]) -> TablesDiff:
        """Apply ``(type_url, name, msg or None)`` changes as one: all of them, or none.

        The first resource the translator rejects raises its TranslationError, and so does
        removing a cluster that a route config with ``validate_clusters`` still names (unless
        no cluster is left: a partial set, as in ``translate``, which is also why the first
        clusters are checked against every such route config); the builder is then exactly
        as before.  Returns the rows that differ from before the batch.
        """
        changes = list(changes)
        had_clusters = bool(self._clusters)
        saved = {attr: dict(getattr(self, attr)) for t in {c[0] for c in changes}
                 for attr in _STATE_OF_TYPE.get(t, ())}
        before_skipped = self._skipped() if any(c[0] == res.LISTENER for c in changes) else None
        touched: dict[str, set[Any]] = {"services": set(), "route_tables": set(),
                                        "clusters": set()}
        try:
            for type_url, name, msg in changes:
                d = self.apply(type_url, name, msg)
                for table, keys in touched.items():
                    part: KeyedDiff[Any, Any] = getattr(d, table)
                    keys.update(part.upserted)
                    keys.update(part.removed)
            if not had_clusters:
                self._check_still_named(None)
            else:
                gone = {n for t, n, m in changes
                        if t == res.CLUSTER and m is None and n not in self._clusters}
                if gone:
                    self._check_still_named(gone)
        except BaseException:
            for attr, value in saved.items():
                setattr(self, attr, value)
            raise
        before_rt = ({**saved.get("_inline", self._inline), **saved.get("_rds", self._rds)}
                     if touched["route_tables"] else {})
        after_rt = {**self._inline, **self._rds} if touched["route_tables"] else {}

        def changed(table: str, old: Mapping[Any, Any], new: Mapping[Any, Any]
                    ) -> KeyedDiff[Any, Any]:
            # in table order, as diff_tables lists them: services by port then VIP
            keys = sorted(touched[table], key=(lambda k: (k[1], k[0])) if table == "services"
                          else None)
            return _diff({k: old[k] for k in keys if k in old},
                         {k: new[k] for k in keys if k in new})

        skipped = None
        if before_skipped is not None and before_skipped != self._skipped():
            skipped = self._skipped()
        return TablesDiff(
            services=changed("services", saved.get("_services", self._services),
                             self._services),
            route_tables=changed("route_tables", before_rt, after_rt),
            clusters=changed("clusters", saved.get("_clusters", self._clusters),
                             self._clusters),
            skipped_listeners=skipped)

    def _check_still_named(self, gone: set[str] | None) -> None:
        """TranslationError if a route config validating its clusters names one in ``gone``
        (None: any missing one), the error a full translate gives."""
        if not self._clusters:
            return  # no clusters at all: a partial set, nothing is checked

        def check(table: RouteTable, rc: route_pb2.RouteConfiguration, default: bool) -> None:
            on = rc.validate_clusters.value if rc.HasField("validate_clusters") else default
            if on and (gone is None or referenced_clusters(table) & gone):
                _check_validate_clusters(table, rc, default, self._clusters)

        for name in sorted(self._rds):
            check(self._rds[name], self._rds_msgs[name], False)
        for lname in sorted(self._listeners):
            tables = self._listener_inline.get(lname, {})
            for rname, rc in self._listeners[lname].inline_route_configs:
                check(tables[rname], rc, True)


_NO_TARGETS = ListenerTargets((), ())


def translate(resources: res.ResourceSet) -> Tables:
    """Validate and flatten a whole ResourceSet; raise TranslationError on the first bad one."""
    return TableBuilder(resources).tables()
