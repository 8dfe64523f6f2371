"""The ADS protocol as a plain state machine: no sockets, no clock, no threads.

The transport feeds it what happened (stream up, a response arrived, time passed, the
stream died) and writes out the requests it returns; watchers receive the events it
returns.  Everything the xDS protocol asks of a client lives here, so it is tested
without a network (see tests/unit/test_xds_protocol.py):

* every response is ACKed or NACKed echoing its nonce; the version advances only on ACK
  and a NACK carries the last good version plus ``error_detail`` (INVALID_ARGUMENT);
* a response is rejected as a whole when any resource in it has the wrong type URL,
  does not decode, has no name, or repeats a name, or when the pluggable validator
  raises; the cache then keeps the last good resources;
* SotW: a Listener/Cluster response is the complete state (absent = removed); for
  RouteConfiguration/ClusterLoadAssignment absent names are not removals;
* delta: resources/removed_resources, per-resource versions, system_version_info, and
  ``initial_resource_versions`` plus subscribe/unsubscribe on a new stream;
* references are followed: Listeners name the RouteConfigurations to fetch, EDS
  Clusters the ClusterLoadAssignments, and names no longer referenced are unsubscribed;
* make-before-break: changes are held while a referenced route config or an EDS
  cluster's endpoints are still missing, then delivered clusters and endpoints first;
* a watched name not received ``does_not_exist_timeout`` seconds after it was
  requested on a live stream is reported as does-not-exist;
* consecutive NACKs of one type are rate limited: the first goes out at once, each next
  one no sooner than ``nack_backoff_initial`` (doubling up to ``nack_backoff_max``) after
  the previous, because a SotW server that answers every NACK with the same rejected
  resources (go-control-plane's snapshot cache does) would otherwise loop as fast as the
  network allows.  A held NACK is sent with the latest nonce; an ACK resets the backoff.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2

from xds_client.resource_types import (
    APPLY_ORDER,
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    MESSAGE_CLASSES,
    RESOURCE_WRAPPER,
    ROUTE_CONFIGURATION,
    SHORT_NAMES,
    WILDCARD_TYPES,
    eds_name_of,
    resource_name,
    route_names_of,
)

DEFAULT_DOES_NOT_EXIST_TIMEOUT = 15.0
# Spacing of consecutive NACKs of one type: 50 ms after the first, doubling up to 5 s
DEFAULT_NACK_BACKOFF_INITIAL = 0.05
DEFAULT_NACK_BACKOFF_MAX = 5.0

Validator = Callable[[str, Mapping[str, Message]], None]
Request: TypeAlias = discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest

# which type a resource's references point into
_REFERENCED_TYPE = {LISTENER: ROUTE_CONFIGURATION, CLUSTER: CLUSTER_LOAD_ASSIGNMENT}


class ResourceRejected(Exception):
    """A response that must be NACKed; the message becomes the NACK's error_detail."""


@dataclass(frozen=True)
class ResourceChange:
    """Resources of one type that were added/changed or removed by ACKed responses."""

    type_url: str
    version: str
    updated: Mapping[str, Message]
    removed: frozenset[str]


@dataclass(frozen=True)
class Nack:
    """A rejected response: what was rejected, why, and which version is still served."""

    type_url: str
    nonce: str
    rejected_version: str
    kept_version: str
    error_detail: str


@dataclass(frozen=True)
class DoesNotExist:
    """A watched resource the server did not send in time (or that it said is gone)."""

    type_url: str
    name: str


@dataclass(frozen=True)
class Snapshot:
    """A consistent view after a delivered change: type URL -> {name: resource}."""

    resources: Mapping[str, Mapping[str, Message]]
    versions: Mapping[str, str]

    def of(self, type_url: str) -> Mapping[str, Message]:
        """Resources of one type (empty when none)."""
        return self.resources.get(type_url, {})


Event: TypeAlias = ResourceChange | Nack | DoesNotExist | Snapshot


