"""The embedded server's stream state machines and snapshots, without a network.

Cases follow go-control-plane's server tests and Envoy's xds_protocol doc: first request
answered, ACK and NACK recorded per nonce, no re-send after ACK, stale nonces ignored,
RDS/EDS filtered by the names asked for, name changes answered, delta diffs with
``initial_resource_versions``, removals, subscribe/unsubscribe.  Runtime: < 1 s.
"""

from __future__ import annotations

import itertools

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest
from google.protobuf import any_pb2
from google.rpc import status_pb2

from integration.xds_server import (
    AckEvent,
    AdsServer,
    DeltaStreamState,
    SotwStreamState,
    pack,
)
from translator.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    ResourceSet,
)


def resources(clusters: dict[str, str] | None = None, routes: tuple[str, ...] = ()) -> ResourceSet:
    """Clusters + endpoints named by key, content varied by the value; route configs."""
    rs = ResourceSet()
    for name, stat in (clusters or {}).items():
        rs.add(cluster_pb2.Cluster(name=name, alt_stat_name=stat))
        rs.add(endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, policy={"overprovisioning_factor": {"value": int(stat)}}))
    for r in routes:
        rs.add(route_pb2.RouteConfiguration(name=r))
    return rs


class Harness:
    """An AdsServer (never started) for snapshots, plus one stream state machine."""

    def __init__(self, rs: ResourceSet, delta: bool = False) -> None:
        self.server = AdsServer(rs)
        self.events: list[AckEvent] = []
        nonces = itertools.count(1)
        cls = DeltaStreamState if delta else SotwStreamState
        self.stream = cls(lambda: f"n{next(nonces)}", self.events.append)

    def req(self, **kw: object) -> list:  # type: ignore[type-arg]
        msg_cls = DeltaDiscoveryRequest if isinstance(self.stream, DeltaStreamState) \
            else DiscoveryRequest
        return self.stream.on_request(msg_cls(**kw), self.server.snapshot)

    def push(self, rs: ResourceSet) -> list:  # type: ignore[type-arg]
        self.server.set_resources(rs)
        return self.stream.on_snapshot(self.server.snapshot)


def names(resp: object) -> list[str]:
    out = []
    for a in resp.resources:  # type: ignore[attr-defined]
        if isinstance(a, any_pb2.Any):
            msg = cluster_pb2.Cluster() if a.type_url == CLUSTER else route_pb2.RouteConfiguration()
            if a.type_url == CLUSTER_LOAD_ASSIGNMENT:
                msg = endpoint_pb2.ClusterLoadAssignment()
                a.Unpack(msg)
                out.append(msg.cluster_name)
                continue
            a.Unpack(msg)
            out.append(msg.name)
        else:
            out.append(a.name)
    return sorted(out)


# -- SotW ----------------------------------------------------------------------------------


def test_sotw_first_request_ack_and_no_resend() -> None:
    h = Harness(resources({"a": "1", "b": "1"}))
    [r1] = h.req(type_url=CLUSTER, node={"id": "n"})
    assert names(r1) == ["a", "b"] and r1.version_info == h.server.version and r1.nonce
    assert h.req(type_url=CLUSTER, version_info=r1.version_info, response_nonce=r1.nonce) == []
    assert h.events == [AckEvent(CLUSTER, "n", r1.version_info, r1.nonce, True, None, False)]
    # Same content again: the type version does not move, nothing is pushed.
    assert h.push(resources({"a": "1", "b": "1"})) == []


def test_sotw_nack_recorded_and_not_resent_until_change() -> None:
    h = Harness(resources({"a": "1"}))
    [r1] = h.req(type_url=CLUSTER, node={"id": "n"})
    h.req(type_url=CLUSTER, version_info=r1.version_info, response_nonce=r1.nonce)
    [r2] = h.push(resources({"a": "2"}))
    assert r2.version_info != r1.version_info
    nack = h.req(type_url=CLUSTER, version_info=r1.version_info, response_nonce=r2.nonce,
                 error_detail=status_pb2.Status(code=3, message="bad cluster a"))
    assert nack == []
    ev = h.events[-1]
    assert (ev.ack, ev.error_detail, ev.version, ev.nonce) == (False, "bad cluster a",
                                                               r1.version_info, r2.nonce)
    [r3] = h.push(resources({"a": "3"}))
    assert names(r3) == ["a"] and r3.nonce not in (r1.nonce, r2.nonce)


