"""Property tests of the protocol core: random response sequences against a plain model.

Whatever a server sends, each response is answered at most once echoing its nonce (a
valid one at once; a NACK at once or, rate limited, later with the latest nonce, unless a
newer response came first), NACKs without an ACK between them are spaced by the backoff,
the last response is always answered, the version moves only on ACK, a NACK never changes
the cache, SotW cluster responses are the complete state while route responses merge, and
delta ends in the model's state (also the versions offered after a reconnect).
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.unit.test_xds_protocol import (
    BROKEN_ANY,
    NODE,
    cla,
    cluster,
    delta_resp,
    listener,
    pack,
    route,
    sotw,
)
from xds_client.protocol import AdsProtocol, Request, ResourceChange, Snapshot
from xds_client.resource_types import (
    APPLY_ORDER,
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    eds_name_of,
    resource_name,
    route_names_of,
)

NAMES = ["a", "b", "c", "d", "e"]
# responses arrive faster than the NACK backoff, so NACKs are both sent at once and held
STEP = 0.02
NACK_INITIAL, NACK_MAX = 0.05, 0.2


def new_core(delta: bool = False) -> AdsProtocol:
    return AdsProtocol(NODE, delta=delta, nack_backoff_initial=NACK_INITIAL,
                       nack_backoff_max=NACK_MAX)


class Transport:
    """Feeds responses ``STEP`` apart, ticking the core at its deadlines in between like the
    grpc transport, and checks what is sent against the protocol rules."""

    def __init__(self, core: AdsProtocol, type_url: str) -> None:
        self.core, self.type_url = core, type_url
        self.now = 0.0
        self.nonce = ""
        self.last_nack_at: float | None = None  # None after an ACK

    def _sent(self, reqs: list[Request], now: float) -> list[Request]:
        mine = [r for r in reqs if r.type_url == self.type_url]
        for r in mine:
            assert r.response_nonce == self.nonce  # always the latest nonce
            if r.HasField("error_detail"):
                if self.last_nack_at is not None:
                    assert now - self.last_nack_at >= NACK_INITIAL - 1e-9
                self.last_nack_at = now
            else:
                self.last_nack_at = None
        return mine

    def _tick_until(self, until: float) -> list[Request]:
        sent = []
        deadline = self.core.next_deadline()
        while deadline is not None and deadline <= until:
            sent += self._sent(self.core.tick(deadline).requests, deadline)
            deadline = self.core.next_deadline()
        return sent

    def answer(self, resp: object, nonce: str) -> list[Request]:
        """The request(s) of our type answering ``resp`` before the next response is due."""
        self.now += STEP
        assert self._tick_until(self.now) == []  # held NACKs went out before
        self.nonce = nonce
        sent = self._sent(self.core.receive(resp, self.now).requests, self.now)  # type: ignore[arg-type]
        return sent + self._tick_until(self.now + STEP - 1e-9)

    def drain(self) -> list[Request]:
        """Everything still held, sent when due."""
        return self._tick_until(self.now + 10 * NACK_MAX)


# one step: (valid?, names in the response)
steps = st.lists(st.tuples(st.booleans(), st.sets(st.sampled_from(NAMES))), max_size=25)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_sotw_cluster_responses(seq: list[tuple[bool, set[str]]]) -> None:
    core = new_core()
    core.subscribe(CLUSTER, None, 0.0)
    core.stream_started(0.0)
    io = Transport(core, CLUSTER)
    model: set[str] = set()
    good = ""
    for i, (valid, names) in enumerate(seq):
        version, nonce = f"v{i}", f"n{i}"
        resources = [pack(cluster(n, eds=False)) for n in sorted(names)]
        if not valid:
            resources.append(BROKEN_ANY)
        reqs = io.answer(sotw(CLUSTER, version, nonce, *resources), nonce)
        if valid:
            model, good = set(names), version
        assert len(reqs) == 1 or (not valid and reqs == [])  # a NACK may be held
        if reqs:
            event("answered before the next response")
            assert reqs[0].HasField("error_detail") is not valid
            assert reqs[0].version_info == good
        else:
            event("NACK held past the next response")
        assert set(core.resources(CLUSTER)) == model
    if seq:  # the last response is answered, held or not
        assert [r.version_info for r in reqs + io.drain()] == [good]
    st_ = core.status()[CLUSTER]
    assert st_.acks + st_.nacks == len(seq)
    assert st_.nacks == sum(1 for v, _ in seq if not v)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_sotw_route_responses_merge(seq: list[tuple[bool, set[str]]]) -> None:
    wanted = {"a", "b", "c"}
    core = new_core()
    core.subscribe(ROUTE_CONFIGURATION, wanted, 0.0)
    core.stream_started(0.0)
    io = Transport(core, ROUTE_CONFIGURATION)
    model: dict[str, str] = {}
    for i, (valid, names) in enumerate(seq):
        resources = [pack(route(n, cluster=f"c{i}")) for n in sorted(names)]
        if not valid and resources:
            resources.append(resources[0])  # a duplicate name
        elif not valid:
            resources.append(BROKEN_ANY)
        reqs = io.answer(sotw(ROUTE_CONFIGURATION, f"v{i}", f"n{i}", *resources), f"n{i}")
        assert len(reqs) == 1 or (not valid and reqs == [])
        if valid:
            model.update({n: f"c{i}" for n in names if n in wanted})
        got = {n: rc.virtual_hosts[0].routes[0].route.cluster  # type: ignore[attr-defined]
               for n, rc in core.resources(ROUTE_CONFIGURATION).items()}
        assert got == model
    if seq:
        assert len(reqs + io.drain()) == 1


delta_steps = st.lists(
    st.tuples(st.booleans(), st.sets(st.sampled_from(NAMES)), st.sets(st.sampled_from(NAMES))),
    max_size=25)


@settings(max_examples=150, deadline=None)
@given(delta_steps)
def test_delta_cluster_responses(seq: list[tuple[bool, set[str], set[str]]]) -> None:
    core = new_core(delta=True)
    core.subscribe(CLUSTER, None, 0.0)
    core.stream_started(0.0)
    io = Transport(core, CLUSTER)
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
        reqs = io.answer(resp, f"n{i}")
        assert len(reqs) == 1 or (not valid and reqs == [])
        assert all(r.HasField("error_detail") is not valid for r in reqs)
        if valid:
            for n in removals:
                model.pop(n, None)
            model.update({n: f"{n}@{version}" for n in updates})
            good = version
        assert set(core.resources(CLUSTER)) == set(model)
        assert core.status()[CLUSTER].version == good
    if seq:
        assert len(reqs + io.drain()) == 1
    core.stream_lost()
    [first] = core.stream_started(100.0)
    assert dict(first.initial_resource_versions) == model


ROUTES = ["r1", "r2", "r3"]
CLUSTERS = ["c1", "c2", "c3"]
# one server push: (type, names); a listener "l-rX" names route config rX
pushes = st.lists(st.one_of(
    st.tuples(st.just(LISTENER), st.sets(st.sampled_from(ROUTES))),
    st.tuples(st.just(ROUTE_CONFIGURATION), st.sets(st.sampled_from(ROUTES))),
    st.tuples(st.just(CLUSTER), st.sets(st.sampled_from(CLUSTERS))),
    st.tuples(st.just(CLUSTER_LOAD_ASSIGNMENT), st.sets(st.sampled_from(CLUSTERS))),
), max_size=30)


@settings(max_examples=120, deadline=None)
@given(pushes, st.booleans())
def test_delivered_snapshots_are_closed_under_references(
        seq: list[tuple[str, set[str]]], delta: bool) -> None:
    """Whatever order the server pushes in, a delivered snapshot never holds a listener
    whose route config is missing or an EDS cluster without endpoints, and each delivery
    lists clusters and endpoints before listeners and routes."""
    core = AdsProtocol(NODE, delta=delta)
    core.subscribe(LISTENER, None, 0.0)
    core.subscribe(CLUSTER, None, 0.0)
    core.stream_started(0.0)
    build = {
        LISTENER: lambda n: listener(f"l-{n}", n),
        ROUTE_CONFIGURATION: lambda n: route(n),
        CLUSTER: lambda n: cluster(n),
        CLUSTER_LOAD_ASSIGNMENT: lambda n: cla(n),
    }
    # end with everything referenceable sent: then nothing may stay held back (liveness)
    seq = [*seq, (CLUSTER_LOAD_ASSIGNMENT, set(CLUSTERS)), (ROUTE_CONFIGURATION, set(ROUTES))]
    for i, (type_url, names) in enumerate(seq):
        msgs = {resource_name(m): m for m in (build[type_url](n) for n in sorted(names))}
        if delta:
            held = set(core.resources(type_url))
            removed = sorted(held - set(msgs)) if type_url in (LISTENER, CLUSTER) else []
            resp = delta_resp(type_url, f"v{i}", f"n{i}", msgs, removed=removed)
        else:
            resp = sotw(type_url, f"v{i}", f"n{i}", *msgs.values())
        out = core.receive(resp, float(i))
        order = [APPLY_ORDER.index(e.type_url) for e in out.events
                 if isinstance(e, ResourceChange)]
        assert order == sorted(order)
        for ev in out.events:
            if not isinstance(ev, Snapshot):
                continue
            event("a snapshot was delivered")
            routes, endpoints = ev.of(ROUTE_CONFIGURATION), ev.of(CLUSTER_LOAD_ASSIGNMENT)
            for lis in ev.of(LISTENER).values():
                assert route_names_of(lis) <= set(routes)  # type: ignore[arg-type]
            for c in ev.of(CLUSTER).values():
                assert eds_name_of(c) in endpoints  # type: ignore[arg-type]
    answered = {t for t, _ in seq}
    if LISTENER in answered and CLUSTER in answered:
        assert core.synced()  # everything ACKed was delivered
    # the cache itself always follows references exactly
    wanted_routes = set().union(*(route_names_of(v) for v in core.resources(LISTENER).values()))
    assert set(core.resources(ROUTE_CONFIGURATION)) <= wanted_routes