@dataclass
class Output:
    """What the transport must do after feeding the core: send these, deliver those."""

    requests: list[Request] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class TypeStatus:
    """Per-type protocol state for ``sockmesh status`` and metrics."""

    type_url: str
    wildcard: bool
    subscribed: frozenset[str]
    version: str
    nonce: str
    resources: int
    acks: int
    nacks: int
    last_nack: str | None
    initialized: bool
    does_not_exist: frozenset[str]


@dataclass
class _TypeState:
    type_url: str
    wildcard_refs: int = 0
    explicit: Counter[str] = field(default_factory=Counter)
    derived: set[str] = field(default_factory=set)
    version: str = ""
    nonce: str = ""
    resources: dict[str, Message] = field(default_factory=dict)
    raw: dict[str, bytes] = field(default_factory=dict)  # serialized form, to spot changes
    resource_versions: dict[str, str] = field(default_factory=dict)  # delta
    refs: dict[str, set[str]] = field(default_factory=dict)  # name -> names it references
    dne: set[str] = field(default_factory=set)
    timers: dict[str, float] = field(default_factory=dict)  # name -> does-not-exist deadline
    init_deadline: float | None = None
    initialized: bool = False
    # per stream
    sent: bool = False
    sent_names: set[str] = field(default_factory=set)
    sent_wildcard: bool = False
    sent_star: bool = False  # delta: "*" named explicitly (not the legacy empty list)
    acks: int = 0
    nacks: int = 0
    last_nack: str | None = None
    # NACK rate limit: NACK requests sent since the last ACK, when the last one went out,
    # and a NACK waiting for its turn (its error detail and when it is due)
    nack_streak: int = 0
    last_nack_sent: float = 0.0
    held_nack: str | None = None
    nack_due: float | None = None

    @property
    def wildcard(self) -> bool:
        return self.wildcard_refs > 0

    def wanted(self) -> set[str]:
        return set(self.explicit) | self.derived

    @property
    def ask_wildcard(self) -> bool:
        # Envoy asks for listeners and clusters by wildcard, route configs and endpoints by
        # name.  A wildcard on the latter is asked for only while no names are wanted:
        # servers like istiod answer named RDS/EDS requests only, and what the wildcard
        # answer brought stays cached (for these types absence is not removal).
        return self.wildcard and (self.type_url in WILDCARD_TYPES or not self.wanted())

    def subscribed(self) -> bool:
        return self.wildcard or bool(self.explicit) or bool(self.derived)

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.explicit or name in self.derived


@dataclass
class _Pending:
    updated: dict[str, Message] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)


