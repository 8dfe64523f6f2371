"""The effective retry policy of a route (Envoy: the route's own, else its virtual host's,
never merged), the part the slow path enforces, and what is reported as not enforced."""

from __future__ import annotations

from typing import Any

import pytest

from bpf.splice import backoff_s
from integration.demo import mesh
from translator import translate_route_config
from translator.errors import TranslationError
from translator.resources import ROUTE_CONFIGURATION, parse_resource
from translator.tables import RetryPolicy, Rule

PREVIOUS_HOSTS = {"name": "envoy.retry_host_predicates.previous_hosts"}


def rules(routes: list[dict[str, Any]], vh_retry: dict[str, Any] | None = None) -> list[Rule]:
    """The rules of a one-virtual-host config, in Envoy's order."""
    vh: dict[str, Any] = {"name": "vh", "domains": ["*"], "routes": routes}
    if vh_retry is not None:
        vh["retry_policy"] = vh_retry
    t = translate_route_config(parse_resource(
        {"@type": ROUTE_CONFIGURATION, "name": "rc", "virtual_hosts": [vh]}))
    return sorted(t.virtual_hosts[0].rules, key=lambda r: r.envoy_index)


def to(path: str, retry: dict[str, Any] | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": "c"}
    if retry is not None:
        action["retry_policy"] = retry
    return {"match": {"prefix": path}, "route": action}


def one(retry: dict[str, Any]) -> Rule:
    return rules([to("/", retry)])[0]


def test_no_policy_no_retry() -> None:
    (r,) = rules([to("/")])
    assert r.retry is None
    assert not [f for f in r.not_enforced if "retry" in f]


def test_route_policy_replaces_the_virtual_hosts_entirely() -> None:
    vh = {"retry_on": "5xx", "num_retries": 4, "per_try_timeout": "1s",
          "retry_host_predicate": [PREVIOUS_HOSTS]}
    own, inherited, direct = rules(
        [to("/own", {"retry_on": "connect-failure"}), to("/inherit"),
         {"match": {"prefix": "/"}, "direct_response": {"status": 200}}], vh)
    # nothing of the virtual host's policy leaks into the route's own (num_retries default 1)
    assert own.retry == RetryPolicy(retry_on=("connect-failure",), num_retries=1,
                                    on_connect_failure=True)
    assert not [f for f in own.not_enforced if "retry" in f]
    assert inherited.retry == RetryPolicy(retry_on=("5xx",), num_retries=4,
                                          on_connect_failure=True, on_reset=True,
                                          previous_hosts=True)
    # what the inherited policy leaves unenforced is reported on the rule that uses it
    assert {"virtual_host.retry_policy.per_try_timeout", "virtual_host.retry_policy.retry_on.5xx",
            "virtual_host.retry_policy.reset_after_kernel_dispatch"} <= set(
                inherited.not_enforced)
    assert direct.retry is None


@pytest.mark.parametrize("retry_on,connect,reset,unenforced", [
    ("connect-failure", True, False, []),
    ("reset-before-request", True, False, []),  # nothing was sent on a failed connect
    ("reset", True, True, ["retry_policy.reset_after_kernel_dispatch"]),
    ("5xx", True, True, ["retry_policy.retry_on.5xx",
                         "retry_policy.reset_after_kernel_dispatch"]),
    ("gateway-error", True, True, ["retry_policy.retry_on.gateway-error",
                                   "retry_policy.reset_after_kernel_dispatch"]),
    # a connect failure is no response: these never retry it (measured on Envoy 1.40)
    ("retriable-status-codes", False, False, ["retry_policy.retry_on.retriable-status-codes"]),
    ("refused-stream", False, False, []),  # HTTP/2 only; upstreams here are HTTP/1.1
    ("unavailable,cancelled", False, False, ["retry_policy.retry_on.unavailable",
                                             "retry_policy.retry_on.cancelled"]),
    ("no-such-condition", False, False, []),  # ignored, as Envoy does
    ("", False, False, []),
])
def test_retry_on_conditions(retry_on: str, connect: bool, reset: bool,
                             unenforced: list[str]) -> None:
    r = one({"retry_on": retry_on, "num_retries": 3})
    assert r.retry is not None
    assert (r.retry.on_connect_failure, r.retry.on_reset, r.retry.num_retries) == (
        connect, reset, 3)
    assert [f for f in r.not_enforced if "retry" in f] == unenforced


def test_istio_default_policy() -> None:
    r = rules([mesh.with_istio_retry(to("/"))])[0]
    assert r.retry == RetryPolicy(
        retry_on=("connect-failure", "refused-stream", "unavailable", "cancelled",
                  "retriable-status-codes"),
        num_retries=2, on_connect_failure=True, previous_hosts=True,
        host_selection_attempts=5)
    assert "retry_policy" not in r.not_enforced
    assert "retry_policy.retry_on.retriable-status-codes" in r.not_enforced


def test_back_off_defaults_and_limits() -> None:
    assert one({"retry_on": "reset"}).retry == RetryPolicy(
        retry_on=("reset",), on_connect_failure=True, on_reset=True,
        base_interval_ms=25, max_interval_ms=250)
    r = one({"retry_on": "reset", "retry_back_off": {"base_interval": "0.1s"}}).retry
    assert r is not None and (r.base_interval_ms, r.max_interval_ms) == (100, 1000)
    r = one({"retry_on": "reset", "retry_back_off": {"base_interval": "0.0001s",
                                                     "max_interval": "0.0002s"}}).retry
    assert r is not None and (r.base_interval_ms, r.max_interval_ms) == (1, 1)


def test_host_predicates() -> None:
    typed = {"name": "whatever", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                 "PreviousHostsPredicate"}}
    r = one({"retry_on": "reset", "retry_host_predicate": [typed]})
    assert r.retry is not None and r.retry.previous_hosts
    r = one({"retry_on": "reset", "retry_host_predicate": [
        {"name": "envoy.retry_host_predicates.omit_canary_hosts"}]})
    assert r.retry is not None and not r.retry.previous_hosts
    assert "retry_policy.retry_host_predicate.envoy.retry_host_predicates.omit_canary_hosts" \
        in r.not_enforced


