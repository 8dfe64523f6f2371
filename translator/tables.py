"""The flattened tables: the only contract between the translator and its consumers.

The kernel encoder (bpf/), the Python routing model, the slow path, `explain` and `tables`
all read these dataclasses; nothing else decides routing.

Ordering contract: ``VirtualHost.rules`` is in *last-match-wins* order.  Envoy takes the
first matching route; the translator writes each virtual host's routes reversed, so that the
last rule in the table that matches a request is Envoy's first matching route.  Evaluators
walk the rules from index 0 upwards and keep the last match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class PathKind(str, Enum):
    """How a rule matches the request path (Envoy's RouteMatch path specifier)."""

    PREFIX = "prefix"  # anchored prefix on the path without query
    EXACT = "exact"
    PATH_SEPARATED_PREFIX = "path_separated_prefix"  # prefix followed by end, '/', '?' or '#'
    REGEX = "regex"  # RE2 full match on the path without query
    CONNECT = "connect_matcher"  # CONNECT requests only


class StringKind(str, Enum):
    """How a header or query-parameter value is compared (see ValueMatch)."""

    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    CONTAINS = "contains"
    REGEX = "regex"
    PRESENT = "present"  # header/parameter present (value ignored)
    RANGE = "range"  # header value is an integer in [start, end)


class ActionKind(str, Enum):
    """What a matched rule does."""

    CLUSTER = "cluster"
    WEIGHTED_CLUSTERS = "weighted_clusters"
    DIRECT_RESPONSE = "direct_response"
    REDIRECT = "redirect"
    NO_ROUTE = "no_route"  # used only in decisions, never in rules


class LbPolicy(str, Enum):
    """Endpoint selection inside a cluster (hash policies run as RANDOM, listed as not enforced)."""

    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    LEAST_REQUEST = "LEAST_REQUEST"


class Health(str, Enum):
    """Envoy's endpoint health_status."""

    UNKNOWN = "UNKNOWN"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DRAINING = "DRAINING"
    TIMEOUT = "TIMEOUT"
    DEGRADED = "DEGRADED"


@dataclass(frozen=True)
class PathMatch:
    """The path condition of a rule, tested on the path without query and fragment.

    ``case_sensitive=False`` lower-cases both sides (ignored for REGEX); CONNECT matches
    CONNECT requests only; with the route table's ``ignore_path_parameters_in_path_matching``
    every segment's ``;params`` are removed first.
    """

    kind: PathKind
    value: str
    case_sensitive: bool = True


@dataclass(frozen=True)
class ValueMatch:
    """One header or query-parameter condition.

    ``name`` is lower-case for headers (pseudo-headers keep their colon: ``:method``,
    ``:authority``, ``:scheme``, ``:path``).  ``invert`` flips the result (Envoy's
    ``invert_match``); ``present`` with ``kind == PRESENT`` says whether the name must be
    present (True) or absent (False).

    Evaluation (translator.model is the reference; Envoy's header_utility):

    * header values are those Envoy's router sees (translator.envoy_request): spaces/tabs
      around them removed, inline headers (content-type, user-agent, ...) joined with ",",
      hop-by-hop and internal x-envoy-* headers removed, x-forwarded-proto (the scheme) and
      x-request-id added when absent; ``:path`` is path + query; ``host`` and
      ``:authority`` both give the Host value;
    * PRESENT: ``(found == present) != invert``;
    * any other kind on a missing header: False, even inverted, unless ``missing_as_empty``,
      which matches against "";
    * otherwise ``any(kind_matches(v) for v in values) != invert`` (a repeated header
      matches when one of its values does); ``ignore_case`` lower-cases both sides
      (not for REGEX); REGEX is an RE2 full match; RANGE parses a decimal int64
      (surrounding whitespace allowed) and tests ``range_start <= v < range_end``;
    * Envoy's legacy ``exact_match: ""`` (any value) arrives as PREFIX "".
    * query parameters: the first value of the name, not percent-decoded; a missing
      parameter fails every kind but PRESENT; PRESENT is ``found == present`` (a name
      without ``=`` is found, with value "").
    """

    name: str
    kind: StringKind
    value: str = ""
    ignore_case: bool = False
    invert: bool = False
    present: bool = True
    range_start: int = 0
    range_end: int = 0
    # Envoy's treat_missing_header_as_empty
    missing_as_empty: bool = False


@dataclass(frozen=True)
class WeightedCluster:
    """One weighted_clusters entry; weights may be 0 (never picked)."""

    cluster: str
    weight: int


@dataclass(frozen=True)
class RedirectSpec:
    """A redirect action; translator.model.redirect_location builds Envoy's Location."""

    scheme: str | None = None  # scheme_redirect / https_redirect
    host: str | None = None
    port: int | None = None
    path: str | None = None  # path_redirect
    prefix_rewrite: str | None = None
    strip_query: bool = False
    status: int = 301
    # regex_rewrite: RE2 pattern replaced (all matches) by substitution in the path
    regex_rewrite: str | None = None
    regex_substitution: str | None = None


@dataclass(frozen=True)
class Action:
    """What a rule does: route to a cluster (or a weighted pick), answer, or redirect."""

    kind: ActionKind
    cluster: str | None = None
    weighted: tuple[WeightedCluster, ...] = ()
    total_weight: int = 0
    status: int | None = None  # direct_response status
    body: str | None = None  # direct_response body (inline)
    redirect: RedirectSpec | None = None
    # cluster_header / cluster_specifier_plugin etc. that user space must resolve
    cluster_header: str | None = None
    cluster_not_found_status: int = 503


@dataclass(frozen=True)
class RetryPolicy:
    """A route's effective retry policy, as far as the slow path enforces it.

    Envoy takes the route's own ``retry_policy``, else its virtual host's; the two are never
    merged.  Without one nothing is retried.  Only failures before any response byte are
    retried: a failed connect (``on_connect_failure``: retry_on connect-failure,
    reset-before-request, reset, 5xx or gateway-error) and a reset after the request was sent
    (``on_reset``: reset, 5xx, gateway-error), at most ``num_retries`` times.  Each retry
    picks a host by the cluster's policy; with ``previous_hosts`` a host already tried is
    re-picked up to ``host_selection_attempts`` times, then the last pick is taken.  Retry n
    waits a random time in [0, (2^n - 1) x base) capped at ``max_interval_ms``.  What is not
    enforced (response status conditions, per_try_timeout, ...) is in ``Rule.not_enforced``.
    """

    retry_on: tuple[str, ...] = ()  # the configured conditions, in order
    num_retries: int = 1
    on_connect_failure: bool = False
    on_reset: bool = False
    previous_hosts: bool = False
    host_selection_attempts: int = 1  # host_selection_retry_max_attempts
    base_interval_ms: int = 25
    max_interval_ms: int = 250

    def summary(self) -> str:
        """One line for ``tables`` and ``explain``."""
        out = f"{','.join(self.retry_on) or '(no retry_on)'} x{self.num_retries}"
        if self.previous_hosts:
            out += f", previous_hosts ({self.host_selection_attempts} re-picks)"
        return out + f", back-off {self.base_interval_ms}-{self.max_interval_ms} ms"


@dataclass(frozen=True)
class Rule:
    """One route in last-match order.  ``envoy_index`` is its index in Envoy's order."""

    envoy_index: int
    name: str  # Envoy route name ("" when unnamed)
    path: PathMatch
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    action: Action = field(default_factory=lambda: Action(ActionKind.NO_ROUTE))
    # Route fields carried but not enforced by the datapath ("timeout",
    # "retry_policy.per_try_timeout", ...); rules with "match.runtime_fraction" (or other
    # unevaluable match fields) are evaluated as if that condition held
    not_enforced: tuple[str, ...] = ()
    # Fields that need user space to honour them; the kernel hands such requests over
    needs_slow_path: tuple[str, ...] = ()
    # match.runtime_fraction's default as a fraction in [0, 1] (None: no such condition).
    # 0 means the rule never matches (measured on Envoy); 1 always; in between Envoy picks
    # at random per request, which is listed in not_enforced and evaluated as matching.
    runtime_fraction: float | None = None
    # the effective retry policy (the route's, else its virtual host's); None: no retries
    retry: RetryPolicy | None = None


@dataclass(frozen=True)
class VirtualHost:
    """Domains (lower-case) and rules in last-match-wins order."""

    name: str
    domains: tuple[str, ...]
    rules: tuple[Rule, ...]  # last-match-wins order
    not_enforced: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteTable:
    """A flattened RouteConfiguration."""

    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    ignore_port_in_host_matching: bool = False
    ignore_path_parameters_in_path_matching: bool = False
    # RouteConfiguration-level fields carried but not enforced (request_headers_to_add, ...)
    not_enforced: tuple[str, ...] = ()


class ServiceKind(str, Enum):
    """L7 (routed per request), L4 (endpoint chosen at connect) or refused at connect."""

    HTTP = "http"  # L7: routed per request with route_table
    TCP = "tcp"  # L4: endpoint chosen at connect time from cluster
    # refused at connect (connect() fails with EPERM): tcp_proxy to Istio's BlackHoleCluster
    BLACKHOLE = "blackhole"


# Istio's well-known clusters: no endpoints (connections are reset) / the original destination
BLACKHOLE_CLUSTER = "BlackHoleCluster"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
# Service.port of the entry for destinations no other entry matches (Istio's virtualOutbound
# catch-all chain); only a BLACKHOLE entry is ever written there (REGISTRY_ONLY)
ANY_PORT = 0
WILDCARD_VIP = "0.0.0.0"  # Service.vip of an entry for any destination address


@dataclass(frozen=True)
class Service:
    """Destination VIP:port -> how the datapath treats connections to it.

    ``vip`` is a dotted IPv4 string; "0.0.0.0" means any destination on that port (Istio's
    ``0.0.0.0_PORT`` outbound listeners).  More specific entries win over the wildcard, and
    ("0.0.0.0", ANY_PORT) is taken only when neither matches (translator.model.connect_target).
    """

    vip: str
    port: int
    kind: ServiceKind
    route_table: str | None = None  # HTTP
    cluster: str | None = None  # TCP
    listener: str = ""  # the Envoy listener it came from
    # connection-manager settings and HTTP filters carried but not enforced, e.g.
    # "hcm.normalize_path", "http_filters.envoy.filters.http.fault"
    not_enforced: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """One upstream endpoint of a cluster, in ClusterLoadAssignment order."""

    address: str  # dotted IPv4
    port: int
    weight: int = 1
    health: Health = Health.UNKNOWN
    priority: int = 0
    locality: str = ""  # "region/zone/subzone"


@dataclass(frozen=True)
class Cluster:
    """A cluster with its LB policy and endpoints."""

    name: str
    lb_policy: LbPolicy
    endpoints: tuple[Endpoint, ...] = ()
    # EDS clusters are usable only once their ClusterLoadAssignment arrived
    has_endpoints: bool = True
    kind: str = "EDS"  # EDS | STATIC | STRICT_DNS | LOGICAL_DNS | ORIGINAL_DST
    # LEAST_REQUEST choice_count (Envoy default 2) and active_request_bias (default 1.0)
    choice_count: int = 2
    active_request_bias: float = 1.0
    panic_threshold: float = 50.0
    not_enforced: tuple[str, ...] = ()
    # ClusterLoadAssignment.policy: a level counts as fully available once
    # healthy share x overprovisioning_factor / 100 reaches 100 (Envoy default 140), and
    # weighted_priority_health counts hosts by weight instead of one each
    overprovisioning_factor: int = 140
    weighted_priority_health: bool = False


@dataclass(frozen=True)
class Tables:
    """Everything the datapath needs, keyed by name."""

    services: tuple[Service, ...] = ()
    route_tables: dict[str, RouteTable] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    # (listener name, reason) for listeners that yield no service (inbound, original-dst, ...)
    skipped_listeners: tuple[tuple[str, str], ...] = ()
