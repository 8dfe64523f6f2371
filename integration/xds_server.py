"""The embedded ADS server: serves a ResourceSet over SotW and delta xDS.

Layout (sans-I/O core, thin grpc.aio edge, after go-control-plane's cache/server split):

* :class:`Snapshot` is an immutable view of what is served: per type URL, a version and
  an ordered list of entries (name, ``Any``, per-resource content hash).
* :class:`SotwStreamState` and :class:`DeltaStreamState` are plain state machines for one
  ADS stream.  They take requests and snapshots and return the responses to send, reporting
  ACK/NACK through a callback.  They never touch the network (tests/unit drive them).
* :class:`AdsServer` owns a grpc.aio server; each stream is one task that feeds its state
  machine from a queue (requests, snapshot changes, "drop") so all state changes of a stream
  happen in one place, in order.

Protocol choices, following Envoy's xds_protocol doc:

* SotW: the first request of a type on a stream is always answered (even if its
  ``version_info`` matches; a restarted server may reuse version strings).  LDS/CDS
  responses carry every resource; RDS/EDS only the names asked for (all when the client
  asks for none or for ``*``).  A request whose ``response_nonce`` is the last nonce sent
  for its type is an ACK, or a NACK when ``error_detail`` is set; stale nonces are ignored.
  A type is re-sent only when its version changes or the client's name set changes.
* Delta: per-stream subscriptions (wildcard when the first request names nothing or names
  ``*``) and the versions the client holds (``initial_resource_versions`` plus what was
  sent); a response carries only resources whose version differs and ``removed_resources``
  for names the client holds that are gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any as AnyType
from typing import TypeVar

import grpc
import yaml
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from translator.resources import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    RESOURCE_TYPES,
    ROUTE_CONFIGURATION,
    ResourceError,
    ResourceSet,
    parse_config_dump,
    parse_resource,
    resource_name,
    type_url_of,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Types whose SotW responses always carry every resource (Envoy's xds_protocol doc).
FULL_STATE_TYPES = frozenset({LISTENER, CLUSTER})
# Push order on a snapshot change: clusters and endpoints before listeners and routes,
# so a client that applies in arrival order never points at a missing cluster.
PUSH_ORDER = (CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION)



@dataclass(frozen=True)
class AckEvent:
    """One ACK or NACK received from a client.

    ``version`` is the request's ``version_info`` for SotW (the version the client now
    holds; on a NACK its last good one) and the ``system_version_info`` of the acknowledged
    response for delta (delta requests carry no version).
    """

    type_url: str
    node_id: str
    version: str
    nonce: str
    ack: bool
    error_detail: str | None
    delta: bool


@dataclass(frozen=True)
class Entry:
    """One served resource: its name ("" when the payload cannot be decoded), payload, hash."""

    name: str
    resource: any_pb2.Any
    version: str


@dataclass(frozen=True)
class TypeSnapshot:
    """The resources of one type and the snapshot version in which they last changed."""

    version: str
    entries: tuple[Entry, ...] = ()

    def content_key(self) -> tuple[tuple[str, str, str], ...]:
        return tuple((e.name, e.resource.type_url, e.version) for e in self.entries)


@dataclass(frozen=True)
class Snapshot:
    """What the server serves: a global version and one TypeSnapshot per type URL."""

    version: str
    types: dict[str, TypeSnapshot] = field(default_factory=dict)

    def get(self, type_url: str) -> TypeSnapshot:
        """The resources of ``type_url`` (empty at version "" when never set)."""
        return self.types.get(type_url, TypeSnapshot(version=""))


def _content_hash(a: any_pb2.Any) -> str:
    return hashlib.sha256(a.type_url.encode() + b"\0" + a.value).hexdigest()[:16]


def _name_of_any(a: any_pb2.Any) -> str:
    """The resource name inside ``a``, or "" when its type is unknown or it does not decode."""
    cls = RESOURCE_TYPES.get(a.type_url)
    if cls is None:
        return ""
    msg = cls()
    try:
        msg.ParseFromString(a.value)
    except DecodeError:
        return ""
    return resource_name(msg)


def pack(msg: Message) -> any_pb2.Any:
    """Pack a resource into an ``Any`` with deterministic bytes (stable content hashes)."""
    a = any_pb2.Any()
    a.Pack(msg, deterministic=True)
    return a


def entries_from_any(resources: Iterable[any_pb2.Any]) -> tuple[Entry, ...]:
    """Entries for raw payloads, kept in the given order (duplicates included)."""
    return tuple(Entry(_name_of_any(a), a, _content_hash(a)) for a in resources)


def entries_from_set(resources: ResourceSet, type_url: str) -> tuple[Entry, ...]:
    """Entries of one type of a ResourceSet, sorted by name."""
    out = []
    for name, msg in sorted(resources.by_type(type_url).items()):
        a = pack(msg)
        out.append(Entry(name, a, _content_hash(a)))
    return tuple(out)


# ---------------------------------------------------------------------------------------
# Sans-I/O stream state machines


AckCallback = Callable[[AckEvent], None]


@dataclass
class _SotwTypeState:
    names: frozenset[str] = frozenset()
    wildcard: bool = True
    nonce: str = ""  # last nonce sent for this type
    sent_version: str | None = None  # type version of the last response
    sent_names: frozenset[str] = frozenset()
    sent_wildcard: bool = True


class SotwStreamState:
    """The state of one SotW ADS stream: subscriptions per type, nonces, ACK tracking."""

    def __init__(self, next_nonce: Callable[[], str], on_ack: AckCallback) -> None:
        self._next_nonce = next_nonce
        self._on_ack = on_ack
        self.node_id = ""
        self.types: dict[str, _SotwTypeState] = {}

    def on_request(self, req: DiscoveryRequest, snap: Snapshot) -> list[DiscoveryResponse]:
        """Handle one request; return the responses to send (zero or one)."""
        if req.HasField("node") and req.node.id:
            self.node_id = req.node.id
        type_url = req.type_url
        names = frozenset(req.resource_names)
        st = self.types.get(type_url)
        # "*" asks for everything; so does an empty first request (legacy wildcard), but an
        # empty list after named subscriptions means "none any more" (xds_protocol doc).
        wildcard = (type_url in FULL_STATE_TYPES or "*" in names
                    or (not names and (st is None or st.wildcard)))
        if st is None:
            if req.response_nonce:
                # A nonce from an earlier stream (or another server): a new subscription.
                log.debug("sotw %s: nonce %s from an earlier stream", type_url, req.response_nonce)
            st = self.types[type_url] = _SotwTypeState(names=names - {"*"}, wildcard=wildcard)
            return self._respond(type_url, st, snap)
        if req.response_nonce and req.response_nonce != st.nonce:
            # Stale: the client has not seen our latest response yet; it will answer that one.
            log.debug("sotw %s: stale nonce %s (latest %s)", type_url, req.response_nonce, st.nonce)
            return []
        if req.response_nonce:
            nack = req.HasField("error_detail")
            detail = req.error_detail.message if nack else None
            self._on_ack(AckEvent(type_url, self.node_id, req.version_info, req.response_nonce,
                                  not nack, detail, False))
        st.names, st.wildcard = names - {"*"}, wildcard
        if not st.wildcard and not st.names:
            st.sent_names, st.sent_wildcard = st.names, st.wildcard
            return []  # unsubscribed from everything: nothing to send
        if st.names != st.sent_names or st.wildcard != st.sent_wildcard:
            return self._respond(type_url, st, snap)
        return []

    def on_snapshot(self, snap: Snapshot) -> list[DiscoveryResponse]:
        """Responses for every subscribed type whose version changed."""
        out: list[DiscoveryResponse] = []
        for type_url in sorted(self.types, key=_push_rank):
            st = self.types[type_url]
            subscribed = st.wildcard or st.names
            if subscribed and snap.get(type_url).version != st.sent_version:
                out.extend(self._respond(type_url, st, snap))
        return out

    def _respond(self, type_url: str, st: _SotwTypeState,
                 snap: Snapshot) -> list[DiscoveryResponse]:
        ts = snap.get(type_url)
        if st.wildcard:
            entries = ts.entries
        else:
            # Undecodable payloads (no name) go to everyone: tests serve them on purpose.
            entries = tuple(e for e in ts.entries if not e.name or e.name in st.names)
        st.nonce = self._next_nonce()
        st.sent_version = ts.version
        st.sent_names, st.sent_wildcard = st.names, st.wildcard
        resp = DiscoveryResponse(version_info=ts.version, type_url=type_url, nonce=st.nonce,
                                 resources=[e.resource for e in entries])
        return [resp]


@dataclass
class _DeltaTypeState:
    wildcard: bool = False
    legacy_wildcard: bool = False  # wildcard only because the first request named nothing
    names: set[str] = field(default_factory=set)
    # name -> version the client holds (what it told us plus what we sent)
    known: dict[str, str] = field(default_factory=dict)
    # nonce -> system_version_info of responses not yet ACKed/NACKed
    pending: dict[str, str] = field(default_factory=dict)


class DeltaStreamState:
    """The state of one delta (incremental) ADS stream."""

    MAX_PENDING_NONCES = 64  # a client that never answers must not grow us without bound

    def __init__(self, next_nonce: Callable[[], str], on_ack: AckCallback) -> None:
        self._next_nonce = next_nonce
        self._on_ack = on_ack
        self.node_id = ""
        self.types: dict[str, _DeltaTypeState] = {}

    def on_request(self, req: DeltaDiscoveryRequest,
                   snap: Snapshot) -> list[DeltaDiscoveryResponse]:
        """Handle one request (ACK/NACK and/or subscription change); return responses."""
        if req.HasField("node") and req.node.id:
            self.node_id = req.node.id
        type_url = req.type_url
        st = self.types.get(type_url)
        first = st is None
        if st is None:
            st = self.types[type_url] = _DeltaTypeState()
            st.known.update(req.initial_resource_versions)
            subscribe = set(req.resource_names_subscribe)
            st.wildcard = not subscribe or "*" in subscribe
            st.legacy_wildcard = not subscribe
        elif st.legacy_wildcard and req.resource_names_subscribe:
            # Naming resources ends a legacy wildcard unless "*" is named too (xds_protocol).
            st.wildcard = st.legacy_wildcard = False
        if req.response_nonce:
            version = st.pending.pop(req.response_nonce, None)
            if version is not None:
                nack = req.HasField("error_detail")
                detail = req.error_detail.message if nack else None
                self._on_ack(AckEvent(type_url, self.node_id, version, req.response_nonce,
                                      not nack, detail, True))
        for name in req.resource_names_subscribe:
            if name == "*":
                st.wildcard = True
            else:
                st.names.add(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                st.wildcard = False
            else:
                st.names.discard(name)
                # Forgotten by the client: a later re-subscribe must send it again.
                st.known.pop(name, None)
        return self._respond(type_url, st, snap, always=first and st.wildcard)

    def on_snapshot(self, snap: Snapshot) -> list[DeltaDiscoveryResponse]:
        """Responses carrying what changed for each subscribed type."""
        out: list[DeltaDiscoveryResponse] = []
        for type_url in sorted(self.types, key=_push_rank):
            out.extend(self._respond(type_url, self.types[type_url], snap, always=False))
        return out

    def _respond(self, type_url: str, st: _DeltaTypeState, snap: Snapshot,
                 always: bool) -> list[DeltaDiscoveryResponse]:
        ts = snap.get(type_url)
        by_name: dict[str, list[Entry]] = {}
        for e in ts.entries:
            by_name.setdefault(e.name, []).append(e)
        send: list[discovery_pb2.Resource] = []
        for name, group in by_name.items():
            if not (st.wildcard or name in st.names or not name):
                continue
            version = group[0].version if len(group) == 1 else _content_hash_many(group)
            if st.known.get(name) == version:
                continue
            st.known[name] = version
            # Duplicates of one name all go out: a client must see (and reject) them.
            send.extend(discovery_pb2.Resource(name=e.name, version=e.version, resource=e.resource)
                        for e in group)
        removed = sorted(n for n in st.known if n and n not in by_name
                         and (st.wildcard or n in st.names))
        for n in removed:
            del st.known[n]
        if not send and not removed and not always:
            return []
        nonce = self._next_nonce()
        if len(st.pending) >= self.MAX_PENDING_NONCES:
            st.pending.pop(next(iter(st.pending)))
        st.pending[nonce] = ts.version
        return [DeltaDiscoveryResponse(system_version_info=ts.version, type_url=type_url,
                                       nonce=nonce, resources=send, removed_resources=removed)]


def _content_hash_many(group: Sequence[Entry]) -> str:
    return hashlib.sha256("".join(e.version for e in group).encode()).hexdigest()[:16]


def _push_rank(type_url: str) -> int:
    return PUSH_ORDER.index(type_url) if type_url in PUSH_ORDER else len(PUSH_ORDER)


# ---------------------------------------------------------------------------------------
# grpc.aio edge

_DROP = object()
_EOF = object()
_WAKE = object()


class _Stream:
    """Glue between one gRPC stream and its state machine."""

    def __init__(self, delta: bool, number: int) -> None:
        self.delta = delta
        self.number = number
        self.queue: asyncio.Queue[AnyType] = asyncio.Queue()


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """An ADS server (SotW and delta) for LDS, RDS, CDS and EDS, for tests and standalone use."""

    def __init__(self, resources: ResourceSet | None = None) -> None:
        self.events: list[AckEvent] = []
        self.requests: list[DiscoveryRequest | DeltaDiscoveryRequest] = []
        # request_streams[i]: the number (1, 2, ...) of the stream that carried requests[i],
        # so a test can tell a late ACK on a dropped stream from a resubscription.
        self.request_streams: list[int] = []
        self.streams_opened = 0
        self._counter = itertools.count(1)
        self._nonces = itertools.count(1)
        self._snapshot = Snapshot(version="")
        self._streams: set[_Stream] = set()
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._lock = threading.Lock()
        if resources is None:
            # Nothing to serve yet: every type empty at version "0" (not a pushed version).
            self._snapshot = Snapshot("0", {t: TypeSnapshot("0") for t in PUSH_ORDER})
        else:
            self.set_resources(resources)

    # -- snapshot management ----------------------------------------------------------

    @property
    def version(self) -> str:
        """The current snapshot version."""
        return self._snapshot.version

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot being served."""
        return self._snapshot

    def set_resources(self, resources: ResourceSet) -> str:
        """Serve ``resources`` as a new snapshot; push changed types; return the new version."""
        return self._update({t: entries_from_set(resources, t) for t in PUSH_ORDER})

    def set_raw(self, type_url: str, resources: list[any_pb2.Any]) -> str:
        """Serve ``resources`` verbatim for ``type_url`` (may be invalid, duplicate, wrong type)."""
        return self._update({type_url: entries_from_any(resources)})

    def _update(self, changes: dict[str, tuple[Entry, ...]]) -> str:
        with self._lock:
            version = str(next(self._counter))
            types = dict(self._snapshot.types)
            for type_url, entries in changes.items():
                old = types.get(type_url)
                new = TypeSnapshot(version, entries)
                if old is not None and old.content_key() == new.content_key():
                    continue  # unchanged type: keep its version, nothing to push
                types[type_url] = new
            self._snapshot = Snapshot(version, types)
        log.debug("snapshot version %s: %s", version, ", ".join(
            f"{t.rsplit('.', 1)[-1]}={len(s.entries)}@{s.version}" for t, s in types.items()))
        self._broadcast(_WAKE)
        return version

    def drop_streams(self) -> None:
        """Abort every open stream with UNAVAILABLE; clients must reconnect."""
        self._broadcast(_DROP)

    def _broadcast(self, item: object) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def put() -> None:
            for s in list(self._streams):
                s.queue.put_nowait(item)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            put()
        else:
            loop.call_soon_threadsafe(put)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 picks a free port); return the bound port."""
        if self._server is not None:
            raise RuntimeError("AdsServer already started")
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        # No SO_REUSEPORT: a second server on a busy port must fail, not split the clients.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        bound = server.add_insecure_port(f"{_bracket(host)}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        await server.start()
        self._server = server
        self.port = bound
        log.info("ADS server listening on %s:%d", host, bound)
        return bound

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving; open streams end (after ``grace`` seconds when given)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if grace is None:
            self._broadcast(_DROP)
        await server.stop(grace)

    # -- ACK/NACK bookkeeping -------------------------------------------------------------

    def _record(self, ev: AckEvent) -> None:
        self.events.append(ev)
        kind = "ACK" if ev.ack else "NACK"
        variant = "delta" if ev.delta else "sotw"
        short = ev.type_url.rsplit(".", 1)[-1]
        if ev.ack:
            log.info("%s %s %s from node %r version %r nonce %s", variant, kind, short,
                     ev.node_id, ev.version, ev.nonce)
        else:
            log.warning("%s %s %s from node %r version %r nonce %s: %s", variant, kind, short,
                        ev.node_id, ev.version, ev.nonce, ev.error_detail)
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def wait_for(self, predicate: Callable[[AckEvent], bool], timeout: float) -> AckEvent:
        """The first event (already received or arriving within ``timeout`` s) that matches.

        Past events count, so a fast client cannot race the caller; put the version or
        nonce into ``predicate`` to wait for a specific response.
        """
        return await self._wait(self.events, predicate, timeout, "xDS ACK/NACK", _describe)

    async def wait_for_request(
        self, predicate: Callable[[DiscoveryRequest | DeltaDiscoveryRequest], bool],
        timeout: float, start: int = 0,
    ) -> DiscoveryRequest | DeltaDiscoveryRequest:
        """The first received request from index ``start`` of ``requests`` that matches."""
        return await self._wait(self.requests, predicate, timeout, "xDS request",
                                lambda r: f"{r.type_url.rsplit('.', 1)[-1]} "
                                          f"nonce={r.response_nonce!r}", start)

    async def _wait(self, items: list[_T], predicate: Callable[[_T], bool], timeout: float,
                    what: str, describe: Callable[[_T], str], start: int = 0) -> _T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = start
        while True:
            for item in items[seen:]:
                if predicate(item):
                    return item
            seen = max(seen, len(items))
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = "; ".join(describe(i) for i in items[-8:]) or "none"
                raise TimeoutError(f"no matching {what} within {timeout}s (last: {recent})")
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    # -- gRPC handlers -------------------------------------------------------------------

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """SotW ADS stream."""
        await self._serve(request_iterator, context, SotwStreamState(self._nonce, self._record))

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Incremental (delta) ADS stream."""
        await self._serve(request_iterator, context, DeltaStreamState(self._nonce, self._record))

    def _nonce(self) -> str:
        return str(next(self._nonces))

    async def _serve(self, request_iterator: AsyncIterator[AnyType], context: grpc.aio.ServicerContext,
                     state: SotwStreamState | DeltaStreamState) -> None:
        # A coroutine handler writing with context.write (not an async generator): grpc can
        # cancel it cleanly at any await.
        delta = isinstance(state, DeltaStreamState)
        self.streams_opened += 1
        stream = _Stream(delta, self.streams_opened)
        self._streams.add(stream)

        async def read() -> None:
            try:
                async for req in request_iterator:
                    self.requests.append(req)
                    self.request_streams.append(stream.number)
                    self._notify()
                    stream.queue.put_nowait(req)
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            finally:
                stream.queue.put_nowait(_EOF)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await stream.queue.get()
                if item is _EOF:
                    return
                if item is _DROP:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "stream dropped by server")
                if item is _WAKE:
                    responses = state.on_snapshot(self._snapshot)
                else:
                    responses = state.on_request(item, self._snapshot)
                for resp in responses:
                    log.debug("%s send %s version %s nonce %s (%d resources)",
                              "delta" if delta else "sotw", resp.type_url,
                              getattr(resp, "version_info", "")
                              or getattr(resp, "system_version_info", ""),
                              resp.nonce, len(resp.resources))
                    await context.write(resp)
        finally:
            self._streams.discard(stream)
            reader.cancel()


