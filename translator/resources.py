"""Envoy resources as protos: the four xDS types, config-dump parsing, unknown extensions.

The translator consumes a :class:`ResourceSet` whatever its source (ADS, an admin
``/config_dump``, ``istioctl proxy-config all -o json``, resource files).  Parsing is pure:
callers hand in already-decoded JSON/YAML objects.

Istio dumps carry extension payloads whose protos are not public (``istio.metadata_exchange``,
``io.istio.http.peer_metadata.Config``).  They are kept, not dropped: an unknown ``@type``
payload is re-encoded as an ``xds.type.v3.TypedStruct`` holding the original type URL and the
original fields, so that the resource still parses, round-trips to JSON and can be served.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import envoy.admin.v3.config_dump_pb2
import envoy.extensions.filters.http.router.v3.router_pb2
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2
import envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2  # noqa: F401

# Importing the generated modules registers their descriptors in the default pool.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format, message, symbol_database
from google.protobuf.message import Message
from xds.type.v3 import typed_struct_pb2

TYPE_PREFIX = "type.googleapis.com/"


def type_url_of(msg_class: type[Message]) -> str:
    """The xDS type URL of a generated message class."""
    return TYPE_PREFIX + msg_class.DESCRIPTOR.full_name


LISTENER = type_url_of(listener_pb2.Listener)
ROUTE_CONFIGURATION = type_url_of(route_pb2.RouteConfiguration)
CLUSTER = type_url_of(cluster_pb2.Cluster)
CLUSTER_LOAD_ASSIGNMENT = type_url_of(endpoint_pb2.ClusterLoadAssignment)
TYPED_STRUCT = type_url_of(typed_struct_pb2.TypedStruct)

# type URL -> message class, in the order a make-before-break apply wants them
RESOURCE_TYPES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    CLUSTER_LOAD_ASSIGNMENT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE_CONFIGURATION: route_pb2.RouteConfiguration,
}


class ResourceError(ValueError):
    """A resource that cannot be parsed; the message names the resource and the field."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where = where
        self.detail = detail


def resource_name(msg: Message) -> str:
    """The xDS name of a resource (ClusterLoadAssignment names itself by cluster_name)."""
    if isinstance(msg, endpoint_pb2.ClusterLoadAssignment):
        return msg.cluster_name
    return msg.name


@dataclass
class ResourceSet:
    """Named resources of the four xDS types."""

    listeners: dict[str, listener_pb2.Listener] = field(default_factory=dict)
    route_configs: dict[str, route_pb2.RouteConfiguration] = field(default_factory=dict)
    clusters: dict[str, cluster_pb2.Cluster] = field(default_factory=dict)
    endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment] = field(default_factory=dict)
    # type URLs of extension payloads kept as TypedStruct because their protos are unknown
    unknown_extensions: set[str] = field(default_factory=set)

    def by_type(self, type_url: str) -> dict[str, Any]:
        """The mapping that holds resources of ``type_url``."""
        return {
            LISTENER: self.listeners,
            ROUTE_CONFIGURATION: self.route_configs,
            CLUSTER: self.clusters,
            CLUSTER_LOAD_ASSIGNMENT: self.endpoints,
        }[type_url]

    def add(self, msg: Message, where: str = "") -> None:
        """Add one resource; a second resource of the same type and name is an error."""
        type_url = type_url_of(type(msg))
        if type_url not in RESOURCE_TYPES:
            raise ResourceError(where or type_url, f"not an xDS resource type: {type_url}")
        name = resource_name(msg)
        if not name:
            raise ResourceError(where or type_url, "resource has no name")
        table = self.by_type(type_url)
        if name in table and table[name] != msg:
            raise ResourceError(where or name, f"duplicate {type(msg).__name__} name {name!r}")
        table[name] = msg

    def items(self) -> Iterator[tuple[str, str, Message]]:
        """(type_url, name, message) for every resource, clusters and endpoints first."""
        for type_url in RESOURCE_TYPES:
            for name, msg in sorted(self.by_type(type_url).items()):
                yield type_url, name, msg

    def __len__(self) -> int:
        return sum(len(self.by_type(t)) for t in RESOURCE_TYPES)