def test_sotw_stale_nonce_ignored() -> None:
    h = Harness(resources({"a": "1"}))
    [r1] = h.req(type_url=CLUSTER)
    [r2] = h.push(resources({"a": "2"}))
    # An ACK of r1 arriving after r2 was sent is stale: no event, no response.
    assert h.req(type_url=CLUSTER, version_info=r1.version_info, response_nonce=r1.nonce) == []
    assert h.events == []
    assert h.req(type_url=CLUSTER, version_info=r2.version_info, response_nonce=r2.nonce) == []
    assert [e.nonce for e in h.events] == [r2.nonce]


def test_sotw_rds_eds_filtered_by_names_and_name_change_answered() -> None:
    h = Harness(resources({"a": "1", "b": "1"}, routes=("r1", "r2")))
    [e1] = h.req(type_url=CLUSTER_LOAD_ASSIGNMENT, resource_names=["a"])
    assert names(e1) == ["a"]
    [e2] = h.req(type_url=CLUSTER_LOAD_ASSIGNMENT, resource_names=["a", "b"],
                 version_info=e1.version_info, response_nonce=e1.nonce)
    assert names(e2) == ["a", "b"]
    [r] = h.req(type_url=ROUTE_CONFIGURATION, resource_names=[])  # legacy wildcard
    assert names(r) == ["r1", "r2"]
    # LDS/CDS are always full state, whatever names are sent.
    [c] = h.req(type_url=CLUSTER, resource_names=["a"])
    assert names(c) == ["a", "b"]


def test_sotw_empty_names_after_named_means_unsubscribed() -> None:
    h = Harness(resources({"a": "1"}, routes=("r1", "r2")))
    [r1] = h.req(type_url=ROUTE_CONFIGURATION, resource_names=["r1"])
    assert names(r1) == ["r1"]
    # Not a legacy wildcard any more: nothing is sent, now or on a change.
    assert h.req(type_url=ROUTE_CONFIGURATION, resource_names=[], version_info=r1.version_info,
                 response_nonce=r1.nonce) == []
    assert h.push(resources({"a": "1"}, routes=("r1", "r2", "r3"))) == []
    [r2] = h.req(type_url=ROUTE_CONFIGURATION, resource_names=["*"])
    assert names(r2) == ["r1", "r2", "r3"]


def test_sotw_push_order_clusters_before_listeners() -> None:
    h = Harness(resources({"a": "1"}, routes=("r",)))
    for t in (ROUTE_CONFIGURATION, LISTENER, CLUSTER_LOAD_ASSIGNMENT, CLUSTER):
        h.req(type_url=t)
    pushed = h.push(resources({"a": "2"}, routes=("r", "s")))
    assert [p.type_url for p in pushed] == [CLUSTER, CLUSTER_LOAD_ASSIGNMENT, ROUTE_CONFIGURATION]


def test_sotw_raw_payloads_duplicates_and_garbage_are_served() -> None:
    h = Harness(resources({"a": "1"}))
    h.req(type_url=CLUSTER_LOAD_ASSIGNMENT, resource_names=["a"])
    dup = pack(endpoint_pb2.ClusterLoadAssignment(cluster_name="a"))
    garbage = any_pb2.Any(type_url=CLUSTER_LOAD_ASSIGNMENT, value=b"\xff\xff\xff")
    wrong = pack(cluster_pb2.Cluster(name="a"))
    h.server.set_raw(CLUSTER_LOAD_ASSIGNMENT, [dup, dup, garbage, wrong])
    [resp] = h.stream.on_snapshot(h.server.snapshot)
    assert list(resp.resources) == [dup, dup, garbage, wrong]


# -- delta ---------------------------------------------------------------------------------


def test_delta_wildcard_initial_versions_changes_and_removals() -> None:
    h = Harness(resources({"a": "1", "b": "1"}), delta=True)
    [first] = h.req(type_url=CLUSTER, node={"id": "d"})
    assert names(first) == ["a", "b"] and list(first.removed_resources) == []
    known = {r.name: r.version for r in first.resources}
    h.req(type_url=CLUSTER, response_nonce=first.nonce)
    assert h.events[-1] == AckEvent(CLUSTER, "d", first.system_version_info, first.nonce,
                                    True, None, True)
    # Only the changed resource, and removals by name.
    [upd] = h.push(resources({"a": "2", "c": "1"}))
    assert names(upd) == ["a", "c"] and list(upd.removed_resources) == ["b"]
    # A new stream that tells its versions gets only what differs.
    h2 = Harness(resources({"a": "1", "b": "2"}), delta=True)
    [resp] = h2.req(type_url=CLUSTER, initial_resource_versions=known)
    assert names(resp) == ["b"]