class AdsProtocol:
    """Client side of one ADS stream at a time, SotW or delta; see the module docstring.

    ``now`` arguments are seconds on any monotonic clock the caller chooses.
    """

    def __init__(
        self,
        node: base_pb2.Node,
        *,
        delta: bool = False,
        validator: Validator | None = None,
        does_not_exist_timeout: float = DEFAULT_DOES_NOT_EXIST_TIMEOUT,
        follow_references: bool = True,
        nack_backoff_initial: float = DEFAULT_NACK_BACKOFF_INITIAL,
        nack_backoff_max: float = DEFAULT_NACK_BACKOFF_MAX,
    ) -> None:
        self.node = node
        self.delta = delta
        self.validator = validator
        self.does_not_exist_timeout = does_not_exist_timeout
        self.follow_references = follow_references
        self.nack_backoff_initial = nack_backoff_initial
        self.nack_backoff_max = nack_backoff_max
        self._types: dict[str, _TypeState] = {t: _TypeState(t) for t in APPLY_ORDER}
        self._pending: dict[str, _Pending] = {}
        self._stream_up = False
        self._node_sent = False

    # ---- subscriptions -------------------------------------------------------------

    def subscribe(self, type_url: str, names: Iterable[str] | None, now: float) -> list[Request]:
        """Add interest in ``names`` (None = wildcard); returns requests to send now."""
        st = self._state(type_url)
        if names is None:
            st.wildcard_refs += 1
        else:
            st.explicit.update(set(names))
        return self._resubscribe(st, now)

    def unsubscribe(self, type_url: str, names: Iterable[str] | None, now: float) -> Output:
        """Drop interest taken by :meth:`subscribe` (reference counted)."""
        st = self._state(type_url)
        if names is None:
            st.wildcard_refs = max(0, st.wildcard_refs - 1)
        else:
            for n in set(names):
                if st.explicit[n] > 1:
                    st.explicit[n] -= 1
                else:
                    st.explicit.pop(n, None)
        out = Output(self._resubscribe(st, now))
        self._forget_unwanted(st, now, out)
        out.events.extend(self._flush_if_warm())
        return out

    def _state(self, type_url: str) -> _TypeState:
        st = self._types.get(type_url)
        if st is None:
            raise ValueError(f"unsupported xDS type {type_url!r}")
        return st

    def _resubscribe(self, st: _TypeState, now: float) -> list[Request]:
        if not self._stream_up:
            return []
        if not st.sent:
            if not st.subscribed():
                return []  # never send a first request without names: that means wildcard
            return [self._first_request(st, now)]
        wanted = st.wanted()
        # newly wanted names get a does-not-exist clock even when the request does not
        # change (a wildcard subscription already covers them)
        self._start_timers(st, wanted, now)
        if self.delta:
            add = wanted - st.sent_names
            drop = st.sent_names - wanted
            ask_wildcard = st.ask_wildcard
            # A legacy (empty-list) wildcard ends once names are named, so keep it with "*".
            if ask_wildcard and (not st.sent_wildcard or (add and not st.sent_star)):
                add.add("*")
            if st.sent_star and not ask_wildcard:
                drop.add("*")
            if not add and not drop:
                return []
            st.sent_names = set(wanted)
            st.sent_wildcard = ask_wildcard
            st.sent_star = ask_wildcard and (st.sent_star or "*" in add)
            return [discovery_pb2.DeltaDiscoveryRequest(
                type_url=st.type_url,
                resource_names_subscribe=sorted(add),
                resource_names_unsubscribe=sorted(drop),
            )]
        new_names = set() if st.ask_wildcard else wanted
        if st.sent_wildcard == st.ask_wildcard and new_names == st.sent_names:
            return []
        if st.held_nack is not None:
            # a SotW request echoing the rejected nonce without error_detail would ACK it
            return [self._release_nack(st, now)]
        return [self._sotw_request(st)]

    # ---- stream lifecycle ----------------------------------------------------------

    def stream_started(self, now: float) -> list[Request]:
        """A new stream is open: the initial requests, with the versions we know."""
        self._stream_up = True
        self._node_sent = False
        reqs: list[Request] = []
        for type_url in APPLY_ORDER:
            st = self._types[type_url]
            if st.subscribed():
                reqs.append(self._first_request(st, now))
        return reqs

    def stream_lost(self) -> None:
        """The stream died: nonces and timers are per stream, the cache is kept."""
        self._stream_up = False
        for st in self._types.values():
            st.nonce = ""
            st.sent = False
            st.sent_names = set()
            st.sent_wildcard = False
            st.sent_star = False
            st.timers.clear()
            st.init_deadline = None
            st.held_nack = None  # its nonce belonged to the old stream
            st.nack_due = None

    @property
    def stream_up(self) -> bool:
        """Whether a stream is currently open."""
        return self._stream_up

    def _first_request(self, st: _TypeState, now: float) -> Request:
        st.sent = True
        wanted = st.wanted()
        if not st.initialized:
            st.init_deadline = now + self.does_not_exist_timeout
        self._start_timers(st, wanted, now)
        if self.delta:
            names = set(wanted)
            # Plain wildcard is an empty first list; "*" is needed once names are added too.
            if st.ask_wildcard and names:
                names.add("*")
            st.sent_names = set(wanted)
            st.sent_wildcard = st.ask_wildcard
            st.sent_star = "*" in names
            req = discovery_pb2.DeltaDiscoveryRequest(
                type_url=st.type_url,
                resource_names_subscribe=sorted(names),
                initial_resource_versions=dict(st.resource_versions),
            )
            return self._with_node(req)
        return self._sotw_request(st)

    def _sotw_request(self, st: _TypeState, error: str | None = None) -> Request:
        names = set() if st.ask_wildcard else st.wanted()
        st.sent_names = names
        st.sent_wildcard = st.ask_wildcard
        req = discovery_pb2.DiscoveryRequest(
            type_url=st.type_url,
            version_info=st.version,
            response_nonce=st.nonce,
            resource_names=sorted(names),
        )
        if error is not None:
            req.error_detail.code = code_pb2.INVALID_ARGUMENT
            req.error_detail.message = error
        return self._with_node(req)

    def _with_node(self, req: Request) -> Request:
        # The node goes on the first request of a stream only (Envoy does the same).
        if not self._node_sent:
            req.node.CopyFrom(self.node)
            self._node_sent = True
        return req

    def _start_timers(self, st: _TypeState, names: Iterable[str], now: float) -> None:
        for n in names:
            if n not in st.resources and n not in st.dne and n not in st.timers:
                st.timers[n] = now + self.does_not_exist_timeout

    # ---- responses -----------------------------------------------------------------

    def receive(
        self,
        resp: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse,
        now: float,
    ) -> Output:
        """Process one response: the ACK or NACK to send, and the events to deliver."""
        if isinstance(resp, discovery_pb2.DeltaDiscoveryResponse):
            return self._receive_delta(resp, now)
        return self._receive_sotw(resp, now)

    def _unexpected(self, type_url: str, nonce: str, version: str) -> Output:
        detail = f"unexpected response for type {type_url!r} that was not subscribed"
        req: Request
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
        else:
            req = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce)
        req.error_detail.code = code_pb2.INVALID_ARGUMENT
        req.error_detail.message = detail
        return Output([req], [Nack(type_url, nonce, version, "", detail)])

    def _decode(self, st: _TypeState, index: int, res: any_pb2.Any) -> tuple[Message, bytes]:
        kind = SHORT_NAMES[st.type_url]
        if res.type_url != st.type_url:
            raise ResourceRejected(
                f"{kind} resource #{index}: type {res.type_url!r} in a response for "
                f"{st.type_url!r}"
            )
        try:
            msg = MESSAGE_CLASSES[st.type_url].FromString(res.value)
        except DecodeError as exc:
            raise ResourceRejected(f"{kind} resource #{index}: cannot decode: {exc}") from None
        return msg, res.value

    def _decode_sotw(self, st: _TypeState, resources: Iterable[any_pb2.Any]
                     ) -> tuple[dict[str, Message], dict[str, bytes]]:
        kind = SHORT_NAMES[st.type_url]
        decoded: dict[str, Message] = {}
        raw: dict[str, bytes] = {}
        for i, res in enumerate(resources):
            wrapped_name = ""
            if res.type_url == RESOURCE_WRAPPER:
                try:
                    wrapper = discovery_pb2.Resource.FromString(res.value)
                except DecodeError as exc:
                    raise ResourceRejected(f"{kind} resource #{i}: cannot decode: {exc}") from None
                if not wrapper.HasField("resource"):
                    continue  # a TTL heartbeat: nothing to apply
                wrapped_name = wrapper.name
                res = wrapper.resource
            msg, value = self._decode(st, i, res)
            name = resource_name(msg)
            if not name:
                raise ResourceRejected(f"{kind} resource #{i}: has no name")
            if wrapped_name and wrapped_name != name:
                raise ResourceRejected(
                    f"{kind} resource #{i}: wrapper name {wrapped_name!r} != {name!r}")
            if name in decoded:
                raise ResourceRejected(f"{kind}: duplicate resource name {name!r} in one response")
            decoded[name] = msg
            raw[name] = value
        return decoded, raw

    def _validate(self, type_url: str, decoded: Mapping[str, Message]) -> None:
        if self.validator is None:
            return
        try:
            self.validator(type_url, decoded)
        except ResourceRejected:
            raise
        except Exception as exc:  # any validator failure is a NACK, never a crash
            raise ResourceRejected(str(exc) or type(exc).__name__) from exc

    def _nack(self, st: _TypeState, rejected_version: str, detail: str, now: float
              ) -> Output:
        st.nacks += 1
        st.last_nack = detail
        # A rejected first response still ends the initial fetch (Envoy does the same).
        newly_initialized = not st.initialized
        st.initialized = True
        st.init_deadline = None
        events: list[Event] = [Nack(st.type_url, st.nonce, rejected_version, st.version,
                                    detail)]
        if newly_initialized:
            events.extend(self._flush_if_warm())
        st.held_nack = detail
        if st.nack_due is None:
            st.nack_due = self._next_nack_time(st)
        if st.nack_due > now:
            return Output([], events)  # tick() sends it when due
        return Output([self._release_nack(st, now)], events)

    def _next_nack_time(self, st: _TypeState) -> float:
        """When the next NACK of ``st`` may go out: at once after an ACK, else the backoff
        after the previous NACK."""
        if st.nack_streak == 0:
            return float("-inf")
        delay = self.nack_backoff_initial * 2.0 ** (st.nack_streak - 1)
        return st.last_nack_sent + min(delay, self.nack_backoff_max)

    def _release_nack(self, st: _TypeState, now: float) -> Request:
        """The held NACK as a request, echoing the latest nonce and the last good version."""
        detail = st.held_nack or ""
        st.held_nack = None
        st.nack_due = None
        st.nack_streak += 1
        st.last_nack_sent = now
        if not self.delta:
            return self._sotw_request(st, error=detail)
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=st.type_url, response_nonce=st.nonce)
        req.error_detail.code = code_pb2.INVALID_ARGUMENT
        req.error_detail.message = detail
        return req

    def _acked(self, st: _TypeState, version: str) -> None:
        st.version = version
        st.acks += 1
        st.initialized = True
        st.init_deadline = None
        # an ACK supersedes a held NACK (it echoes a newer nonce) and resets the backoff
        st.held_nack = None
        st.nack_due = None
        st.nack_streak = 0

    def _receive_sotw(self, resp: discovery_pb2.DiscoveryResponse, now: float) -> Output:
        st = self._types.get(resp.type_url)
        if st is None or not st.sent:
            return self._unexpected(resp.type_url, resp.nonce, resp.version_info)
        st.nonce = resp.nonce  # the nonce always advances, ACK or NACK
        try:
            decoded, raw = self._decode_sotw(st, resp.resources)
            self._validate(st.type_url, decoded)
        except ResourceRejected as exc:
            return self._nack(st, resp.version_info, str(exc), now)

        events: list[Event] = []
        wanted_names = None if st.wildcard else st.wanted()
        if wanted_names is not None:
            # the server may send more than we asked for; keep what we asked for
            decoded = {n: m for n, m in decoded.items() if n in wanted_names}
        updated = {n: m for n, m in decoded.items() if st.raw.get(n) != raw[n]}
        removed: set[str] = set()
        if st.type_url in WILDCARD_TYPES:
            # complete state: whatever is absent is gone
            removed = set(st.resources) - set(decoded)
            if wanted_names is not None:
                for n in sorted(wanted_names - set(decoded)):
                    if n not in st.dne:
                        st.dne.add(n)
                        st.timers.pop(n, None)
                        events.append(DoesNotExist(st.type_url, n))
            st.resources = dict(decoded)
            st.raw = {n: raw[n] for n in decoded}
        else:
            st.resources.update(decoded)
            st.raw.update((n, raw[n]) for n in decoded)
        for n in decoded:
            st.timers.pop(n, None)
            st.dne.discard(n)
        self._acked(st, resp.version_info)
        out = Output([self._sotw_request(st)], events)
        self._apply(st, updated, removed, now, out)
        return out

    def _receive_delta(self, resp: discovery_pb2.DeltaDiscoveryResponse, now: float) -> Output:
        st = self._types.get(resp.type_url)
        if st is None or not st.sent:
            return self._unexpected(resp.type_url, resp.nonce, resp.system_version_info)
        st.nonce = resp.nonce
        kind = SHORT_NAMES[st.type_url]
        decoded: dict[str, Message] = {}
        raw: dict[str, bytes] = {}
        versions: dict[str, str] = {}
        try:
            for i, res in enumerate(resp.resources):
                if not res.HasField("resource"):
                    continue  # a TTL heartbeat for a resource we already have
                msg, value = self._decode(st, i, res.resource)
                name = resource_name(msg) or res.name
                if not name:
                    raise ResourceRejected(f"{kind} resource #{i}: has no name")
                if res.name and res.name != name:
                    raise ResourceRejected(
                        f"{kind} resource #{i}: Resource.name {res.name!r} != {name!r}")
                if name in decoded:
                    raise ResourceRejected(
                        f"{kind}: duplicate resource name {name!r} in one response")
                decoded[name] = msg
                raw[name] = value
                versions[name] = res.version
            removed_names = set(resp.removed_resources)
            removed_names.update(r.name for r in resp.removed_resource_names)
            both = removed_names & set(decoded)
            if both:
                raise ResourceRejected(
                    f"{kind}: {sorted(both)} both updated and removed in one response")
            self._validate(st.type_url, decoded)
        except ResourceRejected as exc:
            return self._nack(st, resp.system_version_info, str(exc), now)

        events: list[Event] = []
        decoded = {n: m for n, m in decoded.items() if st.wants(n)}
        updated = {n: m for n, m in decoded.items() if st.raw.get(n) != raw[n]}
        for n in decoded:
            st.resources[n] = decoded[n]
            st.raw[n] = raw[n]
            st.resource_versions[n] = versions[n]
            st.timers.pop(n, None)
            st.dne.discard(n)
        removed: set[str] = set()
        for n in sorted(removed_names):
            if n in st.resources:
                del st.resources[n]
                st.raw.pop(n, None)
                st.resource_versions.pop(n, None)
                removed.add(n)
            elif st.wants(n) and n not in st.dne and not st.wildcard:
                st.dne.add(n)
                st.timers.pop(n, None)
                events.append(DoesNotExist(st.type_url, n))
        self._acked(st, resp.system_version_info)
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=st.type_url, response_nonce=resp.nonce)
        out = Output([ack], events)
        self._apply(st, updated, removed, now, out)
        return out

    # ---- applying ACKed changes ----------------------------------------------------

    def _apply(self, st: _TypeState, updated: dict[str, Message], removed: set[str],
               now: float, out: Output) -> None:
        """Queue an ACKed change, follow references, deliver if everything is warm."""
        self._queue(st.type_url, updated, removed)
        self._follow(st, updated, removed, now, out)
        out.events.extend(self._flush_if_warm())

    def _follow(self, st: _TypeState, updated: Mapping[str, Message], removed: set[str],
                now: float, out: Output) -> None:
        """Keep the referenced type's subscription equal to what ``st`` refers to."""
        target_type = _REFERENCED_TYPE.get(st.type_url)
        if not self.follow_references or target_type is None or not (updated or removed):
            return
        for n in removed:
            st.refs.pop(n, None)
        for n, msg in updated.items():
            st.refs[n] = self._references(st.type_url, msg)
        target = self._types[target_type]
        derived: set[str] = set()
        for names in st.refs.values():
            derived |= names
        if derived != target.derived:
            target.derived = derived
            out.requests.extend(self._resubscribe(target, now))
            self._forget_unwanted(target, now, out)

    @staticmethod
    def _references(type_url: str, msg: Message) -> set[str]:
        if type_url == LISTENER:
            return route_names_of(msg)  # type: ignore[arg-type]
        eds = eds_name_of(msg)  # type: ignore[arg-type]
        return {eds} if eds else set()

    def _forget_unwanted(self, st: _TypeState, now: float, out: Output) -> None:
        """Drop cached resources nobody wants any more (they count as removed), and
        with them what they referenced."""
        if st.wildcard:
            return
        wanted = st.wanted()
        gone = {n for n in st.resources if n not in wanted}
        for n in gone:
            del st.resources[n]
            st.raw.pop(n, None)
            st.resource_versions.pop(n, None)
        st.dne &= wanted
        for n in [n for n in st.timers if n not in wanted]:
            del st.timers[n]
        if gone:
            self._queue(st.type_url, {}, gone)
            self._follow(st, {}, gone, now, out)

    def _queue(self, type_url: str, updated: Mapping[str, Message], removed: set[str]) -> None:
        if not updated and not removed:
            return
        p = self._pending.setdefault(type_url, _Pending())
        for n, m in updated.items():
            p.updated[n] = m
            p.removed.discard(n)
        for n in removed:
            p.updated.pop(n, None)
            p.removed.add(n)

    def warm(self) -> bool:
        """True when every subscribed type had its first answer and every referenced
        route config and EDS cluster's endpoints are present (or known not to exist)."""
        for st in self._types.values():
            if st.subscribed() and not st.initialized:
                return False
        for type_url in (ROUTE_CONFIGURATION, CLUSTER_LOAD_ASSIGNMENT):
            st = self._types[type_url]
            for n in st.derived:
                if n not in st.resources and n not in st.dne:
                    return False
        return True

    def _flush_if_warm(self) -> list[Event]:
        if not self._pending or not self.warm():
            return []
        events: list[Event] = []
        for type_url in APPLY_ORDER:  # clusters and endpoints before listeners and routes
            p = self._pending.pop(type_url, None)
            if p is not None and (p.updated or p.removed):
                events.append(ResourceChange(
                    type_url, self._types[type_url].version, dict(p.updated),
                    frozenset(p.removed)))
        self._pending.clear()
        if events:
            events.append(self.snapshot())
        return events

    # ---- time ----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (None: nothing is waiting)."""
        deadlines = [d for st in self._types.values() for d in st.timers.values()]
        deadlines += [st.init_deadline for st in self._types.values()
                      if st.init_deadline is not None]
        deadlines += [st.nack_due for st in self._types.values() if st.nack_due is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> Output:
        """Send NACKs whose backoff ended; fire does-not-exist for names whose deadline
        passed; deliver what that unblocks."""
        out = Output()
        if not self._stream_up:
            return out
        events = out.events
        for st in self._types.values():
            if st.nack_due is not None and st.nack_due <= now:
                out.requests.append(self._release_nack(st, now))
            for n, deadline in sorted(st.timers.items()):
                if deadline <= now:
                    del st.timers[n]
                    if n not in st.resources:
                        st.dne.add(n)
                        events.append(DoesNotExist(st.type_url, n))
            if st.init_deadline is not None and st.init_deadline <= now:
                st.init_deadline = None
                st.initialized = True
        events.extend(self._flush_if_warm())
        return out

    # ---- views ---------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The current cache: last good resources of every type."""
        return Snapshot(
            {t: dict(st.resources) for t, st in self._types.items()},
            {t: st.version for t, st in self._types.items()},
        )

    def resources(self, type_url: str) -> Mapping[str, Message]:
        """Last good resources of one type (read-only view; do not mutate)."""
        return self._state(type_url).resources

    def cluster_ready(self, name: str) -> bool:
        """A cluster may be used: known, and for EDS clusters its endpoints arrived."""
        cluster = self._types[CLUSTER].resources.get(name)
        if cluster is None:
            return False
        eds = eds_name_of(cluster)  # type: ignore[arg-type]
        return eds is None or eds in self._types[CLUSTER_LOAD_ASSIGNMENT].resources

    def synced(self) -> bool:
        """Everything subscribed was answered and delivered: nothing pending."""
        if not self._stream_up or self._pending or not self.warm():
            return False
        for st in self._types.values():
            if not st.subscribed():
                continue
            if not st.sent:
                return False
            if any(n not in st.resources and n not in st.dne for n in st.wanted()):
                return False
        return True

    def status(self) -> dict[str, TypeStatus]:
        """Per-type protocol state, keyed by type URL."""
        return {
            t: TypeStatus(
                type_url=t,
                wildcard=st.wildcard,
                subscribed=frozenset(st.wanted()),
                version=st.version,
                nonce=st.nonce,
                resources=len(st.resources),
                acks=st.acks,
                nacks=st.nacks,
                last_nack=st.last_nack,
                initialized=st.initialized,
                does_not_exist=frozenset(st.dne),
            )
            for t, st in self._types.items()
        }
