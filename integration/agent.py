"""The node agent: xDS client -> translator -> eBPF datapath, plus metrics and status.

Data flow: the :class:`~xds_client.XdsClient` validates every response with the translator
(a resource the translator rejects is NACKed with the TranslationError message, so the last
good config keeps serving) and delivers a consistent snapshot after each ACKed change.  The
agent keeps one :class:`~translator.TableBuilder` holding the translation of every resource
the client accepted: validating a response feeds only the resources that changed into it,
all or nothing (``TableBuilder.update``), so a NACK leaves it as it was and nothing is
translated twice.  Each snapshot takes the builder's tables; the datapath gets them with the
diff against what it holds and writes only that diff into the kernel maps.  Snapshots that
arrive while one is being applied are coalesced: only the newest is applied next, in order,
from one worker.

Make-before-break is the datapath's job inside ``apply`` (clusters and endpoints are written
before the services and routes that point at them) and the xDS client's before that (CDS/EDS
are delivered before LDS/RDS, and a cluster is not part of a snapshot before its endpoints).

Lifecycle: ``start()`` loads the datapath (adopting pinned state left by an agent that was
killed), then connects; ``stop(detach=True)`` detaches and unpins (SIGTERM);
``stop(detach=False)`` leaves programs and maps pinned so the next agent adopts them.

Fail open: when the datapath cannot be loaded (not root, no BPF, a verifier error), the
agent says why, keeps its xDS side running (status, metrics and NACKs stay useful for the
operator) and programs nothing: the application's connections are not intercepted at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from envoy.config.core.v3 import base_pb2
from google.protobuf.message import Message

from translator import TableBuilder, TablesDiff, diff_tables
from translator.tables import Tables
from xds_client import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    Nack,
    Snapshot,
    XdsClient,
)
from xds_client.resource_types import SHORT_NAMES

log = logging.getLogger(__name__)

# datapath counter reasons that mean "this request was handed to the user-space slow path"
# (the others count framing events, not requests); names as bpf.limits.REASONS spells them
SLOW_PATH_REASONS = frozenset({
    "not_http", "parse_limit", "pipelined", "pool_empty", "rule_user", "route_user",
    "no_route", "limit", "chunked_req", "no_host", "sticky",
})
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/sockmesh")
DEFAULT_ADMIN_ADDR = ("127.0.0.1", 15090)


class Datapath(Protocol):
    """What the agent needs from bpf's datapath (bpf.Datapath implements it)."""

    def load(self) -> object: ...

    def apply(self, tables: Tables, diff: TablesDiff | None = None) -> Any: ...

    def close(self, detach: bool = True) -> None: ...


DatapathFactory = Callable[[list[Path], Path, str | None], Datapath]


def default_datapath(cgroups: list[Path], pin_dir: Path,
                     splice_addr: str | None = None) -> Datapath:
    """bpf's datapath on ``cgroups`` with maps pinned under ``pin_dir`` and its splice
    listener on ``splice_addr`` (None: loopback), its sockets held by the socket keeper so
    that they survive the agent (integration/kept_datapath.py)."""
    # imported late: the xDS side of the agent runs without bpf's dependencies (libbpf, bcc)
    from integration.kept_datapath import KeptDatapath

    return KeptDatapath(cgroups, pin_dir, splice_addr)


@dataclass
class AgentConfig:
    """Everything ``sockmesh run`` configures."""

    server: str
    node: base_pb2.Node
    cgroups: list[Path] = field(default_factory=list)
    pin_dir: Path = DEFAULT_PIN_DIR
    delta: bool = False
    admin_addr: tuple[str, int] | None = DEFAULT_ADMIN_ADDR
    ca_file: str | None = None
    token_file: str | None = None
    server_name: str | None = None
    does_not_exist_timeout: float = 15.0
    backoff_max: float = 10.0
    # False: run the xDS side only (no kernel), e.g. to check what a control plane sends
    datapath: bool = True
    # IPv4 address of the splice listener (None: loopback); a hostNetwork node agent whose
    # applications live in pod network namespaces gives the node IP
    splice_addr: str | None = None