def test_delta_named_subscribe_unsubscribe_and_nack() -> None:
    h = Harness(resources({"a": "1", "b": "1"}), delta=True)
    [r1] = h.req(type_url=CLUSTER_LOAD_ASSIGNMENT, resource_names_subscribe=["a"])
    assert names(r1) == ["a"]
    [r2] = h.req(type_url=CLUSTER_LOAD_ASSIGNMENT, response_nonce=r1.nonce,
                 resource_names_subscribe=["b"])
    assert names(r2) == ["b"] and h.events[-1].ack
    assert h.req(type_url=CLUSTER_LOAD_ASSIGNMENT, resource_names_unsubscribe=["a"]) == []
    # b changes (pushed), a changes (not subscribed any more: not pushed).
    [r3] = h.push(resources({"a": "2", "b": "2"}))
    assert names(r3) == ["b"]
    h.req(type_url=CLUSTER_LOAD_ASSIGNMENT, response_nonce=r3.nonce,
          error_detail=status_pb2.Status(message="nope"))
    assert (h.events[-1].ack, h.events[-1].error_detail) == (False, "nope")
    # A NACK does not trigger a re-send of the same content.
    assert h.stream.on_snapshot(h.server.snapshot) == []
    # Re-subscribing a name the client dropped sends it again.
    [r4] = h.req(type_url=CLUSTER_LOAD_ASSIGNMENT, resource_names_subscribe=["a"])
    assert names(r4) == ["a"]


def test_delta_legacy_wildcard_ends_when_names_are_subscribed() -> None:
    h = Harness(resources({"a": "1", "b": "1"}), delta=True)
    [r1] = h.req(type_url=CLUSTER)
    assert names(r1) == ["a", "b"]
    h.req(type_url=CLUSTER, response_nonce=r1.nonce, resource_names_subscribe=["a"])
    # Only "a" is subscribed now: a change to "b" alone is not pushed.
    assert h.push(resources({"a": "1", "b": "2"})) == []
    h2 = Harness(resources({"a": "1", "b": "1"}), delta=True)
    h2.req(type_url=CLUSTER)
    h2.req(type_url=CLUSTER, resource_names_subscribe=["a", "*"])
    [r2] = h2.push(resources({"a": "1", "b": "2"}))
    assert names(r2) == ["b"]


def test_delta_unknown_nonce_is_not_an_event() -> None:
    h = Harness(resources({"a": "1"}), delta=True)
    h.req(type_url=CLUSTER)
    h.req(type_url=CLUSTER, response_nonce="not-ours")
    assert h.events == []


def test_snapshot_versions_move_only_for_changed_types() -> None:
    server = AdsServer(resources({"a": "1"}, routes=("r",)))
    before = {t: server.snapshot.get(t).version for t in (CLUSTER, ROUTE_CONFIGURATION)}
    v2 = server.set_resources(resources({"a": "1"}, routes=("r", "s")))
    assert server.snapshot.get(CLUSTER).version == before[CLUSTER]
    assert server.snapshot.get(ROUTE_CONFIGURATION).version == v2 != before[ROUTE_CONFIGURATION]
    assert AdsServer().version == "0"


async def test_wait_for_sees_past_events_and_times_out_with_context() -> None:
    server = AdsServer(resources({"a": "1"}))
    ev = AckEvent(CLUSTER, "n", "1", "n1", True, None, False)
    server._record(ev)
    assert await server.wait_for(lambda e: e.node_id == "n", 0.01) is ev
    with pytest.raises(TimeoutError, match=r"no matching xDS ACK/NACK within 0.05s .*ACK Cluster"):
        await server.wait_for(lambda e: e.node_id == "other", 0.05)
    with pytest.raises(TimeoutError, match="no matching xDS request"):
        await server.wait_for_request(lambda r: True, 0.02)
