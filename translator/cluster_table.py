"""Cluster (+ ClusterLoadAssignment) -> tables.Cluster: LB policy and endpoints."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf.message import Message

from translator.errors import TranslationError, resource_label
from translator.proto_validate import validate_message
from translator.tables import Cluster, Endpoint, Health, LbPolicy

_C = cluster_pb2.Cluster
# lb_policy enum value -> (policy we run, whether it is exact)
_LB_POLICIES: dict[int, tuple[LbPolicy, bool]] = {
    _C.ROUND_ROBIN: (LbPolicy.ROUND_ROBIN, True),
    _C.LEAST_REQUEST: (LbPolicy.LEAST_REQUEST, True),
    _C.RANDOM: (LbPolicy.RANDOM, True),
    # hash-based policies spread keys pseudo-randomly; RANDOM is the nearest we run
    _C.RING_HASH: (LbPolicy.RANDOM, False),
    _C.MAGLEV: (LbPolicy.RANDOM, False),
    _C.CLUSTER_PROVIDED: (LbPolicy.ROUND_ROBIN, False),
}
# load_balancing_policy typed_config message name -> policy
_LB_EXTENSIONS: dict[str, tuple[LbPolicy, bool]] = {
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin":
        (LbPolicy.ROUND_ROBIN, True),
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest":
        (LbPolicy.LEAST_REQUEST, True),
    "envoy.extensions.load_balancing_policies.random.v3.Random": (LbPolicy.RANDOM, True),
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash": (LbPolicy.RANDOM, False),
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev": (LbPolicy.RANDOM, False),
}
_DISCOVERY_TYPES = {_C.STATIC: "STATIC", _C.STRICT_DNS: "STRICT_DNS",
                    _C.LOGICAL_DNS: "LOGICAL_DNS", _C.EDS: "EDS", _C.ORIGINAL_DST: "ORIGINAL_DST"}
_HEALTH = {0: Health.UNKNOWN, 1: Health.HEALTHY, 2: Health.UNHEALTHY, 3: Health.DRAINING,
           4: Health.TIMEOUT, 5: Health.DEGRADED}
_HANDLED = frozenset({
    "name", "alt_stat_name", "metadata", "type", "eds_cluster_config", "lb_policy",
    "load_assignment", "least_request_lb_config", "load_balancing_policy",
})


def eds_service_name(c: cluster_pb2.Cluster) -> str:
    """The ClusterLoadAssignment name an EDS cluster subscribes to."""
    return c.eds_cluster_config.service_name or c.name


def discovery_type(c: cluster_pb2.Cluster) -> str:
    """STATIC | STRICT_DNS | LOGICAL_DNS | EDS | ORIGINAL_DST | the custom cluster_type name."""
    if c.WhichOneof("cluster_discovery_type") == "cluster_type":
        return c.cluster_type.name or "CUSTOM"
    return _DISCOVERY_TYPES.get(c.type, f"UNKNOWN({c.type})")


def _lb_policy(c: cluster_pb2.Cluster, where: str) -> tuple[LbPolicy, bool]:
    if c.HasField("load_balancing_policy"):
        # Envoy uses the first policy whose extension it knows
        for i, p in enumerate(c.load_balancing_policy.policies):
            type_name = p.typed_config.type_url.rsplit("/", 1)[-1]
            if type_name in _LB_EXTENSIONS:
                return _LB_EXTENSIONS[type_name]
            if not type_name:
                raise TranslationError(where, f"load_balancing_policy.policies[{i}]."
                                       "typed_config: is required")
        return LbPolicy.ROUND_ROBIN, False
    policy = _LB_POLICIES.get(c.lb_policy)
    if policy is None:
        raise TranslationError(where, f"lb_policy: unknown or unsupported value {c.lb_policy}")
    return policy


def _ipv4(text: str) -> str | None:
    """Dotted-quad IPv4 (no leading zeros, like inet_pton), or None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    for p in parts:
        if not p.isdigit() or not p.isascii() or len(p) > 3 or (len(p) > 1 and p[0] == "0") \
                or int(p) > 255:
            return None
    return text


