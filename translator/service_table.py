"""Listeners -> the service table (destination VIP:port -> L7 route table or L4 cluster).

Shapes handled (see Istio's outbound listener layout):

* ``0.0.0.0_PORT`` outbound listeners whose HTTP filter chain names an RDS config ->
  ``Service("0.0.0.0", PORT, HTTP, route_table=...)`` (any destination on that port);
* per-VIP listeners ``10.x.y.z_PORT`` with ``tcp_proxy`` -> ``Service(vip, PORT, TCP)``;
* filter chains selected by ``filter_chain_match.prefix_ranges`` (``/32`` -> that VIP,
  ``/0`` -> the listener's address) and ``destination_port``;
* plain Envoy listeners (an address and an HCM with RDS or an inline route_config);
* a ``tcp_proxy`` to Istio's ``BlackHoleCluster`` -> a BLACKHOLE entry (connect refused);
* the original-destination dispatcher (``virtualOutbound``, use_original_dst): what Envoy
  does with destinations no other listener takes is its catch-all chain (the one without
  match criteria, else ``default_filter_chain``).  ``BlackHoleCluster`` there (Istio's
  outboundTrafficPolicy REGISTRY_ONLY) -> ``Service("0.0.0.0", ANY_PORT, BLACKHOLE)``;
  anything else (``PassthroughCluster``: ALLOW_ANY) leaves such connects alone, so the
  listener is skipped with that reason.  Its chains with match criteria (Istio's
  ``destination_port: 15001`` loop guard) are ignored.

Skipped with a reason: inbound listeners (``virtualInbound``, traffic_direction INBOUND),
internal/API/UDP listeners, non-IPv4 addresses, TLS-only or SNI chains, chains matching on
the source.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from translator.errors import TranslationError, resource_label
from translator.proto_validate import validate_message
from translator.tables import (
    ANY_PORT,
    BLACKHOLE_CLUSTER,
    WILDCARD_VIP,
    Service,
    ServiceKind,
)

_HCM = hcm_pb2.HttpConnectionManager
_TCP_PROXY = tcp_proxy_pb2.TcpProxy


@dataclass(frozen=True)
class ListenerTargets:
    """What one listener contributes: services, inline route configs, or why nothing."""

    services: tuple[Service, ...]
    inline_route_configs: tuple[tuple[str, route_pb2.RouteConfiguration], ...]
    skipped: str | None = None


def _unpack(filt: listener_components_pb2.Filter, cls: type, where: str, field: str) -> Any:
    msg = cls()
    if not filt.typed_config.Unpack(msg):
        raise TranslationError(where, f"{field}.typed_config: cannot decode "
                               f"{filt.typed_config.type_url}")
    return msg


# HttpConnectionManager fields that carry no request-handling behaviour of their own
_HCM_HANDLED = frozenset({"stat_prefix", "rds", "route_config", "codec_type", "http_filters"})
_TCP_HANDLED = frozenset({"stat_prefix", "cluster", "weighted_clusters"})
_ROUTER_FILTER = "envoy.extensions.filters.http.router.v3.Router"


def _hcm_not_enforced(hcm: Any) -> tuple[str, ...]:
    out = [f"hcm.{f.name}" for f, _ in hcm.ListFields() if f.name not in _HCM_HANDLED]
    for hf in hcm.http_filters:
        type_name = hf.typed_config.type_url.rsplit("/", 1)[-1]
        if type_name != _ROUTER_FILTER and hf.name != "envoy.filters.http.router":
            out.append(f"http_filters.{hf.name or type_name}")
    return tuple(out)


_Target = tuple[ServiceKind, str, "route_pb2.RouteConfiguration | None", tuple[str, ...]]


def _chain_target(chain: listener_components_pb2.FilterChain, listener_name: str, where: str,
                  field: str) -> _Target | None:
    """(kind, route table or cluster name, inline route config, not enforced) of a chain."""
    for i, filt in enumerate(chain.filters):
        ffield = f"{field}.filters[{i}]"
        if filt.typed_config.Is(_HCM.DESCRIPTOR):
            hcm = _unpack(filt, _HCM, where, ffield)
            validate_message(hcm, where, f"{ffield}.typed_config")
            which = hcm.WhichOneof("route_specifier")
            skipped = _hcm_not_enforced(hcm)
            if which == "rds":
                if not hcm.rds.route_config_name:
                    raise TranslationError(where, f"{ffield}.typed_config.rds.route_config_name:"
                                           " is required")
                return ServiceKind.HTTP, hcm.rds.route_config_name, None, skipped
            if which == "route_config":
                name = hcm.route_config.name or f"{listener_name}/inline"
                return ServiceKind.HTTP, name, hcm.route_config, skipped
            return None  # scoped_routes: not supported, skip the chain
        if filt.typed_config.Is(_TCP_PROXY.DESCRIPTOR):
            tp = _unpack(filt, _TCP_PROXY, where, ffield)
            validate_message(tp, where, f"{ffield}.typed_config")
            tcp_skipped = tuple(f"tcp_proxy.{f.name}" for f, _ in tp.ListFields()
                                if f.name not in _TCP_HANDLED)
            if tp.WhichOneof("cluster_specifier") == "cluster":
                kind = ServiceKind.BLACKHOLE if tp.cluster == BLACKHOLE_CLUSTER else \
                    ServiceKind.TCP
                return kind, tp.cluster, None, tcp_skipped
            if tp.WhichOneof("cluster_specifier") == "weighted_clusters" and \
                    tp.weighted_clusters.clusters:
                # L4 weighted splits go to the heaviest cluster; the split is not enforced
                best = max(tp.weighted_clusters.clusters, key=lambda c: c.weight)
                return ServiceKind.TCP, best.name, None, (*tcp_skipped,
                                                          "tcp_proxy.weighted_clusters")
            raise TranslationError(where, f"{ffield}.typed_config: tcp_proxy needs a cluster")
    return None


def _chain_keys(chain: listener_components_pb2.FilterChain, vip: str, port: int,
                where: str, field: str) -> list[tuple[str, int]] | None:
    """The (vip, port) keys a chain serves for plaintext HTTP/1.1 or TCP, None if it can't."""
    m = chain.filter_chain_match
    if m.transport_protocol not in ("", "raw_buffer") or m.server_names:
        return None
    if m.application_protocols and not {"http/1.1", "http/1.0"} & set(m.application_protocols):
        return None
    if m.source_prefix_ranges or m.direct_source_prefix_ranges or m.source_ports:
        return None
    if m.HasField("destination_port"):
        port = m.destination_port.value
        if not 0 < port <= 65535:
            raise TranslationError(where, f"{field}.filter_chain_match.destination_port: {port} "
                                   "is not in 1..65535")
    if not m.prefix_ranges:
        return [(vip, port)]
    keys = []
    for i, cidr in enumerate(m.prefix_ranges):
        plen = cidr.prefix_len.value if cidr.HasField("prefix_len") else None
        try:
            addr = ipaddress.ip_address(cidr.address_prefix)
        except ValueError:
            raise TranslationError(where, f"{field}.filter_chain_match.prefix_ranges[{i}]."
                                   f"address_prefix: {cidr.address_prefix!r} is not an IP "
                                   "address") from None
        if addr.version != 4:
            continue
        if plen is None or plen == 32:
            keys.append((str(addr), port))
        elif plen == 0:
            keys.append((vip, port))
        # other prefix lengths cannot be expressed as VIP:port entries
    return keys or None


