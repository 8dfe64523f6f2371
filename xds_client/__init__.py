"""sockmesh's xDS client: ADS over gRPC (SotW and delta) with a network-free protocol core.

``protocol`` is the state machine, ``client`` the grpc.aio transport, ``watchers`` the
subscription API, ``node`` the Node (plain and Istio-shaped), ``resource_types`` the
type URLs and how resources refer to each other.
"""

from xds_client.client import ClientStatus, XdsClient
from xds_client.node import istio_node, istio_node_id, make_node
from xds_client.protocol import (
    AdsProtocol,
    DoesNotExist,
    Nack,
    ResourceChange,
    ResourceRejected,
    Snapshot,
    TypeStatus,
)
from xds_client.resource_types import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
)
from xds_client.watchers import Watch, WatchEvent, WatchEventKind

__all__ = [
    "CLUSTER",
    "CLUSTER_LOAD_ASSIGNMENT",
    "LISTENER",
    "ROUTE_CONFIGURATION",
    "AdsProtocol",
    "ClientStatus",
    "DoesNotExist",
    "Nack",
    "ResourceChange",
    "ResourceRejected",
    "Snapshot",
    "TypeStatus",
    "Watch",
    "WatchEvent",
    "WatchEventKind",
    "XdsClient",
    "istio_node",
    "istio_node_id",
    "make_node",
]
