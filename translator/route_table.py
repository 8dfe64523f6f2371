"""RouteConfiguration -> RouteTable: validation and the last-match-wins flattening.

Envoy evaluates a virtual host's routes in order and takes the first match.  The tables keep
the *last* match (the kernel walks a rule array without early exit), so each virtual host's
routes are written reversed: ``rules[i]`` is Envoy route ``len(routes) - 1 - i``.

Every field of a route, virtual host or route configuration that the datapath does not act
on is recorded by name in ``not_enforced``; nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable

import re2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from translator.errors import TranslationError, resource_label
from translator.proto_validate import validate_message
from translator.tables import (
    Action,
    ActionKind,
    PathKind,
    PathMatch,
    RedirectSpec,
    RetryPolicy,
    RouteTable,
    Rule,
    StringKind,
    ValueMatch,
    VirtualHost,
    WeightedCluster,
)

# Fields with no effect on forwarding (names, stats labels, opaque metadata).
_INFORMATIONAL = frozenset({"name", "metadata", "stat_prefix"})
_ROUTE_CONFIG_HANDLED = _INFORMATIONAL | {
    "virtual_hosts",
    "validate_clusters",  # checked by translate() against the cluster set
    "ignore_port_in_host_matching",
    "ignore_path_parameters_in_path_matching",
    "max_direct_response_body_size_bytes",  # a config-time limit, checked below
}
_VHOST_HANDLED = _INFORMATIONAL | {"domains", "routes", "retry_policy"}
_ROUTE_HANDLED = _INFORMATIONAL | {"match", "route", "redirect", "direct_response"}
_MATCH_HANDLED = frozenset({
    "prefix", "path", "safe_regex", "connect_matcher", "path_separated_prefix",
    "case_sensitive", "headers", "query_parameters", "grpc",
})
_ROUTE_ACTION_HANDLED = frozenset({
    "cluster", "cluster_header", "weighted_clusters", "cluster_not_found_response_code",
    "retry_policy",
})
_RETRY_HANDLED = frozenset({"retry_on", "num_retries", "retry_host_predicate",
                            "host_selection_retry_max_attempts", "retry_back_off"})
# retry_on conditions that retry a failed connect / a reset after the request was sent, both
# before any response byte (Envoy's RetryStateImpl::wouldRetryFromReset)
_RETRY_ON_CONNECT = frozenset({"connect-failure", "reset-before-request", "reset", "5xx",
                               "gateway-error"})
_RETRY_ON_RESET = frozenset({"reset", "5xx", "gateway-error"})
# conditions on the upstream's response (status, grpc-status, headers): not enforced
_RETRY_ON_RESPONSE = frozenset({
    "5xx", "gateway-error", "retriable-4xx", "retriable-status-codes", "retriable-headers",
    "envoy-ratelimited", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
    "unavailable"})
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_HOST_PREDICATES = {  # name -> typed_config type
    PREVIOUS_HOSTS: "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.retry_host_predicates.omit_canary_hosts":
        "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate",
    "envoy.retry_host_predicates.omit_host_metadata":
        "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
}
# Envoy's retry back-off defaults: base 25 ms, max 10 x base
_RETRY_BASE_MS = 25
_CLUSTER_WEIGHT_HANDLED = _INFORMATIONAL | {"weight"}
_WEIGHTED_HANDLED = frozenset({"clusters", "total_weight"})

# RouteAction.ClusterNotFoundResponseCode -> HTTP status
_CLUSTER_NOT_FOUND_STATUS = {0: 503, 1: 404, 2: 500}
# RedirectAction.RedirectResponseCode -> HTTP status
REDIRECT_STATUS = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
# Envoy's default max_direct_response_body_size_bytes
_DEFAULT_MAX_BODY = 4096
# gRPC requests: content-type exactly application/grpc or application/grpc+<subtype>
GRPC_CONTENT_TYPE_REGEX = r"application/grpc(\+.*)?"


def _unhandled(msg: Message, handled: Iterable[str], prefix: str = "") -> list[str]:
    """Names of the fields set on ``msg`` that are not in ``handled`` (proto order)."""
    handled_set = set(handled)
    return [prefix + f.name for f, _ in msg.ListFields() if f.name not in handled_set]


# Envoy rejects an RE2 program larger than this (runtime re2.max_program_size.error_level;
# measured on Envoy 1.40: program size 94 accepted, 105 rejected)
MAX_REGEX_PROGRAM_SIZE = 100


def compile_regex(pattern: str, where: str, field: str, matcher: Message | None = None) -> None:
    """Check that ``pattern`` is a valid RE2 regex Envoy accepts; raise TranslationError.

    ``matcher`` (the RegexMatcher) may raise the program size limit with the deprecated
    ``google_re2.max_program_size``.
    """
    try:
        compiled = re2.compile(pattern)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", errors="replace")
        raise TranslationError(where, f"{field}: invalid regex {pattern!r}: {reason}") from None
    limit = MAX_REGEX_PROGRAM_SIZE
    if matcher is not None and matcher.HasField("google_re2") and \
            matcher.google_re2.HasField("max_program_size"):
        limit = matcher.google_re2.max_program_size.value
    if compiled.programsize > limit:
        raise TranslationError(where, f"{field}: regex {pattern!r} has RE2 program size "
                               f"{compiled.programsize}, over Envoy's limit {limit}")


def _string_matcher(sm: Message, where: str, field: str) -> tuple[StringKind, str, bool]:
    """envoy.type.matcher.v3.StringMatcher -> (kind, value, ignore_case)."""
    which = sm.WhichOneof("match_pattern")
    if which is None:
        raise TranslationError(where, f"{field}: match_pattern is required")
    if which == "custom":
        raise TranslationError(where, f"{field}.custom: custom string matchers are not supported")
    if which == "safe_regex":
        compile_regex(sm.safe_regex.regex, where, f"{field}.safe_regex.regex", sm.safe_regex)
        # ignore_case has no effect on regex matching in Envoy
        return StringKind.REGEX, sm.safe_regex.regex, False
    value = getattr(sm, which)
    if which in ("prefix", "suffix", "contains") and not value:
        raise TranslationError(where, f"{field}.{which}: must not be empty")
    return StringKind(which), value, sm.ignore_case


def _header_matcher(hm: rc.HeaderMatcher, where: str, field: str) -> ValueMatch:
    if not hm.name:
        raise TranslationError(where, f"{field}.name: header name is required")
    name = hm.name.lower()
    common = {"invert": hm.invert_match, "missing_as_empty": hm.treat_missing_header_as_empty}
    which = hm.WhichOneof("header_match_specifier")
    if which is None:
        # Envoy: no specifier means "header present"
        return ValueMatch(name, StringKind.PRESENT, present=True, **common)
    if which == "present_match":
        return ValueMatch(name, StringKind.PRESENT, present=hm.present_match, **common)
    if which == "exact_match":
        # legacy exact_match "" matches any value of a present header (Envoy keeps that quirk)
        if not hm.exact_match:
            return ValueMatch(name, StringKind.PREFIX, "", **common)
        return ValueMatch(name, StringKind.EXACT, hm.exact_match, **common)
    if which in ("prefix_match", "suffix_match", "contains_match"):
        value = getattr(hm, which)
        if not value:
            raise TranslationError(where, f"{field}.{which}: must not be empty")
        return ValueMatch(name, StringKind(which.removesuffix("_match")), value, **common)
    if which == "safe_regex_match":
        compile_regex(hm.safe_regex_match.regex, where, f"{field}.safe_regex_match.regex",
                      hm.safe_regex_match)
        return ValueMatch(name, StringKind.REGEX, hm.safe_regex_match.regex, **common)
    if which == "range_match":
        r = hm.range_match  # start >= end is accepted, as Envoy does: an empty range
        return ValueMatch(name, StringKind.RANGE, range_start=r.start, range_end=r.end, **common)
    kind, value, ignore_case = _string_matcher(hm.string_match, where, f"{field}.string_match")
    return ValueMatch(name, kind, value, ignore_case=ignore_case, **common)


def _query_matcher(qm: rc.QueryParameterMatcher, where: str, field: str) -> ValueMatch:
    if not qm.name:
        raise TranslationError(where, f"{field}.name: query parameter name is required")
    if qm.WhichOneof("query_parameter_match_specifier") == "string_match":
        kind, value, ignore_case = _string_matcher(qm.string_match, where, f"{field}.string_match")
        return ValueMatch(qm.name, kind, value, ignore_case=ignore_case)
    if qm.WhichOneof("query_parameter_match_specifier") == "present_match":
        # measured on Envoy 1.40: present_match false matches when the parameter is absent
        return ValueMatch(qm.name, StringKind.PRESENT, present=qm.present_match)
    return ValueMatch(qm.name, StringKind.PRESENT, present=True)  # no specifier: presence


def _path_match(m: rc.RouteMatch, where: str, field: str) -> PathMatch:
    which = m.WhichOneof("path_specifier")
    case_sensitive = m.case_sensitive.value if m.HasField("case_sensitive") else True
    if which is None:
        raise TranslationError(where, f"{field}: a path specifier (prefix, path, safe_regex, "
                               "path_separated_prefix, connect_matcher) is required")
    if which == "prefix":
        return PathMatch(PathKind.PREFIX, m.prefix, case_sensitive)
    if which == "path":
        return PathMatch(PathKind.EXACT, m.path, case_sensitive)
    if which == "path_separated_prefix":
        p = m.path_separated_prefix
        # Envoy's proto pattern ^[^?#]+[^?#/]$ (also checked by proto_validate)
        if len(p) < 2 or "?" in p or "#" in p or p.endswith("/"):
            raise TranslationError(where, f"{field}.path_separated_prefix: {p!r} must not "
                                   "end with '/' nor contain '?' or '#'")
        return PathMatch(PathKind.PATH_SEPARATED_PREFIX, p, case_sensitive)
    if which == "safe_regex":
        compile_regex(m.safe_regex.regex, where, f"{field}.safe_regex.regex", m.safe_regex)
        # case_sensitive is ignored for safe_regex in Envoy
        return PathMatch(PathKind.REGEX, m.safe_regex.regex, True)
    if which == "connect_matcher":
        return PathMatch(PathKind.CONNECT, "", True)
    raise TranslationError(where, f"{field}.{which}: path match policy extensions are not "
                           "supported")


def _data_source_text(ds: Message, where: str, field: str) -> str:
    which = ds.WhichOneof("specifier")
    if which is None:
        return ""
    if which == "inline_string":
        return str(ds.inline_string)
    if which == "inline_bytes":
        return bytes(ds.inline_bytes).decode("utf-8", errors="replace")
    # filename / environment_variable would need I/O; the translator is pure
    raise TranslationError(where, f"{field}.{which}: only inline bodies are supported")


def _weighted(wc: rc.WeightedCluster, where: str, field: str,
              not_enforced: list[str], slow: list[str]) -> Action:
    if not wc.clusters:
        raise TranslationError(where, f"{field}.clusters: at least one cluster is required")
    entries: list[WeightedCluster] = []
    for i, cw in enumerate(wc.clusters):
        f = f"{field}.clusters[{i}]"
        if cw.cluster_header:
            slow.append("weighted_clusters.cluster_header")
        elif not cw.name:
            raise TranslationError(where, f"{f}.name: cluster name or cluster_header is required")
        if not cw.HasField("weight"):
            raise TranslationError(where, f"{f}.weight: missing (every weighted cluster needs "
                                   "a weight)")
        weight = cw.weight.value
        entries.append(WeightedCluster(cw.name or "", weight))
        not_enforced.extend(_unhandled(cw, _CLUSTER_WEIGHT_HANDLED | {"cluster_header"},
                                       "weighted_clusters.clusters."))
    total = sum(e.weight for e in entries)
    if total <= 0:
        raise TranslationError(where, f"{field}: sum of cluster weights must be greater than 0")
    which = wc.WhichOneof("random_value_specifier")
    if which is not None:
        slow.append(f"weighted_clusters.{which}")
    not_enforced.extend(_unhandled(wc, _WEIGHTED_HANDLED | {"header_name", "use_hash_policy"},
                                   "weighted_clusters."))
    # Envoy >= 1.28 ignores total_weight and uses the sum of weights
    return Action(ActionKind.WEIGHTED_CLUSTERS, weighted=tuple(entries), total_weight=total)


def _ms(d: Message) -> int:
    """A Duration in whole milliseconds, at least 1 (Envoy rounds retry intervals so)."""
    return max(1, d.seconds * 1000 + d.nanos // 1_000_000)


def _host_predicate(pred: Message, where: str, field: str) -> str:
    """The name of a known retry host predicate (by name or typed_config type)."""
    type_name = pred.typed_config.type_url.rpartition("/")[2]
    for name, typ in _HOST_PREDICATES.items():
        if type_name == typ or (not type_name and pred.name == name):
            return name
    raise TranslationError(where, f"{field}: unknown retry host predicate "
                           f"{type_name or pred.name!r}")


def retry_policy(rp: rc.RetryPolicy, where: str, field: str) -> tuple[RetryPolicy, list[str]]:
    """An Envoy RetryPolicy -> (RetryPolicy, the parts not enforced)."""
    conditions = tuple(c.strip() for c in rp.retry_on.split(",") if c.strip())
    # Envoy ignores retry_on conditions it does not know; so does the slow path
    not_enforced = [f"retry_policy.retry_on.{c}" for c in conditions if c in _RETRY_ON_RESPONSE]
    on_reset = any(c in _RETRY_ON_RESET for c in conditions)
    if on_reset:
        # a request the kernel dispatched went out on a pooled connection: when that
        # connection dies before the response the agent answers 503 and cannot retry
        not_enforced.append("retry_policy.reset_after_kernel_dispatch")
    previous_hosts = False
    for i, pred in enumerate(rp.retry_host_predicate):
        name = _host_predicate(pred, where, f"{field}.retry_host_predicate[{i}]")
        if name == PREVIOUS_HOSTS:
            previous_hosts = True
        else:
            not_enforced.append(f"retry_policy.retry_host_predicate.{name}")
    if rp.host_selection_retry_max_attempts < 0:
        raise TranslationError(where, f"{field}.host_selection_retry_max_attempts: "
                               f"{rp.host_selection_retry_max_attempts} is negative")
    base = max_ms = None
    if rp.HasField("retry_back_off"):
        bo = rp.retry_back_off
        if not bo.HasField("base_interval"):
            raise TranslationError(where, f"{field}.retry_back_off.base_interval: is required")
        base = _ms(bo.base_interval)
        if bo.HasField("max_interval"):
            max_ms = _ms(bo.max_interval)
            if max_ms < base:
                raise TranslationError(where, f"{field}.retry_back_off.max_interval: {max_ms} "
                                       f"ms is less than base_interval {base} ms")
    base = base or _RETRY_BASE_MS
    not_enforced += _unhandled(rp, _RETRY_HANDLED, "retry_policy.")
    policy = RetryPolicy(
        retry_on=conditions,
        num_retries=rp.num_retries.value if rp.HasField("num_retries") else 1,
        on_connect_failure=any(c in _RETRY_ON_CONNECT for c in conditions),
        on_reset=on_reset,
        previous_hosts=previous_hosts,
        # 0 (unset) means Envoy's default of one re-pick
        host_selection_attempts=rp.host_selection_retry_max_attempts or 1,
        base_interval_ms=base,
        max_interval_ms=max_ms or 10 * base,
    )
    return policy, not_enforced


def _route_action(ra: rc.RouteAction, where: str, field: str,
                  not_enforced: list[str], slow: list[str]) -> Action:
    status = _CLUSTER_NOT_FOUND_STATUS.get(ra.cluster_not_found_response_code)
    if status is None:
        raise TranslationError(where, f"{field}.cluster_not_found_response_code: unknown value "
                               f"{ra.cluster_not_found_response_code}")
    not_enforced.extend(_unhandled(ra, _ROUTE_ACTION_HANDLED | {
        "cluster_specifier_plugin", "inline_cluster_specifier_plugin"}))
    which = ra.WhichOneof("cluster_specifier")
    if which == "cluster":
        if not ra.cluster:
            raise TranslationError(where, f"{field}.cluster: must not be empty")
        return Action(ActionKind.CLUSTER, cluster=ra.cluster, cluster_not_found_status=status)
    if which == "cluster_header":
        slow.append("cluster_header")
        return Action(ActionKind.CLUSTER, cluster_header=ra.cluster_header.lower(),
                      cluster_not_found_status=status)
    if which == "weighted_clusters":
        action = _weighted(ra.weighted_clusters, where, f"{field}.weighted_clusters",
                           not_enforced, slow)
        return Action(action.kind, weighted=action.weighted, total_weight=action.total_weight,
                      cluster_not_found_status=status)
    if which is None:
        raise TranslationError(where, f"{field}: a cluster specifier (cluster, cluster_header, "
                               "weighted_clusters) is required")
    raise TranslationError(where, f"{field}.{which}: cluster specifier plugins are not supported")


def _redirect(rd: rc.RedirectAction, where: str, field: str, path: PathMatch) -> Action:
    status = REDIRECT_STATUS.get(rd.response_code)
    if status is None:
        raise TranslationError(where, f"{field}.response_code: unknown value {rd.response_code}")
    scheme: str | None = None
    if rd.WhichOneof("scheme_rewrite_specifier") == "https_redirect" and rd.https_redirect:
        scheme = "https"
    elif rd.scheme_redirect:
        scheme = rd.scheme_redirect  # Envoy writes it as configured (HTTPS stays upper-case)
    if rd.port_redirect > 65535:
        raise TranslationError(where, f"{field}.port_redirect: {rd.port_redirect} out of range")
    regex_rewrite = regex_sub = None
    if rd.HasField("regex_rewrite"):
        compile_regex(rd.regex_rewrite.pattern.regex, where, f"{field}.regex_rewrite.pattern",
                      rd.regex_rewrite.pattern)
        regex_rewrite = rd.regex_rewrite.pattern.regex
        regex_sub = rd.regex_rewrite.substitution
    if rd.prefix_rewrite and path.kind is PathKind.CONNECT:
        raise TranslationError(where, f"{field}.prefix_rewrite: not allowed with connect_matcher")
    spec = RedirectSpec(
        scheme=scheme,
        host=rd.host_redirect or None,
        port=rd.port_redirect or None,
        path=rd.path_redirect or None,
        prefix_rewrite=rd.prefix_rewrite or None,
        strip_query=rd.strip_query,
        status=status,
        regex_rewrite=regex_rewrite,
        regex_substitution=regex_sub,
    )
    return Action(ActionKind.REDIRECT, status=status, redirect=spec)


def _direct(dr: rc.DirectResponseAction, where: str, field: str, max_body: int,
            not_enforced: list[str]) -> Action:
    if not 200 <= dr.status < 600:
        raise TranslationError(where, f"{field}.status: {dr.status} is not in [200, 600)")
    body = _data_source_text(dr.body, where, f"{field}.body") if dr.HasField("body") else None
    if body is not None and len(body.encode()) > max_body:
        raise TranslationError(where, f"{field}.body: {len(body.encode())} bytes exceed "
                               f"max_direct_response_body_size_bytes {max_body}")
    if dr.HasField("body_format"):
        not_enforced.append("direct_response.body_format")
    return Action(ActionKind.DIRECT_RESPONSE, status=dr.status, body=body)


# a virtual host's parsed retry policy (see retry_policy)
VhostRetry = tuple[RetryPolicy, list[str]]


def translate_route(route: rc.Route, envoy_index: int, where: str, field: str,
                    max_body: int = _DEFAULT_MAX_BODY,
                    vhost_retry: VhostRetry | None = None) -> Rule:
    """One Envoy route -> one Rule (validated).  ``vhost_retry``: its virtual host's retry
    policy, taken when the route has none of its own (Envoy never merges the two)."""
    if not route.HasField("match"):
        raise TranslationError(where, f"{field}.match: is required")
    m = route.match
    path = _path_match(m, where, f"{field}.match")
    headers = [_header_matcher(h, where, f"{field}.match.headers[{i}]")
               for i, h in enumerate(m.headers)]
    if m.HasField("grpc"):
        headers.append(ValueMatch("content-type", StringKind.REGEX, GRPC_CONTENT_TYPE_REGEX))
    query = tuple(_query_matcher(q, where, f"{field}.match.query_parameters[{i}]")
                  for i, q in enumerate(m.query_parameters))
    not_enforced = _unhandled(m, _MATCH_HANDLED | {"runtime_fraction"}, "match.")
    not_enforced += _unhandled(route, _ROUTE_HANDLED)
    fraction = _runtime_fraction(m) if m.HasField("runtime_fraction") else None
    if fraction is not None and 0.0 < fraction < 1.0:
        not_enforced.insert(0, "match.runtime_fraction")
    slow: list[str] = []
    retry: RetryPolicy | None = None
    which = route.WhichOneof("action")
    if which == "route":
        action = _route_action(route.route, where, f"{field}.route", not_enforced, slow)
        if route.route.HasField("retry_policy"):
            retry, gaps = retry_policy(route.route.retry_policy, where,
                                       f"{field}.route.retry_policy")
            not_enforced += gaps
        elif vhost_retry is not None:
            retry = vhost_retry[0]
            not_enforced += [f"virtual_host.{g}" for g in vhost_retry[1]]
    elif which == "redirect":
        action = _redirect(route.redirect, where, f"{field}.redirect", path)
    elif which == "direct_response":
        action = _direct(route.direct_response, where, f"{field}.direct_response", max_body,
                         not_enforced)
    elif which is None:
        raise TranslationError(where, f"{field}: an action (route, redirect, direct_response) "
                               "is required")
    else:
        raise TranslationError(where, f"{field}.{which}: action is not supported by sockmesh")
    return Rule(
        envoy_index=envoy_index,
        name=route.name,
        path=path,
        headers=tuple(headers),
        query=query,
        action=action,
        not_enforced=tuple(dict.fromkeys(not_enforced)),
        needs_slow_path=tuple(dict.fromkeys(slow)),
        runtime_fraction=fraction,
        retry=retry,
    )


# FractionalPercent.DenominatorType -> denominator
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


def _runtime_fraction(m: rc.RouteMatch) -> float:
    """The default fraction of a runtime_fraction condition, clamped to [0, 1]."""
    dv = m.runtime_fraction.default_value
    denominator = _DENOMINATORS.get(dv.denominator, 100)
    return min(dv.numerator / denominator, 1.0)


def domain_kind(domain: str) -> str:
    """``default`` (``*``), ``suffix`` (``*x``), ``prefix`` (``x*``) or ``exact``."""
    if domain == "*":
        return "default"
    if domain.startswith("*"):
        return "suffix"
    if domain.endswith("*"):
        return "prefix"
    return "exact"


def _check_domains(rc_msg: route_pb2.RouteConfiguration, where: str) -> None:
    seen: dict[str, int] = {}
    for vi, vh in enumerate(rc_msg.virtual_hosts):
        if not vh.domains:
            raise TranslationError(where, f"virtual_hosts[{vi}].domains: at least one domain "
                                   "is required")
        for di, raw in enumerate(vh.domains):
            field = f"virtual_hosts[{vi}].domains[{di}]"
            # '*' is a wildcard only as the first (checked first) or last character; anywhere
            # else Envoy takes it literally ('a.*.b' is exact, '*.*' the suffix '.*'), and so
            # does domain_kind
            domain = raw.lower()
            if domain in seen:
                raise TranslationError(where, f"{field}: duplicate domain {raw!r} (also in "
                                       f"virtual_hosts[{seen[domain]}]); domains must be "
                                       "unique in a route configuration")
            seen[domain] = vi


def translate_route_config(rc_msg: route_pb2.RouteConfiguration,
                           name: str | None = None) -> RouteTable:
    """Validate a RouteConfiguration and flatten it into a RouteTable (rules reversed)."""
    table_name = name if name is not None else rc_msg.name
    where = resource_label("RouteConfiguration", table_name)
    validate_message(rc_msg, where)  # Envoy's proto constraints first, as Envoy does
    max_body = (rc_msg.max_direct_response_body_size_bytes.value
                if rc_msg.HasField("max_direct_response_body_size_bytes") else _DEFAULT_MAX_BODY)
    _check_domains(rc_msg, where)
    vhosts: list[VirtualHost] = []
    for vi, vh in enumerate(rc_msg.virtual_hosts):
        if not vh.name:
            raise TranslationError(where, f"virtual_hosts[{vi}].name: is required")
        if vh.HasField("matcher"):
            # a matcher tree replaces the route list; ignoring it would mis-route silently
            raise TranslationError(where, f"virtual_hosts[{vi}].matcher: matcher-tree routing "
                                   "is not supported by sockmesh")
        vh_retry = (retry_policy(vh.retry_policy, where, f"virtual_hosts[{vi}].retry_policy")
                    if vh.HasField("retry_policy") else None)
        rules = [translate_route(r, ri, where, f"virtual_hosts[{vi}].routes[{ri}]", max_body,
                                 vh_retry)
                 for ri, r in enumerate(vh.routes)]
        rules.reverse()  # last-match-wins order: the last matching rule is Envoy's first
        vhosts.append(VirtualHost(
            name=vh.name,
            domains=tuple(d.lower() for d in vh.domains),
            rules=tuple(rules),
            not_enforced=tuple(_unhandled(vh, _VHOST_HANDLED)),
        ))
    return RouteTable(
        name=table_name,
        virtual_hosts=tuple(vhosts),
        ignore_port_in_host_matching=rc_msg.ignore_port_in_host_matching,
        ignore_path_parameters_in_path_matching=rc_msg.ignore_path_parameters_in_path_matching,
        not_enforced=tuple(_unhandled(rc_msg, _ROUTE_CONFIG_HANDLED)),
    )


def validate_route_config(rc_msg: route_pb2.RouteConfiguration) -> None:
    """Per-resource validation (what an RDS NACK needs): translation without keeping it."""
    if not rc_msg.name:
        raise TranslationError(resource_label("RouteConfiguration", ""), "name: is required")
    translate_route_config(rc_msg)


def referenced_clusters(table: RouteTable) -> set[str]:
    """Every cluster name a route table refers to statically."""
    out: set[str] = set()
    for vh in table.virtual_hosts:
        for rule in vh.rules:
            if rule.action.cluster:
                out.add(rule.action.cluster)
            out.update(w.cluster for w in rule.action.weighted if w.cluster)
    return out