def _describe(ev: AckEvent) -> str:
    kind = "ACK" if ev.ack else f"NACK({ev.error_detail})"
    return f"{kind} {ev.type_url.rsplit('.', 1)[-1]} v{ev.version} node={ev.node_id}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# ---------------------------------------------------------------------------------------
# Config files: a config dump or a directory of resource files, polled for changes

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


class ConfigError(ValueError):
    """A config path that cannot be served; the message names the file and the field."""


def config_files(path: Path) -> list[Path]:
    """The files that make up ``path``: itself, or the directory's resource files by name."""
    if path.is_dir():
        return sorted(p for p in path.iterdir()
                      if p.is_file() and p.suffix in CONFIG_SUFFIXES and not p.name.startswith("."))
    return [path]


def config_fingerprint(path: Path) -> str:
    """A hash of the names and contents of ``path``'s files ("" when unreadable)."""
    h = hashlib.sha256()
    try:
        for p in config_files(path):
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    except OSError:
        return ""
    return h.hexdigest()


def _decode(p: Path) -> list[AnyType]:
    """The documents of one JSON or YAML file."""
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    try:
        if p.suffix == ".json":
            return [json.loads(text)]
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                          f"{exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: invalid YAML{at}: {problem}") from None


def _resource_objects(doc: AnyType, where: str) -> list[tuple[str, AnyType]]:
    """(location, object) pairs of a document: one resource, a list, or {"resources": [...]}."""
    if isinstance(doc, list):
        return [(f"{where}[{i}]", o) for i, o in enumerate(doc)]
    if isinstance(doc, dict) and "@type" not in doc and isinstance(doc.get("resources"), list):
        return [(f"{where} resources[{i}]", o) for i, o in enumerate(doc["resources"])]
    return [(where, doc)]


