"""The Node a client presents to its control server, plain and Istio-shaped.

istiod identifies a proxy by its node id ``TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local``
and reads the rest of what it needs (namespace, IPs, labels, cluster and mesh ids,
version) from node metadata, the way istio-agent fills it from the pod's environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

USER_AGENT = "sockmesh"
USER_AGENT_VERSION = "0.1.0"
# The Istio release whose xDS shapes sockmesh is built against; istiod gates features on it.
DEFAULT_ISTIO_VERSION = "1.29.0"


def make_node(
    node_id: str,
    cluster: str = "",
    metadata: Mapping[str, Any] | None = None,
    *,
    locality: Mapping[str, str] | None = None,
) -> base_pb2.Node:
    """A Node with sockmesh's user agent; ``metadata`` must be JSON-shaped."""
    node = base_pb2.Node(
        id=node_id,
        cluster=cluster,
        user_agent_name=USER_AGENT,
        user_agent_version=USER_AGENT_VERSION,
    )
    if metadata:
        md = struct_pb2.Struct()
        md.update(dict(metadata))
        node.metadata.CopyFrom(md)
    if locality:
        node.locality.region = locality.get("region", "")
        node.locality.zone = locality.get("zone", "")
        node.locality.sub_zone = locality.get("sub_zone", "")
    return node


def istio_node_id(ip: str, pod: str, namespace: str, *, proxy_type: str = "sidecar",
                  dns_domain: str | None = None) -> str:
    """``sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local``."""
    domain = dns_domain or f"{namespace}.svc.cluster.local"
    return f"{proxy_type}~{ip}~{pod}.{namespace}~{domain}"


def istio_node(
    ip: str,
    pod: str,
    namespace: str,
    *,
    labels: Mapping[str, str] | None = None,
    instance_ips: Iterable[str] | None = None,
    cluster_id: str = "Kubernetes",
    mesh_id: str = "cluster.local",
    istio_version: str = DEFAULT_ISTIO_VERSION,
    service_account: str | None = None,
    workload_name: str | None = None,
    pod_ports: Iterable[Mapping[str, Any]] | None = None,
    proxy_type: str = "sidecar",
    extra_metadata: Mapping[str, Any] | None = None,
) -> base_pb2.Node:
    """A Node as istio-agent would present it for pod ``pod`` in ``namespace``.

    ``pod_ports`` are container ports as in the pod spec
    (``{"name": "http", "containerPort": 8080, "protocol": "TCP"}``); istiod expects them as a
    JSON string.  The node's cluster is ``WORKLOAD.NAMESPACE`` like istio-agent's default.
    """
    labels = dict(labels or {})
    workload = workload_name or labels.get("app") or pod
    metadata: dict[str, Any] = {
        "NAMESPACE": namespace,
        "NAME": pod,
        "INSTANCE_IPS": ",".join(instance_ips or [ip]),
        "ISTIO_VERSION": istio_version,
        "CLUSTER_ID": cluster_id,
        "MESH_ID": mesh_id,
        "LABELS": labels,
        "WORKLOAD_NAME": workload,
        "INTERCEPTION_MODE": "REDIRECT",
        "OWNER": f"kubernetes://apis/v1/namespaces/{namespace}/pods/{pod}",
    }
    if service_account:
        metadata["SERVICE_ACCOUNT"] = service_account
    if pod_ports is not None:
        metadata["POD_PORTS"] = json.dumps(list(pod_ports), separators=(",", ":"))
    if extra_metadata:
        metadata.update(extra_metadata)
    return make_node(
        istio_node_id(ip, pod, namespace, proxy_type=proxy_type),
        cluster=f"{workload}.{namespace}",
        metadata=metadata,
    )