@dataclass
class ApplyRecord:
    """One snapshot the agent translated and handed to the datapath (or failed to)."""

    versions: dict[str, str]
    started: float  # time.time()
    seconds: float
    error: str | None = None
    services: int = 0
    route_tables: int = 0
    clusters: int = 0
    endpoints: int = 0


RESOURCE_TYPES = (CLUSTER_LOAD_ASSIGNMENT, CLUSTER, ROUTE_CONFIGURATION, LISTENER)


class Agent:
    """One node agent.  ``await start()``, then ``await stop()``."""

    def __init__(self, config: AgentConfig,
                 datapath_factory: DatapathFactory = default_datapath) -> None:
        self.config = config
        self._factory = datapath_factory
        self.client = XdsClient(
            config.server, config.node, delta=config.delta,
            validator=self._validate,
            does_not_exist_timeout=config.does_not_exist_timeout,
            ca_file=config.ca_file, token_file=config.token_file,
            server_name=config.server_name, backoff_max=config.backoff_max,
        )
        self.datapath: Datapath | None = None
        self.datapath_error: str | None = None
        self.started_at = time.time()
        # the translation of every resource the client holds (validated and ACKed), and the
        # very messages it was given, per type; both touched on the event loop only
        self._builder = TableBuilder()
        self._fed: dict[str, dict[str, Message]] = {t: {} for t in RESOURCE_TYPES}
        # what the datapath holds (rows shared with the builder's); the next diff's base
        self.tables: Tables | None = None
        self._diff_ok = False  # the datapath holds exactly self.tables
        self.applied: ApplyRecord | None = None
        self.applies = 0
        self.apply_errors = 0
        self.last_apply_error: ApplyRecord | None = None
        self.last_nack: dict[str, Any] | None = None
        self.nack_count = 0
        self._latest: tuple[dict[str, str], Tables] | None = None
        self._pending = asyncio.Event()
        self._applied_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.admin: Any = None  # integration.admin.AdminServer when serving
        self.client.on_snapshot(self._on_snapshot)
        self.client.on_nack(self._on_nack)

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start admin/metrics, load the datapath (or record why not), start the xDS client.

        The admin port is bound first: failing on a busy port must not touch a datapath
        this agent was about to adopt.
        """
        if self.config.admin_addr is not None:
            from integration.admin import AdminServer

            admin = AdminServer(self, *self.config.admin_addr)
            await admin.start()
            self.admin = admin
        if self.config.datapath:
            await self._load_datapath()
        # LDS and CDS by wildcard like Envoy; the client follows their references to RDS/EDS
        for type_url in (LISTENER, CLUSTER):
            self.client.watch(type_url, None, lambda ev: None)
        self._tasks = [asyncio.create_task(self._apply_loop(), name="agent-apply"),
                       asyncio.create_task(self._watchdog(), name="agent-watchdog")]
        await self.client.start()

    async def _load_datapath(self) -> None:
        try:
            dp = self._factory(list(self.config.cgroups), self.config.pin_dir,
                               self.config.splice_addr)
            await asyncio.to_thread(dp.load)
        except Exception as exc:  # noqa: BLE001 - any failure means: fail open, say why
            self.datapath_error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
            log.error("datapath not loaded, failing open (connections are not intercepted): "
                      "%s", self.datapath_error)
            return
        self.datapath = dp
        adopted = _adopted(dp)
        log.info("datapath %s on %s (pins under %s)",
                    "adopted from pinned state" if adopted else "loaded",
                    ", ".join(map(str, self.config.cgroups)), self.config.pin_dir)

    async def stop(self, detach: bool = True) -> None:
        """Stop the xDS client and admin server; detach the datapath unless ``detach`` is
        False (then the pinned programs keep serving for the next agent to adopt)."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []
        await self.client.stop()
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        dp, self.datapath = self.datapath, None
        if dp is not None:
            await asyncio.to_thread(dp.close, detach)

    # ---- xDS -> tables -> datapath ----------------------------------------------------

    def _validate(self, type_url: str, resources: Mapping[str, Message]) -> None:
        """The client's validator: the resources of this response that differ from what the
        client holds go into the builder together (``TableBuilder.update``), so a resource
        the translator rejects, or a cross-resource error (a route config with
        validate_clusters naming a cluster that does not exist, a cluster removed that one
        still names), raises its TranslationError: a NACK, the builder unchanged.  Resources
        equal to the ones held are not translated again."""
        self._sync({t: self.client.core.resources(t) for t in RESOURCE_TYPES})
        fed = self._fed[type_url]
        changes: list[tuple[str, str, Message | None]] = [
            (type_url, n, m) for n, m in resources.items() if not _same(fed.get(n), m)]
        if not self.config.delta and type_url in (LISTENER, CLUSTER):
            # a SotW response of a wildcard type is its complete state
            changes += [(type_url, n, None) for n in fed if n not in resources]
        if changes:
            self._builder.update(changes)
        for name, msg in resources.items():
            # hold the client's new objects (it keeps these), not equal older copies
            self._builder.hold(type_url, name, msg)
            fed[name] = msg
        for _, name, msg in changes:
            if msg is None:
                del fed[name]

    def _sync(self, held: Mapping[str, Mapping[str, Message]]) -> None:
        """Make the builder hold what the client holds: the client drops what it accepted
        but did not ask for, route configs and endpoints no longer referenced, and delta
        removals, none of which passes the validator.  Removals are not rejected (the client
        already dropped them)."""
        for type_url, fed in self._fed.items():
            now = held.get(type_url, {})
            for name in [n for n in fed if n not in now]:
                self._builder.apply(type_url, name, None)
                del fed[name]
            for name, msg in now.items():
                if fed.get(name) is not msg:  # only what skipped the validator
                    if not _same(fed.get(name), msg):
                        self._builder.apply(type_url, name, msg)
                    self._builder.hold(type_url, name, msg)
                    fed[name] = msg

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        versions = {SHORT_NAMES.get(t, t): v for t, v in snapshot.versions.items()}
        try:
            self._sync(snapshot.resources)
        except Exception as exc:  # noqa: BLE001 - keep the last good config serving
            self._apply_failed(versions, time.time(), 0.0, exc)
            return
        self._latest = (versions, self._builder.tables())
        self._pending.set()

    def _on_nack(self, nack: Nack) -> None:
        self.nack_count += 1
        self.last_nack = {
            "type": SHORT_NAMES.get(nack.type_url, nack.type_url),
            "rejected_version": nack.rejected_version,
            "kept_version": nack.kept_version,
            "reason": nack.error_detail,
            "time": time.time(),
        }
        log.warning("rejected %s version %s (keeping %s): %s", self.last_nack["type"],
                    nack.rejected_version, nack.kept_version or "none", nack.error_detail)

    async def _apply_loop(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            latest, self._latest = self._latest, None
            if latest is None:
                continue
            await asyncio.to_thread(self._apply, *latest)
            old, self._applied_event = self._applied_event, asyncio.Event()
            old.set()

    def _apply(self, versions: dict[str, str], tables: Tables) -> None:
        started, t0 = time.time(), time.perf_counter()
        try:
            if self.datapath is not None:
                # the diff only when the datapath is known to hold self.tables (not after a
                # failed apply): then it computes what differs itself
                diff = diff_tables(self.tables or Tables(), tables) if self._diff_ok else None
                self._diff_ok = False
                self.datapath.apply(tables, diff)
                self._diff_ok = True
        except Exception as exc:  # noqa: BLE001 - keep the last good config serving
            self._apply_failed(versions, started, time.perf_counter() - t0, exc)
            return
        self.tables = tables
        self.applies += 1
        self.applied = ApplyRecord(
            versions, started, time.perf_counter() - t0,
            services=len(tables.services), route_tables=len(tables.route_tables),
            clusters=len(tables.clusters),
            endpoints=sum(len(c.endpoints) for c in tables.clusters.values()),
        )
        log.info("applied config %s in %.1f ms (%d services, %d route tables, %d clusters)",
                 versions, self.applied.seconds * 1000, self.applied.services,
                 self.applied.route_tables, self.applied.clusters)

    def _apply_failed(self, versions: dict[str, str], started: float, seconds: float,
                      exc: Exception) -> None:
        self.apply_errors += 1
        self.last_apply_error = ApplyRecord(versions, started, seconds, error=str(exc))
        log.error("config versions %s not applied, last good config keeps serving: %s",
                  versions, exc)

    async def wait_applied(self, predicate: Callable[[Agent], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds, re-checked after each apply."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"agent: condition not met within {timeout} s "
                                   f"(applied {self.applied and self.applied.versions})")
            try:
                await asyncio.wait_for(self._applied_event.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    async def _watchdog(self) -> None:
        # the client logs the first failure loudly; remind the operator while it lasts
        while True:
            await asyncio.sleep(10.0)
            st = self.client.status
            if not st.connected:
                log.warning("still no xDS stream to %s (%s); retrying with backoff "
                            "(max %.0f s)", st.server, st.last_error or "connecting",
                            self.config.backoff_max)

    # ---- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The agent's state as JSON-able data (``sockmesh status`` prints it)."""
        st = self.client.status
        types = {}
        for type_url, ts in st.types.items():
            types[SHORT_NAMES.get(type_url, type_url)] = {
                "version": ts.version, "resources": ts.resources, "acks": ts.acks,
                "nacks": ts.nacks, "last_nack": ts.last_nack,
                "does_not_exist": sorted(ts.does_not_exist),
            }
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "xds": {
                "server": st.server, "delta": st.delta, "connected": st.connected,
                "streams_opened": st.streams_opened, "last_error": st.last_error,
                "acks": st.acks, "nacks": st.nacks, "types": types,
                "last_nack": self.last_nack,
            },
            "config": {
                "applies": self.applies, "errors": self.apply_errors,
                "applied": _record_json(self.applied),
                "last_error": _record_json(self.last_apply_error),
            },
            "datapath": self.datapath_status(),
        }
        return out

    def datapath_names(self) -> dict[str, dict[str, Any]]:
        """Kernel ids -> names (clusters, route tables, endpoints) as the encoder assigned
        them; ``sockmesh dump`` uses them to label what it reads from the maps."""
        if self.datapath is None:
            return {}
        from integration import datapath_info as info

        return info.names_of(self.datapath)

    def datapath_status(self) -> dict[str, Any]:
        """Loaded or not (and why), cgroups, pins, program ids, map fill, counters."""
        dp = self.datapath
        out: dict[str, Any] = {
            "enabled": self.config.datapath,
            "loaded": dp is not None,
            "error": self.datapath_error,
            "cgroups": [str(c) for c in self.config.cgroups],
            "pin_dir": str(self.config.pin_dir),
        }
        if dp is None:
            return out
        from integration import datapath_info as info  # needs libbpf: only with a datapath

        probes: dict[str, Callable[[], Any]] = {
            "adopted": lambda: _adopted(dp),
            "socket_keeper_pid": lambda: getattr(getattr(dp, "keeper", None), "pid", None),
            "programs": lambda: info.program_ids(self.config.pin_dir),
            "maps": lambda: info.fill_of(dp),
            "counters": lambda: dp.counters(),  # type: ignore[attr-defined]
        }
        for key, probe in probes.items():
            try:
                out[key] = probe()
            except Exception as exc:  # noqa: BLE001 - status must not die on one probe
                out[key] = {"error": str(exc)}
        counters = out.get("counters")
        if isinstance(counters, Mapping) and "error" not in counters:
            out["fast_path_share"] = fast_path_share(counters)
        return out


def _same(held: Message | None, msg: Message) -> bool:
    return held is msg or (held is not None and held == msg)


def _adopted(dp: object) -> bool:
    adopted = getattr(dp, "adopted", None)
    if adopted is None:
        adopted = getattr(getattr(dp, "loader", None), "reused", False)
    return bool(adopted)


def fast_path_share(counters: Mapping[str, int]) -> float | None:
    """Share of requests routed in the kernel among all requests that needed routing."""
    handoff = SLOW_PATH_REASONS
    fast = int(counters.get("fast", 0))
    slow = sum(int(v) for k, v in counters.items() if k in handoff)
    total = fast + slow
    return None if total == 0 else fast / total


def _record_json(rec: ApplyRecord | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    return {"versions": rec.versions, "time": rec.started, "ms": round(rec.seconds * 1000, 3),
            "error": rec.error, "services": rec.services, "route_tables": rec.route_tables,
            "clusters": rec.clusters, "endpoints": rec.endpoints}