def _address(sa: Message, where: str, field: str, dns_ok: bool) -> tuple[str, int] | str | None:
    """socket_address -> (IPv4, port); a reason to skip a valid endpoint the datapath cannot
    reach (IPv6, port 0); None for a DNS name in a DNS cluster.  Malformed input raises."""
    port = sa.port_value
    if sa.WhichOneof("port_specifier") == "named_port":
        raise TranslationError(where, f"{field}.named_port: named ports are not supported")
    if port > 65535:
        raise TranslationError(where, f"{field}.port_value: {port} is not in 0..65535")
    addr = _ipv4(sa.address)
    if addr is None:
        try:
            ip = ipaddress.ip_address(sa.address)
        except ValueError:
            if dns_ok and sa.address:
                return None
            raise TranslationError(where, f"{field}.address: {sa.address!r} is not an IP "
                                   "address") from None
        if ip.version == 6:
            return f"endpoint [{sa.address}]:{port} skipped: IPv6 not supported"
        # an IPv4 spelling that inet_pton (Envoy's parser, mirrored by _ipv4) refuses
        raise TranslationError(where, f"{field}.address: {sa.address!r} is not an IP address")
    if port == 0:
        return f"endpoint {addr}:0 skipped: port 0 not supported"
    return addr, port


@dataclass(frozen=True)
class ParsedEndpoints:
    """A validated endpoint list: the endpoints the datapath can use, in CLA order, and one
    note per valid endpoint it left out (IPv6, port 0, non-socket addresses)."""

    endpoints: tuple[Endpoint, ...] = ()
    skipped: tuple[str, ...] = ()
    # ClusterLoadAssignment.policy (Envoy's defaults when absent)
    overprovisioning_factor: int = 140
    weighted_priority_health: bool = False


def _endpoints(cla: endpoint_pb2.ClusterLoadAssignment, where: str, prefix: str,
               dns_ok: bool) -> tuple[ParsedEndpoints, bool]:
    """(parsed endpoints, whether some were DNS names we cannot resolve here)."""
    out: list[Endpoint] = []
    skipped: list[str] = []
    unresolved = False
    for li, lle in enumerate(cla.endpoints):
        loc = lle.locality
        locality = f"{loc.region}/{loc.zone}/{loc.sub_zone}" if lle.HasField("locality") else ""
        for ei, lb in enumerate(lle.lb_endpoints):
            field = f"{prefix}endpoints[{li}].lb_endpoints[{ei}]"
            if lb.WhichOneof("host_identifier") != "endpoint":
                raise TranslationError(where, f"{field}.endpoint: is required (named endpoints "
                                       "are not supported)")
            weight = lb.load_balancing_weight.value if lb.HasField("load_balancing_weight") else 1
            if weight < 1:
                raise TranslationError(where, f"{field}.load_balancing_weight: must be >= 1")
            health = _HEALTH.get(lb.health_status)
            if health is None:
                raise TranslationError(where, f"{field}.health_status: unknown value "
                                       f"{lb.health_status}")
            address = lb.endpoint.address
            kind = address.WhichOneof("address")
            if kind is None:
                raise TranslationError(where, f"{field}.endpoint.address: is required")
            if kind != "socket_address":
                skipped.append(f"endpoint {kind} skipped: only socket addresses supported")
                continue
            got = _address(address.socket_address, where,
                           f"{field}.endpoint.address.socket_address", dns_ok)
            if got is None:
                unresolved = True
            elif isinstance(got, str):
                skipped.append(got)
            else:
                out.append(Endpoint(address=got[0], port=got[1], weight=weight, health=health,
                                    priority=lle.priority, locality=locality))
    policy = cla.policy
    factor = (policy.overprovisioning_factor.value
              if policy.HasField("overprovisioning_factor") else 140)
    return ParsedEndpoints(tuple(out), tuple(skipped), factor,
                           policy.weighted_priority_health), unresolved


def cla_endpoints(cla: endpoint_pb2.ClusterLoadAssignment) -> ParsedEndpoints:
    """Validate a ClusterLoadAssignment (what an EDS NACK needs) and return its endpoints."""
    where = resource_label("ClusterLoadAssignment", cla.cluster_name)
    validate_message(cla, where)
    return _endpoints(cla, where, "", dns_ok=False)[0]


