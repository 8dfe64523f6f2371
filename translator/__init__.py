"""sockmesh translator: validated Envoy resources -> the plain tables in translator.tables.

Pure: no I/O, no kernel.  ``translate`` flattens a whole ResourceSet; ``validate_resource``
is the per-resource check an xDS client turns into an ACK or a NACK.
"""

from __future__ import annotations

from google.protobuf.message import Message

from translator import resources as _res
from translator.cluster_table import translate_cluster, validate_cla
from translator.errors import TranslationError, resource_label
from translator.route_table import translate_route_config, validate_route_config
from translator.service_table import listener_targets, services_from_listeners
from translator.table_builder import (
    TableBuilder,
    TablesDiff,
    apply_diff,
    diff_tables,
    translate,
)

__all__ = [
    "TableBuilder",
    "TablesDiff",
    "TranslationError",
    "apply_diff",
    "diff_tables",
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