def load_config(path: Path) -> ResourceSet:
    """Parse a config dump file or a directory of resource files into a ResourceSet.

    Raises ConfigError naming the file (and, for a bad resource, the resource and field).
    A name defined twice (in one file or across files) is an error, whoever wins would be
    an accident of file order.
    """
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    files = config_files(path)
    if path.is_dir() and not files:
        raise ConfigError(f"{path}: no *.json, *.yaml or *.yml files in the directory")
    out = ResourceSet()
    origin: dict[tuple[str, str], str] = {}
    for p in files:
        docs = _decode(p)
        for d, doc in enumerate(docs):
            where = str(p) if len(docs) == 1 else f"{p} document {d}"
            try:
                if isinstance(doc, dict) and "configs" in doc:
                    part = parse_config_dump(doc, where)
                    msgs = [(f"{where} {resource_name(m)!r}", m) for _, _, m in part.items()]
                    out.unknown_extensions |= part.unknown_extensions
                else:
                    msgs = [(loc, parse_resource(obj, loc, out.unknown_extensions))
                            for loc, obj in _resource_objects(doc, where)]
            except ResourceError as exc:
                # json_format appends the full list of valid fields; the first line says it all.
                raise ConfigError(str(exc).splitlines()[0]) from None
            for loc, msg in msgs:
                key = (type_url_of(type(msg)), resource_name(msg))
                if key in origin:
                    raise ConfigError(f"{loc}: duplicate {type(msg).__name__} name "
                                      f"{key[1]!r} (first defined in {origin[key]})")
                origin[key] = loc
                out.add(msg, loc)
    return out


class ConfigWatcher:
    """Polls a config path and serves each good version; a broken one keeps the last good."""

    def __init__(self, server: AdsServer, path: Path, interval: float = 0.5) -> None:
        self.server = server
        self.path = path
        self.interval = interval
        self.fingerprint = ""
        self.last_error: str | None = None

    def poll(self) -> bool:
        """Reload when the files changed; True when a new version is now served."""
        fp = config_fingerprint(self.path)
        if fp == self.fingerprint:
            return False
        self.fingerprint = fp
        try:
            resources = load_config(self.path)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error("config not loaded, still serving version %s: %s", self.server.version, exc)
            return False
        self.last_error = None
        version = self.server.set_resources(resources)
        log.info("serving version %s from %s: %d listeners, %d route configs, %d clusters, "
                    "%d endpoint assignments", version, self.path, len(resources.listeners),
                    len(resources.route_configs), len(resources.clusters),
                    len(resources.endpoints))
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            self.poll()
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass
