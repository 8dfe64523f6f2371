"""Who wants to hear about which resources, and how events reach them.

Pure bookkeeping, no I/O: the client feeds protocol events in, callbacks come out.
A callback that raises is logged and does not disturb the stream or other watchers.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message

from xds_client.protocol import DoesNotExist, Event, Nack, ResourceChange, Snapshot

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class WatchEventKind(enum.Enum):
    """What happened to one watched resource."""

    UPDATED = "updated"
    REMOVED = "removed"
    DOES_NOT_EXIST = "does_not_exist"


@dataclass(frozen=True)
class WatchEvent:
    """One resource-level event for a watcher."""

    kind: WatchEventKind
    type_url: str
    name: str
    resource: Message | None = None


WatchCallback = Callable[[WatchEvent], None]


@dataclass(eq=False)
class Watch:
    """A registered watch; ``names`` None means every resource of the type."""

    type_url: str
    names: frozenset[str] | None
    callback: WatchCallback

    def matches(self, type_url: str, name: str) -> bool:
        return self.type_url == type_url and (self.names is None or name in self.names)


class Watchers:
    """Registered watches plus snapshot and NACK listeners; delivers protocol events."""

    def __init__(self) -> None:
        self.watches: list[Watch] = []
        self.snapshot_listeners: list[Callable[[Snapshot], None]] = []
        self.nack_listeners: list[Callable[[Nack], None]] = []

    def add(self, type_url: str, names: Iterable[str] | None, callback: WatchCallback) -> Watch:
        """Register a watch (the caller subscribes the names with the protocol)."""
        w = Watch(type_url, None if names is None else frozenset(names), callback)
        self.watches.append(w)
        return w

    def remove(self, watch: Watch) -> None:
        """Unregister a watch; unknown watches are ignored."""
        if watch in self.watches:
            self.watches.remove(watch)

    def deliver(self, events: Iterable[Event]) -> None:
        """Hand each event to whoever registered for it, in order."""
        for ev in events:
            if isinstance(ev, ResourceChange):
                for name, msg in ev.updated.items():
                    self._to_watches(WatchEvent(WatchEventKind.UPDATED, ev.type_url, name, msg))
                for name in sorted(ev.removed):
                    self._to_watches(WatchEvent(WatchEventKind.REMOVED, ev.type_url, name))
            elif isinstance(ev, DoesNotExist):
                self._to_watches(
                    WatchEvent(WatchEventKind.DOES_NOT_EXIST, ev.type_url, ev.name))
            elif isinstance(ev, Snapshot):
                for cb in list(self.snapshot_listeners):
                    self._call(cb, ev)
            elif isinstance(ev, Nack):
                for ncb in list(self.nack_listeners):
                    self._call(ncb, ev)

    def _to_watches(self, wev: WatchEvent) -> None:
        for w in list(self.watches):
            if w.matches(wev.type_url, wev.name):
                self._call(w.callback, wev)

    @staticmethod
    def _call(cb: Callable[[_T], None], arg: _T) -> None:
        try:
            cb(arg)
        except Exception:  # a broken watcher must not break the stream
            log.exception("xDS watcher %r failed", cb)
