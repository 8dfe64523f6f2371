"""Incremental translation: TableBuilder.apply returns only the changed rows and always
agrees with a full translate() of the same resources."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from translator import TableBuilder, TranslationError, diff_tables, translate
from translator.model import Request, route
from translator.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    ResourceSet,
    parse_resource,
    resource_name,
    to_json,
    type_url_of,
)

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")


def cluster(i: int, service_name: str | None = None) -> Any:
    name = f"outbound|80||s{i}.ns.svc.cluster.local"
    return parse_resource({"@type": CLUSTER, "name": name, "type": "EDS",
                           "lb_policy": "LEAST_REQUEST", "eds_cluster_config": {
                               "eds_config": {"ads": {}}, "service_name": service_name or name}})


def cla(name: str, *ips: str) -> Any:
    return parse_resource({"@type": CLUSTER_LOAD_ASSIGNMENT, "cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": ip, "port_value": 80}}}} for ip in ips]}]})


def rc(name: str, cluster_index: int) -> Any:
    return parse_resource({"@type": ROUTE_CONFIGURATION, "name": name, "virtual_hosts": [
        {"name": "vh", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {
            "cluster": f"outbound|80||s{cluster_index}.ns.svc.cluster.local"}}]}]})


def listener(port: int, route_name: str) -> Any:
    return parse_resource({
        "@type": LISTENER, "name": f"0.0.0.0_{port}",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
            "@type": HCM, "stat_prefix": "s",
            "rds": {"route_config_name": route_name, "config_source": {"ads": {}}}}}]}]})


def inline_listener(port: int, route_name: str, cluster_index: int,
                    validate_clusters: bool | None = False) -> Any:
    inline = {k: v for k, v in to_json(rc(route_name, cluster_index)).items() if k != "@type"}
    if validate_clusters is not None:
        # inline configs default to validate_clusters; the property test removes clusters
        inline["validate_clusters"] = validate_clusters
    return parse_resource({
        "@type": LISTENER, "name": f"inline_{port}",
        "address": {"socket_address": {"address": "127.10.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
            "@type": HCM, "stat_prefix": "s", "route_config": inline}}]}]})


def base_set() -> ResourceSet:
    rs = ResourceSet()
    for i in range(5):
        c = cluster(i)
        rs.add(c)
        rs.add(cla(c.name, f"10.0.{i}.1", f"10.0.{i}.2"))
    rs.add(rc("80", 0))
    rs.add(listener(80, "80"))
    return rs


def test_one_endpoint_change_touches_one_cluster_row() -> None:
    rs = base_set()
    b = TableBuilder(rs)
    before = b.tables()
    name = "outbound|80||s3.ns.svc.cluster.local"
    diff = b.apply(CLUSTER_LOAD_ASSIGNMENT, name, cla(name, "10.0.3.1", "10.0.3.9"))
    assert list(diff.clusters.upserted) == [name]
    assert not diff.route_tables and not diff.services and not diff.clusters.removed
    assert [e.address for e in diff.clusters.upserted[name].endpoints] == ["10.0.3.1",
                                                                            "10.0.3.9"]
    rs.endpoints[name] = cla(name, "10.0.3.1", "10.0.3.9")
    assert b.tables() == translate(rs)
    assert diff_tables(before, b.tables()) == diff
    # the same update again changes nothing
    assert not b.apply(CLUSTER_LOAD_ASSIGNMENT, name, cla(name, "10.0.3.1", "10.0.3.9"))


def test_bad_update_raises_and_changes_nothing() -> None:
    b = TableBuilder(base_set())
    before = b.tables()
    name = "outbound|80||s1.ns.svc.cluster.local"
    with pytest.raises(TranslationError, match="ClusterLoadAssignment"):
        b.apply(CLUSTER_LOAD_ASSIGNMENT, name, cla(name, "10.0.0.01"))
    bad_rc = rc("80", 0)
    bad_rc.virtual_hosts[0].routes[0].match.ClearField("prefix")
    with pytest.raises(TranslationError, match="RouteConfiguration '80'"):
        b.apply(ROUTE_CONFIGURATION, "80", bad_rc)
    assert b.tables() == before


def test_removals() -> None:
    b = TableBuilder(base_set())
    name = "outbound|80||s2.ns.svc.cluster.local"
    d = b.apply(CLUSTER_LOAD_ASSIGNMENT, name, None)
    assert not d.clusters.upserted[name].has_endpoints
    d = b.apply(CLUSTER, name, None)
    assert d.clusters.removed == (name,)
    d = b.apply(LISTENER, "0.0.0.0_80", None)
    assert d.services.removed == (("0.0.0.0", 80),)
    d = b.apply(ROUTE_CONFIGURATION, "80", None)
    assert d.route_tables.removed == ("80",)
    assert b.tables().services == ()


def test_shared_service_name_updates_every_cluster_using_it() -> None:
    rs = ResourceSet()
    rs.add(cluster(1, "shared"))
    rs.add(cluster(2, "shared"))
    b = TableBuilder(rs)
    d = b.apply(CLUSTER_LOAD_ASSIGNMENT, "shared", cla("shared", "10.9.9.9"))
    assert sorted(d.clusters.upserted) == ["outbound|80||s1.ns.svc.cluster.local",
                                           "outbound|80||s2.ns.svc.cluster.local"]


def test_inline_route_configs_sharing_a_name_stay_apart() -> None:
    rs = base_set()  # holds RDS config "80" -> s0
    rs.add(inline_listener(81, "80", 0, None))  # same name, same content as RDS "80"
    rs.add(inline_listener(82, "80", 1, None))  # same name, other content
    rs.add(inline_listener(83, "shared", 2, None))
    rs.add(inline_listener(84, "shared", 3, None))
    t = translate(rs)
    by_port = {s.port: s.route_table for s in t.services}
    assert by_port == {80: "80", 81: "80", 82: "80@inline_82", 83: "shared",
                       84: "shared@inline_84"}
    for port, index in [(80, 0), (81, 0), (82, 1), (83, 2), (84, 3)]:
        table = t.route_tables[by_port[port]]
        assert table.name == by_port[port]
        assert route(table, Request(path="/")).cluster == \
            f"outbound|80||s{index}.ns.svc.cluster.local"
    # the RDS config changing its content renames the inline one that matched it
    b = TableBuilder(rs)
    d = b.apply(ROUTE_CONFIGURATION, "80", rc("80", 4))
    assert {s.port: s.route_table for s in d.services.upserted.values()} == {81: "80@inline_81"}
    rs.route_configs["80"] = rc("80", 4)
    assert b.tables() == translate(rs)


update = st.one_of(
    st.tuples(st.just("cla"), st.integers(0, 6), st.lists(st.integers(1, 4), max_size=3)),
    st.tuples(st.just("cluster"), st.integers(0, 6), st.booleans()),
    st.tuples(st.just("rc"), st.sampled_from(["80", "81"]), st.integers(0, 6)),
    st.tuples(st.just("listener"), st.sampled_from([80, 81]), st.booleans()),
    st.tuples(st.just("inline"), st.sampled_from([90, 91]), st.integers(-1, 2)),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(update, max_size=12))
def test_any_update_sequence_matches_full_translation(updates: list[Any]) -> None:
    rs = base_set()
    b = TableBuilder(copy.deepcopy(rs))
    for kind, key, arg in updates:
        if kind == "cla":
            name = f"outbound|80||s{key}.ns.svc.cluster.local"
            msg = cla(name, *[f"10.1.{key}.{x}" for x in arg]) if arg else None
        elif kind == "cluster":
            msg = cluster(key) if arg else None
            name = f"outbound|80||s{key}.ns.svc.cluster.local"
        elif kind == "rc":
            msg, name = rc(key, arg), key
        elif kind == "inline":  # inline route config named like RDS "80", maybe other content
            msg = inline_listener(key, "80", arg) if arg >= 0 else None
            name = f"inline_{key}"
        else:
            msg, name = (listener(key, str(key)) if arg else None), f"0.0.0.0_{key}"
        type_url = {"cla": CLUSTER_LOAD_ASSIGNMENT, "cluster": CLUSTER,
                    "rc": ROUTE_CONFIGURATION, "listener": LISTENER,
                    "inline": LISTENER}[kind]
        before = b.tables()
        diff = b.apply(type_url, name, msg)
        table = rs.by_type(type_url)
        if msg is None:
            table.pop(name, None)
        else:
            assert type_url_of(type(msg)) == type_url and resource_name(msg) == name
            table[name] = msg
        full = translate(rs)
        assert b.tables() == full
        assert diff_tables(before, full) == diff
