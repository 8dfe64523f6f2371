"""sockmesh translator: validated Envoy resources -> the plain tables in translator.tables.

Pure: no I/O, no kernel.  ``translate`` flattens a whole ResourceSet; ``validate_resource``
is the per-resource check an xDS client turns into an ACK or a NACK.
"""

from __future__ import annotations

from google.protobuf.message import Message

from translator import resources as _res
from translator.cluster_table import eds_service_name, translate_cluster, validate_cla
from translator.errors import TranslationError, resource_label
from translator.route_table import (
    referenced_clusters,
    translate_route_config,
    validate_route_config,
)
from translator.service_table import listener_targets, services_from_listeners
from translator.tables import Cluster, RouteTable, Service, Tables

__all__ = [
    "TranslationError",
    "services_from_listeners",
    "translate",
    "translate_cluster",
    "translate_route_config",
    "validate_resource",
]


def validate_resource(type_url: str, msg: Message) -> None:
    """Validate one xDS resource on its own; raise TranslationError naming resource and field.

    Cross-resource references (a route naming a cluster not yet received) are not errors
    here: xDS delivers resources in any order.
    """
    if type_url == _res.ROUTE_CONFIGURATION:
        validate_route_config(msg)  # type: ignore[arg-type]
    elif type_url == _res.CLUSTER:
        translate_cluster(msg, None)  # type: ignore[arg-type]
    elif type_url == _res.CLUSTER_LOAD_ASSIGNMENT:
        validate_cla(msg)  # type: ignore[arg-type]
    elif type_url == _res.LISTENER:
        targets = listener_targets(msg)  # type: ignore[arg-type]
        for name, rc in targets.inline_route_configs:
            translate_route_config(rc, name)
    else:
        raise TranslationError(resource_label("resource", type_url), "type: not an xDS "
                               "resource type sockmesh consumes")


def _check_validate_clusters(table: RouteTable, explicit: bool | None, default: bool,
                             clusters: dict[str, Cluster]) -> None:
    # Envoy rejects a route config naming unknown clusters when validate_clusters is on
    # (default on for inline route configs, off for RDS).  Partial dumps carry no clusters,
    # so the check only runs when the set has some.
    if not clusters or not (default if explicit is None else explicit):
        return
    missing = sorted(referenced_clusters(table) - clusters.keys())
    if missing:
        raise TranslationError(resource_label("RouteConfiguration", table.name),
                               f"validate_clusters: unknown cluster {missing[0]!r}")


def translate(resources: _res.ResourceSet) -> Tables:
    """Validate and flatten a whole ResourceSet; raise TranslationError on the first bad one."""
    clusters: dict[str, Cluster] = {}
    for name in sorted(resources.clusters):
        c = resources.clusters[name]
        cla = resources.endpoints.get(eds_service_name(c))
        clusters[name] = translate_cluster(c, cla)
    for name in sorted(resources.endpoints):
        validate_cla(resources.endpoints[name])
    route_tables: dict[str, RouteTable] = {}
    for name in sorted(resources.route_configs):
        rc = resources.route_configs[name]
        table = translate_route_config(rc)
        explicit = rc.validate_clusters.value if rc.HasField("validate_clusters") else None
        _check_validate_clusters(table, explicit, False, clusters)
        route_tables[name] = table
    services: dict[tuple[str, int], Service] = {}
    skipped: list[tuple[str, str]] = []
    for lname in sorted(resources.listeners):
        targets = listener_targets(resources.listeners[lname])
        if targets.skipped:
            skipped.append((lname, targets.skipped))
        for svc in targets.services:
            services.setdefault((svc.vip, svc.port), svc)
        for rname, rc in targets.inline_route_configs:
            if rname in route_tables:
                continue
            table = translate_route_config(rc, rname)
            explicit = rc.validate_clusters.value if rc.HasField("validate_clusters") else None
            _check_validate_clusters(table, explicit, True, clusters)
            route_tables[rname] = table
    return Tables(
        services=tuple(sorted(services.values(), key=lambda s: (s.port, s.vip))),
        route_tables=dict(sorted(route_tables.items())),
        clusters=clusters,
        skipped_listeners=tuple(skipped),
    )
