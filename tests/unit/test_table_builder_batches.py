"""TableBuilder.update (one xDS response's changes, all or nothing) and apply_diff (the socket
keeper's next tables from the previous ones and a diff), against full translation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_translator_incremental import (
    base_set,
    cla,
    cluster,
    inline_listener,
    listener,
    rc,
)
from translator import TableBuilder, TranslationError, diff_tables, translate
from translator.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    ResourceSet,
)
from translator.table_builder import apply_diff


def cname(i: int) -> str:
    return f"outbound|80||s{i}.ns.svc.cluster.local"


def validating_rc(name: str, cluster_index: int) -> Any:
    msg = rc(name, cluster_index)
    msg.validate_clusters.value = True
    return msg


# one change: (type_url, name, message or None); bad ones included (an address the
# translator rejects, route configs naming a cluster that may be missing)
def _cla(i: int, ips: list[int]) -> tuple[str, str, Any]:
    return (CLUSTER_LOAD_ASSIGNMENT, cname(i),
            cla(cname(i), *[f"10.1.{i}.{x}" for x in ips]) if ips else None)


cla_change = st.builds(_cla, st.integers(0, 6), st.lists(st.integers(0, 4), max_size=3))
cluster_change = st.builds(lambda i, keep: (CLUSTER, cname(i), cluster(i) if keep else None),
                           st.integers(0, 6), st.booleans())
rc_change = st.builds(
    lambda name, i, check: (ROUTE_CONFIGURATION, name,
                            (validating_rc if check else rc)(name, i) if i >= 0 else None),
    st.sampled_from(["80", "81"]), st.integers(-1, 7), st.booleans())
listener_change = st.one_of(
    st.builds(lambda port, keep: (LISTENER, f"0.0.0.0_{port}",
                                  listener(port, str(port)) if keep else None),
              st.sampled_from([80, 81]), st.booleans()),
    # inline route configs validate their clusters unless they say otherwise
    st.builds(lambda port, i, check: (LISTENER, f"inline_{port}", inline_listener(
        port, "80", i, None if check else False) if i >= 0 else None),
        st.sampled_from([90, 91]), st.integers(-1, 7), st.booleans()),
)
# the agent's batches hold one xDS response: resources of one type, each name once
batch = st.one_of(*(st.lists(c, min_size=1, max_size=4, unique_by=lambda ch: ch[1])
                    for c in (cla_change, cluster_change, rc_change, listener_change)))


def _with(rs: ResourceSet, changes: list[tuple[str, str, Any]]) -> ResourceSet:
    out = copy.deepcopy(rs)
    for type_url, name, msg in changes:
        table = out.by_type(type_url)
        if msg is None:
            table.pop(name, None)
        else:
            table[name] = msg
    return out


def _translated(rs: ResourceSet) -> Any:
    try:
        return translate(rs)
    except TranslationError as exc:
        return exc


@settings(max_examples=150, deadline=None)
@given(st.lists(batch, max_size=8))
def test_update_is_all_or_nothing_and_agrees_with_full_translation(
        batches: list[list[tuple[str, str, Any]]]) -> None:
    rs = base_set()
    b = TableBuilder(copy.deepcopy(rs))
    for changes in batches:
        before = b.tables()
        after_rs = _with(rs, changes)
        full = _translated(after_rs)
        try:
            diff = b.update(changes)
        except TranslationError as exc:
            # rejected exactly when translating the whole set with the batch in it fails
            assert isinstance(full, TranslationError), f"{exc} but the full set translates"
            assert b.tables() == before
            continue
        assert not isinstance(full, TranslationError), f"accepted, but: {full}"
        rs = after_rs
        assert b.tables() == full
        assert diff == diff_tables(before, full)
        assert apply_diff(before, diff) == full


@settings(max_examples=100, deadline=None)
@given(st.lists(batch, max_size=6), st.lists(batch, max_size=6))
def test_apply_diff_of_any_two_tables(first: list[Any], second: list[Any]) -> None:
    tables = []
    for batches in (first, second):
        b = TableBuilder(base_set())
        for changes in batches:
            try:
                b.update(changes)
            except TranslationError:
                pass
        tables.append(b.tables())
    a, z = tables
    assert apply_diff(a, diff_tables(a, z)) == z
    assert apply_diff(z, diff_tables(z, a)) == a
    assert apply_diff(a, diff_tables(a, a)) == a


def test_removing_a_cluster_a_validating_route_config_names_is_rejected() -> None:
    rs = base_set()
    rs.route_configs["80"] = validating_rc("80", 2)
    b = TableBuilder(rs)
    before = b.tables()
    with pytest.raises(TranslationError) as err:
        b.update([(CLUSTER, cname(2), None)])
    assert str(err.value) == str(_translated(_with(rs, [(CLUSTER, cname(2), None)])))
    assert "RouteConfiguration '80'" in str(err.value) and cname(2) in str(err.value)
    assert b.tables() == before
    # a later batch sees the builder as it was: the cluster is still there to remove with
    # the route config that names it gone first
    b.update([(ROUTE_CONFIGURATION, "80", rc("80", 0))])
    d = b.update([(CLUSTER, cname(2), None)])
    assert d.clusters.removed == (cname(2),)


def test_a_rejected_resource_in_a_batch_undoes_the_good_ones() -> None:
    b = TableBuilder(base_set())
    before = b.tables()
    bad = cla(cname(4), "10.0.0.01")  # not an IP address
    with pytest.raises(TranslationError, match="ClusterLoadAssignment"):
        b.update([_cla(1, [7]), _cla(2, []), (CLUSTER_LOAD_ASSIGNMENT, cname(4), bad)])
    assert b.tables() == before
    assert b.update([_cla(1, [7])]).clusters.upserted.keys() == {cname(1)}


def test_hold_swaps_in_an_equal_message() -> None:
    rs = base_set()
    b = TableBuilder(rs)
    same = copy.deepcopy(rs.clusters[cname(0)])
    b.hold(CLUSTER, cname(0), same)
    # the builder now holds the new object: an endpoint change rebuilds from it unchanged
    d = b.update([_cla(0, [1])])
    assert [e.address for e in d.clusters.upserted[cname(0)].endpoints] == ["10.1.0.1"]
    assert b.tables() == translate(_with(rs, [_cla(0, [1])]))


def test_the_first_clusters_are_checked_against_route_configs_already_there() -> None:
    # without clusters nothing is checked (a partial set); the first ones are
    rs = ResourceSet()
    rs.add(validating_rc("80", 2))
    b = TableBuilder(rs)
    with pytest.raises(TranslationError, match="validate_clusters"):
        b.update([(CLUSTER, cname(1), cluster(1))])
    assert b.tables().clusters == {}
    d = b.update([(CLUSTER, cname(2), cluster(2))])
    assert list(d.clusters.upserted) == [cname(2)]