@pytest.mark.parametrize("retry,field", [
    ({"retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}},
     "routes[0].route.retry_policy.retry_back_off.max_interval"),
    ({"retry_back_off": {"max_interval": "0.5s"}},
     "routes[0].route.retry_policy.retry_back_off.base_interval"),
    ({"retry_host_predicate": [{"name": "no.such.predicate"}]},
     "routes[0].route.retry_policy.retry_host_predicate[0]"),
])
def test_bad_policy_is_an_error_naming_the_field(retry: dict[str, Any], field: str) -> None:
    with pytest.raises(TranslationError) as info:
        one({"retry_on": "reset", **retry})
    assert field in str(info.value)


def test_bad_virtual_host_policy_names_the_virtual_host() -> None:
    with pytest.raises(TranslationError) as info:
        rules([to("/")], {"retry_host_predicate": [{"name": "no.such.predicate"}]})
    assert "virtual_hosts[0].retry_policy.retry_host_predicate[0]" in str(info.value)


def test_back_off_is_jittered_exponential_and_capped() -> None:
    p = RetryPolicy(base_interval_ms=25, max_interval_ms=250)
    first = [backoff_s(p, 1) for _ in range(300)]
    third = [backoff_s(p, 3) for _ in range(300)]
    fifth = [backoff_s(p, 5) for _ in range(300)]
    assert all(0 <= s < 0.025 for s in first)
    assert all(0 <= s < 0.175 for s in third) and max(third) > 0.1
    assert all(0 <= s <= 0.25 for s in fifth) and max(fifth) > 0.2
