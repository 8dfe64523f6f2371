"""The four xDS resource types the client speaks, and how they refer to each other.

Type URLs are derived from the generated descriptors (never spelled by hand), and the
module holds the one decoder table the protocol core uses: type URL -> message class.
Everything here is imported once at start-up so decoding thousands of resources costs
one dict lookup and one ``FromString`` each.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

TYPE_PREFIX = "type.googleapis.com/"


def type_url_of(msg_class: type[Message]) -> str:
    """The xDS type URL of a generated message class."""
    return TYPE_PREFIX + msg_class.DESCRIPTOR.full_name


LISTENER = type_url_of(listener_pb2.Listener)
ROUTE_CONFIGURATION = type_url_of(route_pb2.RouteConfiguration)
CLUSTER = type_url_of(cluster_pb2.Cluster)
CLUSTER_LOAD_ASSIGNMENT = type_url_of(endpoint_pb2.ClusterLoadAssignment)
# SotW servers may wrap each resource in a discovery Resource (TTL, named resources)
RESOURCE_WRAPPER = type_url_of(discovery_pb2.Resource)
HTTP_CONNECTION_MANAGER = type_url_of(hcm_pb2.HttpConnectionManager)

MESSAGE_CLASSES: dict[str, type[Message]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE_CONFIGURATION: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    CLUSTER_LOAD_ASSIGNMENT: endpoint_pb2.ClusterLoadAssignment,
}

# Make-before-break: what a data plane must apply first comes first.
APPLY_ORDER: tuple[str, ...] = (CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION)

# Envoy always subscribes to these by wildcard; a SotW response is their complete state.
WILDCARD_TYPES: frozenset[str] = frozenset({LISTENER, CLUSTER})

SHORT_NAMES: dict[str, str] = {
    LISTENER: "LDS",
    ROUTE_CONFIGURATION: "RDS",
    CLUSTER: "CDS",
    CLUSTER_LOAD_ASSIGNMENT: "EDS",
}


def resource_name(msg: Message) -> str:
    """The xDS name of a resource (a ClusterLoadAssignment is named by its cluster_name)."""
    if isinstance(msg, endpoint_pb2.ClusterLoadAssignment):
        return msg.cluster_name
    return msg.name  # type: ignore[attr-defined, no-any-return]


def _hcm_route_name(filter_msg: listener_pb2.Filter) -> str | None:
    typed = filter_msg.typed_config
    if typed.type_url != HTTP_CONNECTION_MANAGER:
        return None
    hcm = hcm_pb2.HttpConnectionManager.FromString(typed.value)
    if hcm.WhichOneof("route_specifier") != "rds":
        return None
    return hcm.rds.route_config_name or None


def route_names_of(listener: listener_pb2.Listener) -> set[str]:
    """RDS names a listener's HTTP connection managers refer to (what LDS makes us fetch)."""
    names: set[str] = set()
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for f in chain.filters:
            name = _hcm_route_name(f)
            if name:
                names.add(name)
    if listener.HasField("api_listener"):
        api = listener.api_listener.api_listener
        if api.type_url == HTTP_CONNECTION_MANAGER:
            hcm = hcm_pb2.HttpConnectionManager.FromString(api.value)
            if hcm.WhichOneof("route_specifier") == "rds" and hcm.rds.route_config_name:
                names.add(hcm.rds.route_config_name)
    return names


def eds_name_of(cluster: cluster_pb2.Cluster) -> str | None:
    """The EDS service name of an EDS cluster (what CDS makes us fetch), else None."""
    if cluster.WhichOneof("cluster_discovery_type") != "type":
        return None
    if cluster.type != cluster_pb2.Cluster.EDS:
        return None
    return cluster.eds_cluster_config.service_name or cluster.name
