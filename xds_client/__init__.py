"""sockmesh's xDS client: ADS over gRPC (SotW and delta) with a network-free protocol core.

``protocol`` is the state machine, ``client`` the grpc.aio transport, ``watchers`` the
subscription API, ``node`` the Node (plain and Istio-shaped), ``resource_types`` the
type URLs and how resources refer to each other.

Typical use (the node agent)::

    client = XdsClient("istiod.istio-system:15012", istio_node(ip, pod, ns),
                       ca_file=CA, token_file=TOKEN, validator=check)
    client.on_snapshot(apply)          # Snapshot: type URL -> {name: proto}, after each change
    client.on_nack(report)             # Nack: type, rejected version, kept version, reason
    client.watch(LISTENER, None, log_event)   # wildcard; route configs follow by reference
    client.watch(CLUSTER, None, log_event)    # wildcard; endpoints follow by reference
    await client.start()
    ...
    client.status                      # ClientStatus: connected, versions, ACK/NACK counts

``check(type_url, resources_by_name)`` raising rejects the whole response (NACK with its
message); snapshots are delivered clusters and endpoints first and only once every
referenced route config and EDS cluster's endpoints arrived (or are known not to exist).
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
