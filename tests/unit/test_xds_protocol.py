"""The ADS protocol core without a network: ACK/NACK, versions, nonces, references,
make-before-break, does-not-exist, reconnect and delta bookkeeping."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2

from xds_client.node import istio_node, make_node
from xds_client.protocol import (
    AdsProtocol,
    DoesNotExist,
    Nack,
    Output,
    ResourceChange,
    Snapshot,
)
from xds_client.resource_types import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
)
from xds_client.watchers import Watchers, WatchEvent, WatchEventKind

NODE = make_node("test-node", "test-cluster")


def pack(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def listener(name: str, route: str | None = None, port: int = 80) -> listener_pb2.Listener:
    lis = listener_pb2.Listener(name=name)
    lis.address.socket_address.address = "0.0.0.0"
    lis.address.socket_address.port_value = port
    if route is not None:
        hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
        hcm.rds.route_config_name = route
        chain = lis.filter_chains.add()
        f = chain.filters.add(name="envoy.filters.network.http_connection_manager")
        f.typed_config.Pack(hcm)
    return lis


def route(name: str, cluster: str = "c1", prefix: str = "/") -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name=name)
    vh = rc.virtual_hosts.add(name="vh", domains=["*"])
    r = vh.routes.add()
    r.match.prefix = prefix
    r.route.cluster = cluster
    return rc


def cluster(name: str, eds: bool = True, service_name: str = "") -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name)
    c.type = cluster_pb2.Cluster.EDS if eds else cluster_pb2.Cluster.STATIC
    if eds:
        c.eds_cluster_config.eds_config.ads.SetInParent()
        if service_name:
            c.eds_cluster_config.service_name = service_name
    return c


def cla(name: str, port: int = 8080) -> endpoint_pb2.ClusterLoadAssignment:
    a = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    lb = a.endpoints.add().lb_endpoints.add()
    lb.endpoint.address.socket_address.address = "127.0.0.1"
    lb.endpoint.address.socket_address.port_value = port
    return a


def sotw(type_url: str, version: str, nonce: str, *msgs: Message | any_pb2.Any
         ) -> discovery_pb2.DiscoveryResponse:
    resp = discovery_pb2.DiscoveryResponse(type_url=type_url, version_info=version, nonce=nonce)
    for m in msgs:
        resp.resources.append(m if isinstance(m, any_pb2.Any) else pack(m))
    return resp


def delta_resp(type_url: str, version: str, nonce: str, msgs: dict[str, Message],
               removed: list[str] | None = None) -> discovery_pb2.DeltaDiscoveryResponse:
    resp = discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, system_version_info=version, nonce=nonce,
        removed_resources=removed or [])
    for name, m in msgs.items():
        r = resp.resources.add(name=name, version=f"{name}@{version}")
        r.resource.Pack(m)
    return resp


def started(delta: bool = False, validator=None, timeout: float = 15.0,
            wildcard: tuple[str, ...] = (LISTENER, CLUSTER)) -> tuple[AdsProtocol, list]:
    core = AdsProtocol(NODE, delta=delta, validator=validator, does_not_exist_timeout=timeout)
    for t in wildcard:
        assert core.subscribe(t, None, 0.0) == []  # no stream yet: nothing to send
    return core, core.stream_started(0.0)


def changes(events: list) -> list[ResourceChange]:
    return [e for e in events if isinstance(e, ResourceChange)]


# ---- SotW ------------------------------------------------------------------------------

def test_initial_requests_clusters_first_node_once() -> None:
    _core, reqs = started()
    assert [r.type_url for r in reqs] == [CLUSTER, LISTENER]
    assert reqs[0].node.id == "test-node" and not reqs[1].HasField("node")
    assert all(r.version_info == "" and r.response_nonce == "" for r in reqs)
    assert all(list(r.resource_names) == [] for r in reqs)  # wildcard


def test_ack_echoes_nonce_and_advances_version() -> None:
    core, _ = started()
    out = core.receive(sotw(CLUSTER, "v1", "n1", cluster("a", eds=False)), 1.0)
    [ack] = out.requests
    assert (ack.type_url, ack.version_info, ack.response_nonce) == (CLUSTER, "v1", "n1")
    assert not ack.HasField("error_detail")
    assert core.status()[CLUSTER].version == "v1"
    assert core.status()[CLUSTER].acks == 1


def test_validator_failure_nacks_with_last_good_version_and_keeps_cache() -> None:
    def validate(type_url: str, resources: dict) -> None:
        for name in resources:
            if type_url == CLUSTER and name.startswith("bad"):
                raise ValueError(f"cluster {name}: rejected by test validator")

    core, _ = started(validator=validate)
    core.receive(sotw(CLUSTER, "v1", "n1", cluster("good", eds=False)), 1.0)
    out = core.receive(sotw(CLUSTER, "v2", "n2", cluster("bad1", eds=False)), 2.0)
    [nack] = out.requests
    assert nack.version_info == "v1" and nack.response_nonce == "n2"
    assert nack.error_detail.code == code_pb2.INVALID_ARGUMENT
    assert "bad1: rejected by test validator" in nack.error_detail.message
    [ev] = [e for e in out.events if isinstance(e, Nack)]
    assert (ev.rejected_version, ev.kept_version) == ("v2", "v1")
    assert set(core.resources(CLUSTER)) == {"good"}
    st = core.status()[CLUSTER]
    assert (st.version, st.nonce, st.nacks, st.acks) == ("v1", "n2", 1, 1)
    # the next good response is ACKed again with its own version
    out = core.receive(sotw(CLUSTER, "v3", "n3", cluster("good2", eds=False)), 3.0)
    assert out.requests[0].version_info == "v3" and not out.requests[0].HasField("error_detail")


BROKEN_ANY = any_pb2.Any(type_url=CLUSTER, value=b"\xff\xff\xff")


@pytest.mark.parametrize("resources, detail", [
    ([pack(cluster("a", eds=False)), pack(cluster("a", eds=False))], "duplicate resource name 'a'"),
    ([pack(listener("l1"))], "in a response for"),
    ([BROKEN_ANY], "cannot decode"),
    ([pack(cluster_pb2.Cluster())], "has no name"),
], ids=["duplicate", "wrong-type", "undecodable", "no-name"])
def test_generic_validation_nacks(resources: list, detail: str) -> None:
    core, _ = started()
    core.receive(sotw(CLUSTER, "v1", "n1", cluster("keep", eds=False)), 1.0)
    out = core.receive(sotw(CLUSTER, "v2", "n2", *resources), 2.0)
    [nack] = out.requests
    assert detail in nack.error_detail.message
    assert nack.version_info == "v1" and nack.response_nonce == "n2"
    assert set(core.resources(CLUSTER)) == {"keep"}


def test_invalid_first_response_nacks_with_empty_version() -> None:
    core, _ = started(wildcard=(CLUSTER,))
    out = core.receive(sotw(CLUSTER, "v1", "n1", BROKEN_ANY), 1.0)
    [nack] = out.requests
    assert nack.version_info == "" and nack.response_nonce == "n1"
    assert nack.error_detail.message
    st = core.status()[CLUSTER]
    assert st.initialized and st.resources == 0 and st.version == ""


def test_sotw_listener_absence_is_removal_route_absence_is_not() -> None:
    core, _ = started()
    core.receive(sotw(CLUSTER, "c1", "n0"), 0.5)
    core.receive(sotw(LISTENER, "v1", "n1", listener("a", "r1"), listener("b", "r2")), 1.0)
    core.receive(sotw(ROUTE_CONFIGURATION, "r1", "n2", route("r1"), route("r2")), 1.5)
    out = core.receive(sotw(ROUTE_CONFIGURATION, "r2", "n3", route("r1", prefix="/x")), 2.0)
    assert set(core.resources(ROUTE_CONFIGURATION)) == {"r1", "r2"}
    [ch] = changes(out.events)
    assert set(ch.updated) == {"r1"} and not ch.removed
    out = core.receive(sotw(LISTENER, "v2", "n4", listener("a", "r1")), 3.0)
    assert set(core.resources(LISTENER)) == {"a"}
    by_type = {c.type_url: c for c in changes(out.events)}
    assert by_type[LISTENER].removed == {"b"}
    # r2 is no longer referenced: it is unsubscribed and dropped
    assert by_type[ROUTE_CONFIGURATION].removed == {"r2"}
    [rds_req] = [r for r in out.requests if r.type_url == ROUTE_CONFIGURATION]
    assert list(rds_req.resource_names) == ["r1"] and rds_req.version_info == "r2"


def test_listeners_and_eds_clusters_subscribe_what_they_reference() -> None:
    core, _ = started()
    out = core.receive(sotw(CLUSTER, "c1", "n1", cluster("svc-a"), cluster("svc-b", service_name="b-eds"),
                            cluster("static", eds=False)), 1.0)
    [ack, eds_req] = out.requests
    assert ack.type_url == CLUSTER
    assert eds_req.type_url == CLUSTER_LOAD_ASSIGNMENT
    assert sorted(eds_req.resource_names) == ["b-eds", "svc-a"]
    out = core.receive(sotw(LISTENER, "l1", "n2", listener("l", "routes-80")), 1.0)
    [_, rds_req] = out.requests
    assert (rds_req.type_url, list(rds_req.resource_names)) == (ROUTE_CONFIGURATION, ["routes-80"])


def test_make_before_break_holds_changes_until_endpoints_and_routes_arrive() -> None:
    core, _ = started()
    ev1 = core.receive(sotw(LISTENER, "l1", "n1", listener("l", "r")), 1.0).events
    ev2 = core.receive(sotw(ROUTE_CONFIGURATION, "r1", "n2", route("r", cluster="svc")), 1.1).events
    ev3 = core.receive(sotw(CLUSTER, "c1", "n3", cluster("svc")), 1.2).events
    assert not ev1 and not ev2 and not ev3  # svc has no endpoints yet: nothing delivered
    assert not core.cluster_ready("svc")
    ev4 = core.receive(sotw(CLUSTER_LOAD_ASSIGNMENT, "e1", "n4", cla("svc")), 1.3).events
    assert [type(e) for e in ev4][-1] is Snapshot
    assert [c.type_url for c in changes(ev4)] == [
        CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION]
    assert core.cluster_ready("svc") and core.synced() is True
    snap = ev4[-1]
    assert isinstance(snap, Snapshot)
    assert set(snap.of(CLUSTER)) == {"svc"} and snap.versions[LISTENER] == "l1"


def test_new_eds_cluster_is_held_until_its_endpoints_arrive() -> None:
    core, _ = started()
    core.receive(sotw(LISTENER, "l1", "n1"), 1.0)
    core.receive(sotw(CLUSTER, "c1", "n2", cluster("a")), 1.0)
    assert changes(core.receive(sotw(CLUSTER_LOAD_ASSIGNMENT, "e1", "n3", cla("a")), 1.0).events)
    assert not core.receive(sotw(CLUSTER, "c2", "n4", cluster("a"), cluster("b")), 2.0).events
    evs = core.receive(sotw(CLUSTER_LOAD_ASSIGNMENT, "e2", "n5", cla("b")), 2.0).events
    assert [(c.type_url, set(c.updated)) for c in changes(evs)] == [
        (CLUSTER, {"b"}), (CLUSTER_LOAD_ASSIGNMENT, {"b"})]


def test_does_not_exist_after_timeout_only_while_stream_up() -> None:
    core = AdsProtocol(NODE, does_not_exist_timeout=5.0)
    core.subscribe(ROUTE_CONFIGURATION, ["r-missing", "r-here"], 0.0)
    assert core.next_deadline() is None  # no stream: the clock does not run
    core.stream_started(10.0)
    assert core.next_deadline() == 15.0
    core.receive(sotw(ROUTE_CONFIGURATION, "1", "n1", route("r-here")), 11.0)
    assert core.tick(14.9) == Output()
    evs = core.tick(15.0).events
    assert DoesNotExist(ROUTE_CONFIGURATION, "r-missing") in evs
    assert DoesNotExist(ROUTE_CONFIGURATION, "r-here") not in evs
    assert core.status()[ROUTE_CONFIGURATION].does_not_exist == {"r-missing"}
    # arriving later clears the state and is delivered normally
    evs = core.receive(sotw(ROUTE_CONFIGURATION, "2", "n2", route("r-missing")), 20.0).events
    assert "r-missing" in changes(evs)[0].updated
    assert core.status()[ROUTE_CONFIGURATION].does_not_exist == frozenset()


def test_stream_loss_pauses_timers_and_reconnect_resubscribes_with_versions() -> None:
    core, _ = started(timeout=5.0)
    core.subscribe(ROUTE_CONFIGURATION, ["r1"], 0.0)
    core.receive(sotw(CLUSTER, "c7", "n1", cluster("s", eds=False)), 1.0)
    core.receive(sotw(LISTENER, "l3", "n2", listener("l", "r1")), 1.0)
    core.receive(sotw(ROUTE_CONFIGURATION, "r9", "n3", route("r1")), 1.0)
    core.stream_lost()
    assert core.tick(100.0) == Output() and core.next_deadline() is None
    assert set(core.resources(CLUSTER)) == {"s"}  # last good kept while disconnected
    reqs = {r.type_url: r for r in core.stream_started(200.0)}
    assert {t: r.version_info for t, r in reqs.items()} == {
        CLUSTER: "c7", LISTENER: "l3", ROUTE_CONFIGURATION: "r9"}
    assert all(r.response_nonce == "" for r in reqs.values())
    assert list(reqs[ROUTE_CONFIGURATION].resource_names) == ["r1"]
    assert reqs[CLUSTER].node.id == "test-node"


def test_unsubscribe_drops_cached_resources() -> None:
    core = AdsProtocol(NODE)
    core.subscribe(ROUTE_CONFIGURATION, ["a", "b"], 0.0)
    core.stream_started(0.0)
    core.receive(sotw(ROUTE_CONFIGURATION, "1", "n1", route("a"), route("b")), 0.0)
    out = core.unsubscribe(ROUTE_CONFIGURATION, ["b"], 1.0)
    assert list(out.requests[0].resource_names) == ["a"]
    assert out.requests[0].response_nonce == "n1"
    assert changes(out.events)[0].removed == {"b"}
    assert set(core.resources(ROUTE_CONFIGURATION)) == {"a"}


def test_response_for_unsubscribed_type_is_nacked() -> None:
    core, _ = started(wildcard=(CLUSTER,))
    out = core.receive(sotw(LISTENER, "v1", "n1", listener("l")), 1.0)
    assert out.requests[0].error_detail.message and out.requests[0].response_nonce == "n1"


def test_wrapped_sotw_resources_are_unwrapped() -> None:
    core, _ = started(wildcard=(CLUSTER,))
    w = discovery_pb2.Resource(name="a", version="1")
    w.resource.Pack(cluster("a", eds=False))
    core.receive(sotw(CLUSTER, "v1", "n1", pack(w)), 1.0)
    assert set(core.resources(CLUSTER)) == {"a"}


# ---- delta -----------------------------------------------------------------------------

def test_delta_initial_requests_and_ack() -> None:
    core, reqs = started(delta=True)
    assert [r.type_url for r in reqs] == [CLUSTER, LISTENER]
    assert all(list(r.resource_names_subscribe) == [] for r in reqs)  # plain wildcard
    out = core.receive(delta_resp(CLUSTER, "s1", "n1", {"a": cluster("a", eds=False)}), 1.0)
    [ack] = out.requests
    assert ack.response_nonce == "n1" and not ack.HasField("error_detail")
    assert core.status()[CLUSTER].version == "s1"


def test_delta_removal_and_reconnect_with_initial_versions() -> None:
    core, _ = started(delta=True)
    core.receive(delta_resp(LISTENER, "s0", "n0", {}), 0.5)  # LDS answered: nothing held back
    core.receive(delta_resp(CLUSTER, "s1", "n1", {"a": cluster("a", eds=False),
                                                   "b": cluster("b", eds=False)}), 1.0)
    out = core.receive(delta_resp(CLUSTER, "s2", "n2", {}, removed=["a"]), 2.0)
    assert changes(out.events)[0].removed == {"a"}
    core.stream_lost()
    reqs = {r.type_url: r for r in core.stream_started(3.0)}
    assert dict(reqs[CLUSTER].initial_resource_versions) == {"b": "b@s1"}


def test_delta_nack_keeps_versions_and_cache() -> None:
    core, _ = started(delta=True)
    core.receive(delta_resp(CLUSTER, "s1", "n1", {"a": cluster("a", eds=False)}), 1.0)
    bad = delta_resp(CLUSTER, "s2", "n2", {"b": cluster("b", eds=False)})
    bad.resources.add(name="b", version="x").resource.Pack(cluster("b", eds=False))
    out = core.receive(bad, 2.0)
    [nack] = out.requests
    assert nack.response_nonce == "n2" and "duplicate" in nack.error_detail.message
    assert core.status()[CLUSTER].version == "s1" and set(core.resources(CLUSTER)) == {"a"}
    conflict = delta_resp(CLUSTER, "s3", "n3", {"c": cluster("c", eds=False)}, removed=["c"])
    assert "both updated and removed" in core.receive(conflict, 3.0).requests[0].error_detail.message


def test_delta_subscribe_unsubscribe_diffs() -> None:
    core = AdsProtocol(NODE, delta=True, does_not_exist_timeout=5.0)
    core.subscribe(ROUTE_CONFIGURATION, ["a"], 0.0)
    [first] = core.stream_started(0.0)
    assert list(first.resource_names_subscribe) == ["a"]
    [sub] = core.subscribe(ROUTE_CONFIGURATION, ["b"], 1.0)
    assert list(sub.resource_names_subscribe) == ["b"] and not sub.resource_names_unsubscribe
    out = core.unsubscribe(ROUTE_CONFIGURATION, ["a"], 2.0)
    assert list(out.requests[0].resource_names_unsubscribe) == ["a"]
    # a removed name we asked for is reported as does-not-exist
    evs = core.receive(delta_resp(ROUTE_CONFIGURATION, "s1", "n1", {}, removed=["b"]), 3.0).events
    assert DoesNotExist(ROUTE_CONFIGURATION, "b") in evs


# ---- node, watchers --------------------------------------------------------------------

def test_istio_node_identity_and_metadata() -> None:
    node = istio_node("10.1.2.3", "reviews-v1-abc", "bookinfo", labels={"app": "reviews"},
                      pod_ports=[{"name": "http", "containerPort": 9080, "protocol": "TCP"}])
    assert node.id == "sidecar~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
    assert node.cluster == "reviews.bookinfo" and node.user_agent_name == "sockmesh"
    md = node.metadata.fields
    assert md["NAMESPACE"].string_value == "bookinfo"
    assert md["INSTANCE_IPS"].string_value == "10.1.2.3"
    assert md["LABELS"].struct_value.fields["app"].string_value == "reviews"
    assert json.loads(md["POD_PORTS"].string_value)[0]["containerPort"] == 9080
    for key in ("ISTIO_VERSION", "CLUSTER_ID", "MESH_ID", "NAME"):
        assert md[key].string_value


def test_watchers_route_events_and_survive_a_broken_callback() -> None:
    w = Watchers()
    got: list[WatchEvent] = []
    w.add(CLUSTER, ["a"], lambda ev: (_ for _ in ()).throw(RuntimeError("boom")))
    w.add(CLUSTER, ["a"], got.append)
    w.add(CLUSTER, None, got.append)
    w.add(LISTENER, None, got.append)
    c = cluster("a")
    w.deliver([ResourceChange(CLUSTER, "1", {"a": c, "b": c}, frozenset({"z"})),
               DoesNotExist(CLUSTER, "q")])
    kinds = [(e.kind, e.name) for e in got]
    assert kinds == [(WatchEventKind.UPDATED, "a"), (WatchEventKind.UPDATED, "a"),
                     (WatchEventKind.UPDATED, "b"), (WatchEventKind.REMOVED, "z"),
                     (WatchEventKind.DOES_NOT_EXIST, "q")]


def test_referenced_name_under_wildcard_still_gets_does_not_exist() -> None:
    core, _ = started(timeout=5.0, wildcard=(CLUSTER, CLUSTER_LOAD_ASSIGNMENT))
    core.receive(sotw(CLUSTER_LOAD_ASSIGNMENT, "e1", "n0"), 0.5)
    out = core.receive(sotw(CLUSTER, "c1", "n1", cluster("svc")), 1.0)
    [eds] = [r for r in out.requests if r.type_url == CLUSTER_LOAD_ASSIGNMENT]
    assert list(eds.resource_names) == ["svc"]
    assert not core.synced()
    assert DoesNotExist(CLUSTER_LOAD_ASSIGNMENT, "svc") in core.tick(6.0).events
    assert core.synced()


def test_delta_legacy_wildcard_keeps_star_when_names_are_added() -> None:
    core, reqs = started(delta=True, wildcard=(CLUSTER,))
    assert list(reqs[0].resource_names_subscribe) == []  # legacy wildcard
    [sub] = core.subscribe(CLUSTER, ["special"], 1.0)
    assert sorted(sub.resource_names_subscribe) == ["*", "special"]
    [sub] = core.subscribe(CLUSTER, ["other"], 2.0)
    assert list(sub.resource_names_subscribe) == ["other"]  # "*" already named


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_route_wildcard_turns_into_names_once_listeners_name_routes(delta: bool) -> None:
    """istiod answers RDS by name only: a wildcard RDS subscription (xds-dump) asks by
    name once listeners name route configs, keeping what the wildcard answer brought."""
    core, reqs = started(delta=delta, wildcard=(LISTENER, ROUTE_CONFIGURATION))
    [rds_first] = [r for r in reqs if r.type_url == ROUTE_CONFIGURATION]
    names_field = "resource_names_subscribe" if delta else "resource_names"
    assert list(getattr(rds_first, names_field)) == []
    if delta:
        core.receive(delta_resp(ROUTE_CONFIGURATION, "r1", "n1", {"orphan": route("orphan")}), 1.0)
    else:
        core.receive(sotw(ROUTE_CONFIGURATION, "r1", "n1", route("orphan")), 1.0)
    resp = (delta_resp(LISTENER, "l1", "n2", {"l": listener("l", "named")}) if delta
            else sotw(LISTENER, "l1", "n2", listener("l", "named")))
    out = core.receive(resp, 2.0)
    [rds] = [r for r in out.requests if r.type_url == ROUTE_CONFIGURATION]
    assert list(getattr(rds, names_field)) == ["named"]  # no "*": asked by name
    if delta:
        assert list(rds.resource_names_unsubscribe) == []  # the legacy wildcard just ends
    assert set(core.resources(ROUTE_CONFIGURATION)) == {"orphan"}  # kept


def test_initial_fetch_timeout_releases_held_changes() -> None:
    core, _ = started(timeout=5.0)
    evs = core.receive(sotw(CLUSTER, "c1", "n1", cluster("s", eds=False)), 1.0).events
    assert evs == []  # LDS has not answered yet
    assert core.tick(4.9) == Output()
    evs = core.tick(5.0).events  # the initial fetch of LDS gave up: deliver what we have
    assert [c.type_url for c in changes(evs)] == [CLUSTER]
    assert core.status()[LISTENER].initialized


def test_dropping_listener_wildcard_also_drops_their_route_configs() -> None:
    core, _ = started(wildcard=(LISTENER,))
    core.receive(sotw(LISTENER, "l1", "n1", listener("l", "r")), 1.0)
    core.receive(sotw(ROUTE_CONFIGURATION, "r1", "n2", route("r")), 1.0)
    assert set(core.resources(ROUTE_CONFIGURATION)) == {"r"}
    out = core.unsubscribe(LISTENER, None, 2.0)
    assert core.resources(LISTENER) == {} and core.resources(ROUTE_CONFIGURATION) == {}
    [rds] = [r for r in out.requests if r.type_url == ROUTE_CONFIGURATION]
    assert list(rds.resource_names) == []  # nothing wanted any more
    by_type = {c.type_url: c.removed for c in changes(out.events)}
    assert by_type == {LISTENER: {"l"}, ROUTE_CONFIGURATION: {"r"}}


def test_sotw_named_listener_absent_from_response_does_not_exist() -> None:
    core = AdsProtocol(NODE)
    core.subscribe(LISTENER, ["wanted", "missing"], 0.0)
    [req] = core.stream_started(0.0)
    assert sorted(req.resource_names) == ["missing", "wanted"]
    evs = core.receive(sotw(LISTENER, "1", "n1", listener("wanted"), listener("extra")), 1.0).events
    assert DoesNotExist(LISTENER, "missing") in evs
    assert set(core.resources(LISTENER)) == {"wanted"}  # unrequested "extra" ignored


# ---- NACK rate limit -------------------------------------------------------------------

def reject_bad(type_url: str, resources: Mapping[str, Message]) -> None:
    bad = sorted(n for n in resources if n.startswith("bad"))
    if bad:
        raise ValueError(f"{bad[0]}: rejected by test validator")


def nacks_of(requests: list) -> list:
    return [r for r in requests if r.HasField("error_detail")]


def test_consecutive_nacks_back_off_and_echo_the_latest_nonce() -> None:
    core = AdsProtocol(NODE, validator=reject_bad, nack_backoff_initial=0.05,
                       nack_backoff_max=5.0)
    core.subscribe(CLUSTER, None, 0.0)
    core.stream_started(0.0)
    core.receive(sotw(CLUSTER, "v1", "n1", cluster("good", eds=False)), 1.0)
    # the first NACK after an ACK goes out at once
    [nack] = core.receive(sotw(CLUSTER, "v2", "n2", cluster("bad", eds=False)), 2.0).requests
    assert (nack.version_info, nack.response_nonce) == ("v1", "n2")
    # the server resends at once: the NACK waits 50 ms after the previous one
    out = core.receive(sotw(CLUSTER, "v2", "n3", cluster("bad", eds=False)), 2.01)
    assert out.requests == [] and [type(e) for e in out.events] == [Nack]
    assert core.next_deadline() == pytest.approx(2.05)
    assert core.tick(2.049).requests == []
    [nack] = core.tick(2.05).requests
    assert (nack.version_info, nack.response_nonce) == ("v1", "n3")
    assert "bad: rejected" in nack.error_detail.message
    assert core.tick(2.05).requests == []  # sent once
    # a server that pushes again while a NACK is held: one NACK, the latest nonce, on time
    assert core.receive(sotw(CLUSTER, "v3", "n4", cluster("bad", eds=False)), 2.06).requests == []
    assert core.receive(sotw(CLUSTER, "v4", "n5", cluster("bad2", eds=False)), 2.07).requests == []
    assert core.next_deadline() == pytest.approx(2.15)  # 2.05 + 100 ms
    [nack] = core.tick(2.15).requests
    assert (nack.version_info, nack.response_nonce) == ("v1", "n5")
    assert "bad2: rejected" in nack.error_detail.message
    assert set(core.resources(CLUSTER)) == {"good"}
    # an ACK resets the backoff: the next rejection is NACKed at once
    [ack] = core.receive(sotw(CLUSTER, "v5", "n6", cluster("good", eds=False)), 2.2).requests
    assert not ack.HasField("error_detail") and ack.version_info == "v5"
    assert core.next_deadline() is None
    [nack] = core.receive(sotw(CLUSTER, "v6", "n7", cluster("bad", eds=False)), 2.21).requests
    assert nack.response_nonce == "n7"


def test_server_resending_every_nack_gets_a_bounded_nack_rate() -> None:
    """go-control-plane's SotW cache answers each NACK with the same resources at once."""
    core = AdsProtocol(NODE, validator=reject_bad, nack_backoff_initial=0.05,
                       nack_backoff_max=5.0)
    core.subscribe(CLUSTER, None, 0.0)
    core.stream_started(0.0)
    now, nonce, sent_at = 1.0, 0, []
    while now < 61.0:
        nonce += 1
        out = core.receive(sotw(CLUSTER, "bad", f"n{nonce}", cluster("bad", eds=False)), now)
        while not out.requests:  # the transport sleeps until the core's next deadline
            deadline = core.next_deadline()
            assert deadline is not None
            now = deadline
            out = core.tick(now)
        [nack] = nacks_of(out.requests)
        assert nack.response_nonce == f"n{nonce}"
        sent_at.append(now)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(sent_at)]
    assert gaps[:7] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
    assert set(gaps[7:]) == {5.0}
    assert len(sent_at) <= 20  # 60 s; without the limit, one per round trip
    assert core.status()[CLUSTER].nacks == len(sent_at)