_imported_packages: set[str] = set()


def _import_proto_package(package: str) -> None:
    """Import every generated ``*_pb2`` module of a proto package (registers its types)."""
    if package in _imported_packages:
        return
    _imported_packages.add(package)
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
        if info.name.endswith("_pb2"):
            try:
                importlib.import_module(f"{package}.{info.name}")
            except ImportError:
                continue


def known_type(type_url: str) -> bool:
    """Whether the installed protos know the message ``type_url`` names.

    ``type_url`` is an ``Any`` type URL (``type.googleapis.com/pkg.Msg``) or a bare full
    message name.  On first sight of an unknown name the ``*_pb2`` modules of its package
    are imported (extension protos are not loaded up front), then the pool is asked again.
    """
    full_name = type_url.rsplit("/", 1)[-1]
    pool = symbol_database.Default().pool
    try:
        pool.FindMessageTypeByName(full_name)
        return True
    except KeyError:
        pass
    _import_proto_package(full_name.rsplit(".", 1)[0])
    try:
        pool.FindMessageTypeByName(full_name)
    except KeyError:
        return False
    return True


def _keep_unknown_extensions(obj: Any, unknown: set[str]) -> Any:
    """Rewrite ``{"@type": <unknown>, ...}`` objects as TypedStruct so parsing succeeds."""
    if isinstance(obj, list):
        return [_keep_unknown_extensions(v, unknown) for v in obj]
    if not isinstance(obj, dict):
        return obj
    type_url = obj.get("@type")
    if isinstance(type_url, str) and not known_type(type_url):
        unknown.add(type_url)
        payload = {k: v for k, v in obj.items() if k != "@type"}
        return {"@type": TYPED_STRUCT, "type_url": type_url, "value": payload}
    return {k: _keep_unknown_extensions(v, unknown) for k, v in obj.items()}


def parse_message(obj: Mapping[str, Any], msg_class: type[Message], where: str,
                  unknown: set[str] | None = None) -> Message:
    """Parse JSON-shaped ``obj`` (proto3 JSON, snake_case or camelCase) into ``msg_class``.

    Unknown fields are an error (they mean a typo or a newer API than ours); unknown
    extension payloads are kept as TypedStruct.
    """
    sink: set[str] = set() if unknown is None else unknown
    cleaned = _keep_unknown_extensions(dict(obj), sink)
    cleaned.pop("@type", None)
    msg = msg_class()
    try:
        json_format.ParseDict(cleaned, msg)
    except (json_format.ParseError, message.DecodeError, TypeError, ValueError) as exc:
        raise ResourceError(where, str(exc)) from None
    return msg


def parse_resource(obj: Mapping[str, Any], where: str = "",
                   unknown: set[str] | None = None) -> Message:
    """Parse one resource object carrying its ``@type`` (a Listener, Cluster, ...)."""
    if not isinstance(obj, Mapping):
        raise ResourceError(where or "resource", f"expected an object, got {type(obj).__name__}")
    type_url = obj.get("@type")
    if not isinstance(type_url, str):
        raise ResourceError(where or "resource", "missing '@type'")
    msg_class = RESOURCE_TYPES.get(type_url)
    if msg_class is None:
        raise ResourceError(where or "resource", f"unsupported resource type {type_url!r}")
    label = where or type_url.rsplit(".", 1)[-1]
    name = obj.get("name") or obj.get("cluster_name") or obj.get("clusterName")
    if name:
        kind_and_name = f"{msg_class.DESCRIPTOR.name} {name!r}"
        label = f"{where} {kind_and_name}" if where else kind_and_name
    return parse_message(obj, msg_class, label, unknown)