def validate_cla(cla: endpoint_pb2.ClusterLoadAssignment) -> None:
    """Per-resource validation of a ClusterLoadAssignment (what an EDS NACK needs)."""
    cla_endpoints(cla)


def translate_cluster(c: cluster_pb2.Cluster,
                      cla: endpoint_pb2.ClusterLoadAssignment | None) -> Cluster:
    """Validate a Cluster and build its table entry (see build_cluster)."""
    return build_cluster(c, cla_endpoints(cla) if cla is not None else None)


def build_cluster(c: cluster_pb2.Cluster, eds_endpoints: ParsedEndpoints | None) -> Cluster:
    """Validate a Cluster and build its table entry.

    EDS clusters take their endpoints from their ClusterLoadAssignment, already validated and
    parsed by ``cla_endpoints`` (``has_endpoints`` is False while it is None); other clusters
    use their inline ``load_assignment``.  DNS names in DNS clusters
    cannot be resolved by the pure translator: such endpoints are left out and the cluster
    lists ``dns_resolution`` as not enforced.  Valid endpoints the IPv4 datapath cannot reach
    (IPv6, port 0) are left out too, each listed as not enforced ("endpoint [::1]:80 skipped:
    IPv6 not supported"), so one of them does not reject the whole assignment.
    """
    where = resource_label("Cluster", c.name)
    validate_message(c, where)
    kind = discovery_type(c)
    if kind.startswith("UNKNOWN("):
        raise TranslationError(where, f"type: unknown discovery type {c.type}")
    policy, exact = _lb_policy(c, where)
    not_enforced = [f.name for f, _ in c.ListFields() if f.name not in _HANDLED]
    if not exact:
        not_enforced.insert(0, "lb_policy")
    choice_count, bias = 2, 1.0
    if c.HasField("least_request_lb_config"):
        lr = c.least_request_lb_config
        if lr.HasField("choice_count"):
            if lr.choice_count.value < 2:
                raise TranslationError(where, "least_request_lb_config.choice_count: must be "
                                       ">= 2")
            choice_count = lr.choice_count.value
        if lr.HasField("active_request_bias"):
            bias = lr.active_request_bias.default_value
            if bias < 0:
                raise TranslationError(where, "least_request_lb_config.active_request_bias: "
                                       "must be >= 0")
    panic = 50.0
    if c.HasField("common_lb_config"):
        common = c.common_lb_config
        if common.HasField("healthy_panic_threshold"):
            panic = common.healthy_panic_threshold.value
            if not 0.0 <= panic <= 100.0:
                raise TranslationError(where, "common_lb_config.healthy_panic_threshold: must "
                                       "be in [0, 100]")
        # the panic threshold is honoured; list only the rest of common_lb_config
        not_enforced.remove("common_lb_config")
        not_enforced += [f"common_lb_config.{f.name}" for f, _ in common.ListFields()
                         if f.name != "healthy_panic_threshold"]
    dns = kind in ("STRICT_DNS", "LOGICAL_DNS")
    if kind == "EDS":
        has_endpoints = eds_endpoints is not None
        parsed = eds_endpoints or ParsedEndpoints()
    else:
        has_endpoints = True
        parsed, unresolved = _endpoints(c.load_assignment, where, "load_assignment.",
                                        dns_ok=dns)
        if unresolved:
            not_enforced.append("dns_resolution")
    not_enforced += parsed.skipped
    if kind == "ORIGINAL_DST":
        not_enforced.append("original_dst")
    return Cluster(
        name=c.name,
        lb_policy=policy,
        endpoints=parsed.endpoints,
        has_endpoints=has_endpoints,
        kind=kind,
        choice_count=choice_count,
        active_request_bias=bias,
        panic_threshold=panic,
        not_enforced=tuple(dict.fromkeys(not_enforced)),
        overprovisioning_factor=parsed.overprovisioning_factor,
        weighted_priority_health=parsed.weighted_priority_health,
    )