def test_delta_nacks_back_off_too() -> None:
    core, _ = started(delta=True, validator=reject_bad)
    bad = delta_resp(CLUSTER, "s1", "n1", {"bad": cluster("bad", eds=False)})
    assert [r.response_nonce for r in nacks_of(core.receive(bad, 1.0).requests)] == ["n1"]
    bad = delta_resp(CLUSTER, "s1", "n2", {"bad": cluster("bad", eds=False)})
    assert core.receive(bad, 1.01).requests == []
    [nack] = core.tick(1.05).requests
    assert nack.response_nonce == "n2" and "bad: rejected" in nack.error_detail.message


def test_subscription_change_while_a_nack_is_held_carries_the_nack() -> None:
    # SotW: a request echoing the rejected nonce without error_detail would ACK it
    core = AdsProtocol(NODE, validator=reject_bad)
    core.subscribe(CLUSTER, ["bad"], 0.0)
    core.stream_started(0.0)
    core.receive(sotw(CLUSTER, "v1", "n1", cluster("bad", eds=False)), 1.0)
    assert core.receive(sotw(CLUSTER, "v1", "n2", cluster("bad", eds=False)), 1.01).requests == []
    [req] = core.subscribe(CLUSTER, ["other"], 1.02)
    assert sorted(req.resource_names) == ["bad", "other"]
    assert req.response_nonce == "n2" and "bad: rejected" in req.error_detail.message
    deadline = core.next_deadline()
    assert deadline is None or core.tick(deadline).requests == []


def test_stream_loss_drops_a_held_nack() -> None:
    core, _ = started(validator=reject_bad)
    core.receive(sotw(CLUSTER, "v1", "n1", cluster("bad", eds=False)), 1.0)
    assert core.receive(sotw(CLUSTER, "v1", "n2", cluster("bad", eds=False)), 1.01).requests == []
    core.stream_lost()
    assert core.tick(10.0).requests == []
    reqs = core.stream_started(11.0)
    assert all(not r.HasField("error_detail") and r.response_nonce == "" for r in reqs)