# admin dump type -> [(list field, nested key holding the resource)]
_DUMP_SECTIONS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "envoy.admin.v3.ListenersConfigDump": [
        ("static_listeners", ("listener",)),
        ("dynamic_listeners", ("active_state", "listener")),
    ],
    "envoy.admin.v3.RoutesConfigDump": [
        ("static_route_configs", ("route_config",)),
        ("dynamic_route_configs", ("route_config",)),
    ],
    "envoy.admin.v3.ClustersConfigDump": [
        ("static_clusters", ("cluster",)),
        ("dynamic_active_clusters", ("cluster",)),
    ],
    "envoy.admin.v3.EndpointsConfigDump": [
        ("static_endpoint_configs", ("endpoint_config",)),
        ("dynamic_endpoint_configs", ("endpoint_config",)),
    ],
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _get(obj: Mapping[str, Any], key: str) -> Any:
    return obj.get(key, obj.get(_camel(key)))


def parse_config_dump(dump: Mapping[str, Any], where: str = "config dump") -> ResourceSet:
    """Parse an Envoy admin ``/config_dump`` (or ``istioctl proxy-config all -o json``).

    Partial dumps (only routes, only clusters) are fine.  Sections other than listeners,
    routes, clusters and endpoints (bootstrap, secrets, scoped routes) are ignored.
    Route configurations without a name (Envoy's inline static ones) are skipped: nothing
    can refer to them over RDS.  ``static_route_configs`` are copies of listeners' inline
    route configs, which may share a name: the first of a name is kept (the listeners carry
    their own copies).  Envoy writes an unset locality weight as 0 in its endpoint dumps
    (a value its own xDS validation rejects), so such zeros are read as unset.
    """
    if not isinstance(dump, Mapping) or not isinstance(dump.get("configs"), list):
        raise ResourceError(where, "not a config dump: expected an object with a 'configs' list")
    out = ResourceSet()
    for i, section in enumerate(dump["configs"]):
        if not isinstance(section, Mapping):
            raise ResourceError(f"{where} configs[{i}]", "expected an object")
        dump_type = str(section.get("@type", "")).rsplit("/", 1)[-1]
        for list_field, path in _DUMP_SECTIONS.get(dump_type, []):
            entries = _get(section, list_field) or []
            for j, entry in enumerate(entries):
                obj: Any = entry
                for key in path:
                    obj = _get(obj, key) if isinstance(obj, Mapping) else None
                if obj is None:
                    continue  # e.g. a listener only in warming/draining state
                loc = f"{where} configs[{i}].{list_field}[{j}]"
                msg = parse_resource(obj, loc, out.unknown_extensions)
                if isinstance(msg, route_pb2.RouteConfiguration) and (
                        not msg.name or (list_field == "static_route_configs"
                                         and msg.name in out.route_configs)):
                    continue
                if isinstance(msg, endpoint_pb2.ClusterLoadAssignment):
                    for lle in msg.endpoints:
                        if lle.HasField("load_balancing_weight") and \
                                lle.load_balancing_weight.value == 0:
                            lle.ClearField("load_balancing_weight")
                out.add(msg, loc)
    return out


def to_json(msg: Message) -> dict[str, Any]:
    """Proto -> JSON object with ``@type``, TypedStruct stand-ins turned back into originals."""
    obj = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    obj = {"@type": type_url_of(type(msg)), **obj}
    return _restore_unknown_extensions(obj)


def _restore_unknown_extensions(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_restore_unknown_extensions(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if obj.get("@type") == TYPED_STRUCT and "type_url" in obj and not known_type(obj["type_url"]):
        return {"@type": obj["type_url"], **(obj.get("value") or {})}
    return {k: _restore_unknown_extensions(v) for k, v in obj.items()}


def iter_resources(objs: Iterable[Mapping[str, Any]], where: str) -> Iterator[Message]:
    """Parse a sequence of ``@type``-carrying resource objects."""
    for i, obj in enumerate(objs):
        yield parse_resource(obj, f"{where}[{i}]")