def listener_targets(listener: listener_pb2.Listener) -> ListenerTargets:
    """Validate a Listener and return what it contributes to the service table."""
    name = listener.name
    where = resource_label("Listener", name)
    validate_message(listener, where)
    if not name:
        raise TranslationError(where, "name: is required")
    if listener.HasField("api_listener"):
        return ListenerTargets((), (), "API listener")
    if listener.HasField("internal_listener"):
        return ListenerTargets((), (), "internal listener")
    if not listener.HasField("address"):
        raise TranslationError(where, "address: is required")
    if listener.address.WhichOneof("address") != "socket_address":
        return ListenerTargets((), (), "not a socket address listener")
    sa = listener.address.socket_address
    if sa.protocol != 0:
        return ListenerTargets((), (), "UDP listener")
    if sa.WhichOneof("port_specifier") != "port_value" or sa.port_value > 65535:
        raise TranslationError(where, f"address.socket_address.port_value: {sa.port_value} is "
                               "not in 0..65535")
    try:
        addr = ipaddress.ip_address(sa.address)
    except ValueError:
        raise TranslationError(where, f"address.socket_address.address: {sa.address!r} is not "
                               "an IP address") from None
    if listener.traffic_direction == base_pb2.INBOUND or name == "virtualInbound":
        return ListenerTargets((), (), "inbound listener (traffic to this node's workloads)")
    if listener.use_original_dst.value:
        return _original_dst_targets(listener, where)
    if addr.version != 4:
        return ListenerTargets((), (), f"non-IPv4 address {sa.address}")
    if sa.port_value == 0:
        return ListenerTargets((), (), "port 0 (an ephemeral port, no fixed destination)")
    vip = str(addr)
    chosen: dict[tuple[str, int], tuple[bool, Service]] = {}
    inline: dict[str, route_pb2.RouteConfiguration] = {}
    chains = [(f"filter_chains[{i}]", c) for i, c in enumerate(listener.filter_chains)]
    if listener.HasField("default_filter_chain"):
        chains.append(("default_filter_chain", listener.default_filter_chain))
    for field, chain in chains:
        keys = _chain_keys(chain, vip, sa.port_value, where, field)
        if keys is None:
            continue
        target = _chain_target(chain, name, where, field)
        if target is None:
            continue
        kind, ref, inline_rc, skipped = target
        if inline_rc is not None:
            inline[ref] = inline_rc
        # a chain that insists on HTTP/1.1 (Istio's HTTP chain) beats a plain TCP chain
        wants_http = "http/1.1" in chain.filter_chain_match.application_protocols
        for key in keys:
            svc = Service(
                vip=key[0], port=key[1], kind=kind,
                route_table=ref if kind is ServiceKind.HTTP else None,
                cluster=ref if kind is not ServiceKind.HTTP else None,
                listener=name,
                not_enforced=skipped,
            )
            prev = chosen.get(key)
            if prev is None or (wants_http and not prev[0]):
                chosen[key] = (wants_http, svc)
    if not chosen:
        return ListenerTargets((), tuple(inline.items()),
                               "no plaintext filter chain with an HTTP connection manager or "
                               "tcp_proxy")
    services = tuple(svc for _, svc in chosen.values())
    return ListenerTargets(services, tuple(sorted(inline.items())))


