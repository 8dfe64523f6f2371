"""The thin grpc.aio transport around :class:`~xds_client.protocol.AdsProtocol`.

One ADS stream at a time (``StreamAggregatedResources`` or ``DeltaAggregatedResources``);
the protocol core decides every request, this module only moves bytes, keeps time and
reconnects.  On stream loss the last good resources stay in the cache (and with the
watchers), the client reconnects with exponential backoff and jitter (tenacity), and the
core resubscribes with the versions it knows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from xds_client.protocol import (
    DEFAULT_DOES_NOT_EXIST_TIMEOUT,
    DEFAULT_NACK_BACKOFF_INITIAL,
    DEFAULT_NACK_BACKOFF_MAX,
    AdsProtocol,
    DoesNotExist,
    Event,
    Nack,
    Request,
    Snapshot,
    TypeStatus,
    Validator,
)
from xds_client.resource_types import SHORT_NAMES
from xds_client.watchers import Watch, WatchCallback, Watchers, WatchEvent, WatchEventKind

log = logging.getLogger(__name__)

# Istio-sized responses (thousands of clusters in one message) exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class StreamFailed(Exception):
    """A stream ended before it ever delivered a response (so back off before retrying)."""


@dataclass(frozen=True)
class ClientStatus:
    """What ``sockmesh status`` and the metrics exporter show about the xDS connection."""

    server: str
    delta: bool
    connected: bool
    streams_opened: int
    last_error: str | None
    types: dict[str, TypeStatus] = field(default_factory=dict)

    @property
    def acks(self) -> int:
        """ACKs sent on all types since start."""
        return sum(t.acks for t in self.types.values())

    @property
    def nacks(self) -> int:
        """NACKs sent on all types since start."""
        return sum(t.nacks for t in self.types.values())


class _TokenAuth(grpc.AuthMetadataPlugin):
    """``authorization: Bearer <token>``, the token file read on every call (= connect),
    so a rotated projected service-account token is picked up on reconnect."""

    def __init__(self, token_file: str) -> None:
        self._token_file = token_file

    def __call__(self, context: grpc.AuthMetadataContext,
                 callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            token = Path(self._token_file).read_text().strip()
        except OSError as exc:
            callback((), exc)
            return
        callback((("authorization", f"Bearer {token}"),), None)


class XdsClient:
    """An ADS client: watches in, validated resources and events out.

    ``server`` is ``HOST:PORT``.  With ``ca_file`` the channel is TLS (verifying the server
    against that CA; ``server_name`` overrides the name checked), and ``token_file`` adds a
    bearer token read on every connect.  ``validator(type_url, resources_by_name)`` may
    raise to NACK a response; its message becomes the NACK's error_detail.  Consecutive
    NACKs of one type are spaced ``nack_backoff_initial`` doubling up to
    ``nack_backoff_max`` seconds apart (see :mod:`xds_client.protocol`).
    """

    def __init__(
        self,
        server: str,
        node: base_pb2.Node,
        *,
        delta: bool = False,
        validator: Validator | None = None,
        does_not_exist_timeout: float = DEFAULT_DOES_NOT_EXIST_TIMEOUT,
        follow_references: bool = True,
        ca_file: str | None = None,
        token_file: str | None = None,
        server_name: str | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        nack_backoff_initial: float = DEFAULT_NACK_BACKOFF_INITIAL,
        nack_backoff_max: float = DEFAULT_NACK_BACKOFF_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.delta = delta
        self.core = AdsProtocol(
            node, delta=delta, validator=validator,
            does_not_exist_timeout=does_not_exist_timeout,
            follow_references=follow_references,
            nack_backoff_initial=nack_backoff_initial,
            nack_backoff_max=nack_backoff_max,
        )
        self.watchers = Watchers()
        self._ca_file = ca_file
        self._token_file = token_file
        self._server_name = server_name
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[Request] | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._connected = False
        self._streams_opened = 0
        self._last_error: str | None = None
        self.responses_received = 0

    # ---- public API ----------------------------------------------------------------

    def watch(self, type_url: str, names: Iterable[str] | None,
              callback: WatchCallback) -> Watch:
        """Watch resources of ``type_url`` (``names`` None = all, i.e. wildcard).

        The callback gets a :class:`WatchEvent` per resource update, removal and
        does-not-exist; resources already cached are delivered right away.
        """
        names_set = None if names is None else frozenset(names)
        w = self.watchers.add(type_url, names_set, callback)
        self._send(self.core.subscribe(type_url, names_set, self._clock()))
        if self.core.warm():
            for name, msg in list(self.core.resources(type_url).items()):
                if w.matches(type_url, name):
                    Watchers._call(callback, WatchEvent(WatchEventKind.UPDATED, type_url, name, msg))
        return w

    def cancel(self, watch: Watch) -> None:
        """Stop a watch and drop its subscription (reference counted)."""
        self.watchers.remove(watch)
        out = self.core.unsubscribe(watch.type_url, watch.names, self._clock())
        self._send(out.requests)
        self._dispatch(out.events)

    def on_snapshot(self, callback: Callable[[Snapshot], None]) -> None:
        """Call ``callback`` with a consistent snapshot after each delivered change."""
        self.watchers.snapshot_listeners.append(callback)

    def on_nack(self, callback: Callable[[Nack], None]) -> None:
        """Call ``callback`` for every NACK sent."""
        self.watchers.nack_listeners.append(callback)

    def snapshot(self) -> Snapshot:
        """The last good resources of every type."""
        return self.core.snapshot()

    @property
    def status(self) -> ClientStatus:
        """Connection and per-type protocol state."""
        return ClientStatus(
            server=self.server,
            delta=self.delta,
            connected=self._connected,
            streams_opened=self._streams_opened,
            last_error=self._last_error,
            types=self.core.status(),
        )

    async def start(self) -> None:
        """Start connecting in the background (returns at once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"xds-client {self.server}")

    async def stop(self) -> None:
        """Close the stream and stop reconnecting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def wait_for(self, predicate: Callable[[XdsClient], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds, re-checked after every state change.

        Raises TimeoutError after ``timeout`` seconds.
        """
        deadline = self._clock() + timeout
        while not predicate(self):
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                continue

    async def wait_synced(self, timeout: float) -> None:
        """Wait until every subscribed resource was received (or does not exist)."""
        await self.wait_for(lambda c: c.core.synced(), timeout)

    # ---- internals -----------------------------------------------------------------

    def _notify(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    def _send(self, requests: Sequence[Request]) -> None:
        if self._queue is None:
            return
        for req in requests:
            self._queue.put_nowait(req)
        if requests:
            self._wake.set()  # new names may have started does-not-exist timers

    def _dispatch(self, events: Sequence[Event]) -> None:
        for ev in events:
            if isinstance(ev, Nack):
                log.warning("xDS NACK %s version %r (keeping %r): %s",
                            SHORT_NAMES.get(ev.type_url, ev.type_url), ev.rejected_version,
                            ev.kept_version, ev.error_detail)
            elif isinstance(ev, DoesNotExist):
                log.info("xDS %s %r does not exist", SHORT_NAMES.get(ev.type_url, ev.type_url),
                         ev.name)
        if events:
            self.watchers.deliver(events)
        self._notify()

    def _make_channel(self) -> grpc.aio.Channel:
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if self._ca_file is None:
            return grpc.aio.insecure_channel(self.server, options=options)
        creds = grpc.ssl_channel_credentials(root_certificates=Path(self._ca_file).read_bytes())
        if self._token_file is not None:
            creds = grpc.composite_channel_credentials(
                creds, grpc.metadata_call_credentials(_TokenAuth(self._token_file)))
        if self._server_name:
            options.append(("grpc.ssl_target_name_override", self._server_name))
        return grpc.aio.secure_channel(self.server, creds, options=options)

    def _call_metadata(self) -> list[tuple[str, str]] | None:
        # Over TLS the token travels as call credentials; gRPC refuses those on plaintext
        # channels, so there it goes as plain call metadata.
        if self._token_file is None or self._ca_file is not None:
            return None
        token = Path(self._token_file).read_text().strip()
        return [("authorization", f"Bearer {token}")]

    def _before_sleep(self, state: RetryCallState) -> None:
        delay = state.next_action.sleep if state.next_action else 0.0
        # the first failure of a run is news; the retries after it are not
        level = logging.WARNING if state.attempt_number == 1 else logging.INFO
        log.log(level, "xDS stream to %s failed (%s); retrying in %.2f s",
                    self.server, self._last_error, delay)

    async def _run(self) -> None:
        while True:
            retrying = AsyncRetrying(
                # exponential with jitter, so a fleet of agents does not reconnect in step
                wait=wait_exponential(multiplier=self._backoff_initial, max=self._backoff_max)
                + wait_random(0, self._backoff_initial),
                retry=retry_if_exception_type(StreamFailed),
                before_sleep=self._before_sleep,
            )
            # Returns when a stream that worked ends; failing attempts back off inside.
            await retrying(self._one_stream)
            log.warning("xDS stream to %s lost (%s); reconnecting", self.server, self._last_error)
            # A stream that worked resets the backoff, but never reconnect in a tight loop.
            await asyncio.sleep(self._backoff_initial)

    async def _one_stream(self) -> None:
        channel = self._make_channel()
        queue: asyncio.Queue[Request] = asyncio.Queue()
        helpers: list[asyncio.Task[None]] = []
        healthy = False
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            method = (stub.DeltaAggregatedResources if self.delta
                      else stub.StreamAggregatedResources)
            call = method(metadata=self._call_metadata())
            self._streams_opened += 1
            self._queue = queue
            self._send(self.core.stream_started(self._clock()))
            helpers = [asyncio.create_task(self._writer(call, queue)),
                       asyncio.create_task(self._ticker())]
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    self._last_error = "server closed the stream"
                    break
                if not healthy:
                    healthy = True
                    self._connected = True
                    self._last_error = None
                self.responses_received += 1
                out = self.core.receive(resp, self._clock())
                self._send(out.requests)
                self._dispatch(out.events)
                if not out.requests:
                    self._wake.set()  # a NACK held back (rate limit) has a new deadline
        except grpc.aio.AioRpcError as exc:
            self._last_error = f"{exc.code().name}: {exc.details()}"
        except OSError as exc:  # e.g. an unreadable token file
            self._last_error = str(exc)
        finally:
            self._queue = None
            for t in helpers:
                t.cancel()
            self.core.stream_lost()
            self._connected = False
            self._notify()
            await channel.close(grace=None)
        if not healthy:
            raise StreamFailed(self._last_error or "stream failed")

    async def _writer(self, call: grpc.aio.StreamStreamCall, queue: asyncio.Queue[Request]
                      ) -> None:
        while True:
            req = await queue.get()
            try:
                await call.write(req)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                # the reader sees the same failure and ends the stream
                log.debug("xDS write failed: %s", exc)
                return

    async def _ticker(self) -> None:
        """Fire does-not-exist deadlines and send held NACKs; woken early when new timers
        start."""
        while True:
            deadline = self.core.next_deadline()
            wait = 1.0 if deadline is None else max(0.0, deadline - self._clock())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(wait, 1.0))
            except TimeoutError:
                pass
            out = self.core.tick(self._clock())
            self._send(out.requests)
            # tick may also end an initial fetch without events: always notify waiters
            self._dispatch(out.events)
