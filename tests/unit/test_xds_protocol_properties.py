"""Property tests of the protocol core: random response sequences against a plain model.

Whatever a server sends, each response is answered exactly once echoing its nonce, the
version moves only on ACK, a NACK never changes the cache, SotW cluster responses are the
complete state while route responses merge, and delta ends in the model's state (also the
versions offered after a reconnect).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_xds_protocol import (
    BROKEN_ANY,
    NODE,
    cluster,
    delta_resp,
    pack,
    route,
    sotw,
)
from xds_client.protocol import AdsProtocol
from xds_client.resource_types import CLUSTER, ROUTE_CONFIGURATION

NAMES = ["a", "b", "c", "d", "e"]

# one step: (valid?, names in the response)
steps = st.lists(st.tuples(st.booleans(), st.sets(st.sampled_from(NAMES))), max_size=25)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_sotw_cluster_responses(seq: list[tuple[bool, set[str]]]) -> None:
    core = AdsProtocol(NODE)
    core.subscribe(CLUSTER, None, 0.0)
    core.stream_started(0.0)
    model: set[str] = set()
    good = ""
    for i, (valid, names) in enumerate(seq):
        version, nonce = f"v{i}", f"n{i}"
        resources = [pack(cluster(n, eds=False)) for n in sorted(names)]
        if not valid:
            resources.append(BROKEN_ANY)
        out = core.receive(sotw(CLUSTER, version, nonce, *resources), float(i))
        [req] = [r for r in out.requests if r.type_url == CLUSTER]
        assert req.response_nonce == nonce
        assert req.HasField("error_detail") is not valid
        if valid:
            model, good = set(names), version
        assert req.version_info == good
        assert set(core.resources(CLUSTER)) == model
    st_ = core.status()[CLUSTER]
    assert st_.acks + st_.nacks == len(seq)
    assert st_.nacks == sum(1 for v, _ in seq if not v)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_sotw_route_responses_merge(seq: list[tuple[bool, set[str]]]) -> None:
    wanted = {"a", "b", "c"}
    core = AdsProtocol(NODE)
    core.subscribe(ROUTE_CONFIGURATION, wanted, 0.0)
    core.stream_started(0.0)
    model: dict[str, str] = {}
    for i, (valid, names) in enumerate(seq):
        resources = [pack(route(n, cluster=f"c{i}")) for n in sorted(names)]
        if not valid and resources:
            resources.append(resources[0])  # a duplicate name
        elif not valid:
            resources.append(BROKEN_ANY)
        out = core.receive(sotw(ROUTE_CONFIGURATION, f"v{i}", f"n{i}", *resources), float(i))
        assert [r.response_nonce for r in out.requests] == [f"n{i}"]
        if valid:
            model.update({n: f"c{i}" for n in names if n in wanted})
        got = {n: rc.virtual_hosts[0].routes[0].route.cluster  # type: ignore[attr-defined]
               for n, rc in core.resources(ROUTE_CONFIGURATION).items()}
        assert got == model


delta_steps = st.lists(
    st.tuples(st.booleans(), st.sets(st.sampled_from(NAMES)), st.sets(st.sampled_from(NAMES))),
    max_size=25)


@settings(max_examples=150, deadline=None)
@given(delta_steps)
def test_delta_cluster_responses(seq: list[tuple[bool, set[str], set[str]]]) -> None:
    core = AdsProtocol(NODE, delta=True)
    core.subscribe(CLUSTER, None, 0.0)
    core.stream_started(0.0)
    model: dict[str, str] = {}
    good = ""
    for i, (valid, updates, removals) in enumerate(seq):
        removals = removals - updates  # both at once is a protocol error, tested elsewhere
        version = f"s{i}"
        resp = delta_resp(CLUSTER, version, f"n{i}",
                          {n: cluster(n, eds=False) for n in sorted(updates)},
                          removed=sorted(removals))
        if not valid:
            resp.resources.add(name="x", version="bad").resource.CopyFrom(BROKEN_ANY)
        out = core.receive(resp, float(i))
        [req] = out.requests
        assert req.response_nonce == f"n{i}"
        assert req.HasField("error_detail") is not valid
        if valid:
            for n in removals:
                model.pop(n, None)
            model.update({n: f"{n}@{version}" for n in updates})
            good = version
        assert set(core.resources(CLUSTER)) == set(model)
        assert core.status()[CLUSTER].version == good
    core.stream_lost()
    [first] = core.stream_started(100.0)
    assert dict(first.initial_resource_versions) == model