def _original_dst_targets(listener: listener_pb2.Listener, where: str) -> ListenerTargets:
    """An original-destination dispatcher: its catch-all chain decides what happens to
    destinations no other listener takes (Envoy picks the chain without match criteria,
    else ``default_filter_chain``)."""
    reason = "original-destination dispatcher (use_original_dst)"
    chains = [(f"filter_chains[{i}]", c) for i, c in enumerate(listener.filter_chains)
              if not c.filter_chain_match.ListFields()]
    if listener.HasField("default_filter_chain"):
        chains.append(("default_filter_chain", listener.default_filter_chain))
    if not chains:
        return ListenerTargets((), (), f"{reason} without a catch-all chain")
    field, chain = chains[0]
    target = _chain_target(chain, listener.name, where, field)
    if target is None or target[0] is not ServiceKind.BLACKHOLE:
        dest = f" ({target[1]})" if target is not None else ""
        return ListenerTargets((), (), f"{reason}: connects that match no service are left "
                               f"alone{dest}")
    svc = Service(vip=WILDCARD_VIP, port=ANY_PORT, kind=ServiceKind.BLACKHOLE,
                  cluster=BLACKHOLE_CLUSTER, listener=listener.name, not_enforced=target[3])
    return ListenerTargets((svc,), ())


def inline_table_names(
        inline: Mapping[str, Iterable[tuple[str, route_pb2.RouteConfiguration]]],
        rds: Mapping[str, route_pb2.RouteConfiguration]) -> dict[str, dict[str, str]]:
    """Listener -> {inline route config name -> route table name}.

    Inline route configs of different listeners may share a name (Envoy keeps them apart).
    Taking listeners in name order, an inline config keeps its name unless an RDS config or
    an earlier inline config already has that name with other content; then its table is
    named ``<name>@<listener>``.
    """
    taken: dict[str, route_pb2.RouteConfiguration] = {}
    out: dict[str, dict[str, str]] = {}
    for lname in sorted(inline):
        names: dict[str, str] = {}
        for rname, rc in inline[lname]:
            other = rds.get(rname, taken.get(rname))
            final = rname if other is None or other == rc else f"{rname}@{lname}"
            taken.setdefault(final, rc)
            names[rname] = final
        out[lname] = names
    return out


def with_table_names(targets: ListenerTargets, names: Mapping[str, str]) -> ListenerTargets:
    """``targets`` with its HTTP services pointing at renamed inline route tables."""
    if all(k == v for k, v in names.items()):
        return targets
    services = tuple(
        dataclasses.replace(s, route_table=names[s.route_table])
        if s.route_table is not None and s.route_table in names else s
        for s in targets.services)
    return dataclasses.replace(targets, services=services)


def merge_services(targets: Mapping[str, ListenerTargets]) -> dict[tuple[str, int], Service]:
    """(vip, port) -> Service over listeners taken in name order; the first one wins a key."""
    out: dict[tuple[str, int], Service] = {}
    for _, t in sorted(targets.items()):
        for svc in t.services:
            out.setdefault((svc.vip, svc.port), svc)
    return out


def sorted_services(services: Iterable[Service]) -> tuple[Service, ...]:
    """Services in table order: by port, then VIP."""
    return tuple(sorted(services, key=lambda s: (s.port, s.vip)))


def services_from_listeners(listeners: Iterable[listener_pb2.Listener]) -> tuple[Service, ...]:
    """The service table of ``listeners``, sorted by (port, vip); first listener wins a key."""
    targets = {lst.name: listener_targets(lst) for lst in listeners}
    names = inline_table_names({n: t.inline_route_configs for n, t in targets.items()}, {})
    renamed = {n: with_table_names(t, names[n]) for n, t in targets.items()}
    return sorted_services(merge_services(renamed).values())
