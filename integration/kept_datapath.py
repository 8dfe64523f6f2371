"""bpf's datapath parts composed so that nothing the traffic needs dies with the agent.

The same parts as ``bpf.datapath.Datapath`` (Loader, Encoder, SpliceListener, Pools) and the
same order inside ``apply``, with one difference: the splice listener and the pools live in
the socket keeper (integration/socket_keeper.py), a process that survives the agent.  The
agent keeps the loader (programs, pins) and the encoder (tables -> maps).

    load():  keeper running for this pin dir?  adopt it and its splice address, then open
             the pinned programs (Loader reuses them) pointing connect4 at that address;
             else load the programs, start a keeper, point connect4 at its listener.
    apply(): slow path gets the tables first, then the maps (make-before-break, diffs),
             then the pools follow the endpoints (removed endpoints' connections close last).
    close(detach=True):  stop the keeper, detach, unpin (SIGTERM).
    close(detach=False): drop handles only; programs, maps and keeper keep serving.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bpf.datapath import Datapath as BpfDatapath
from bpf.encoder import Encoder
from bpf.loader import Loader
from integration import socket_keeper
from translator.tables import Tables

log = logging.getLogger(__name__)


class KeptDatapath:
    """The agent's datapath: programs and maps here, sockets in the socket keeper."""

    def __init__(self, cgroups: list[Path], pin_dir: Path, host: str = "127.0.0.1",
                 warm: int = 2) -> None:
        self.cgroups = list(cgroups)
        self.pin_dir = Path(pin_dir)
        self.host = host
        self.warm = warm
        self.loader: Loader | None = None
        self.encoder: Encoder | None = None
        self.keeper: socket_keeper.KeeperClient | None = None
        self.tables = Tables()
        self.adopted = False
        # reads counters from the pins; never loaded
        self._reader = BpfDatapath(self.cgroups, self.pin_dir)

    def load(self) -> KeptDatapath:
        """Adopt or load; raises (loader.DatapathError, KeeperError) leaving nothing new."""
        keeper = socket_keeper.connect(self.pin_dir) if self.pin_dir.exists() else None
        try:
            if keeper is not None:
                # adopt: connect4 keeps pointing at the keeper's listener throughout
                self.loader = Loader(self.cgroups, self.pin_dir, splice=keeper.splice)
                self.loader.load()
                self.keeper = keeper
                self.adopted = True
                log.warning("adopted the socket keeper (pid %d) and the pinned datapath",
                            keeper.pid)
            else:
                self.loader = Loader(self.cgroups, self.pin_dir)
                self.loader.load()
                self.adopted = self.loader.reused
                self.keeper = socket_keeper.spawn(self.pin_dir, self.host, self.warm)
                self.loader.set_splice(*self.keeper.splice)
            self.encoder = Encoder(self.pin_dir)
        except BaseException:
            self.close(detach=keeper is None)
            raise
        return self

    def apply(self, tables: Tables) -> dict[str, int]:
        """Slow path first, then maps as diffs, then pools (same order as bpf's Datapath)."""
        assert self.encoder is not None and self.keeper is not None
        # ids of route tables that exist now or after this apply, for the slow path's lookups
        self.keeper.call("tables", tables, self._rt_names(tables))
        stats = self.encoder.apply(tables)
        self.keeper.call("tables", tables, self._rt_names(tables))  # ids assigned by apply
        self.tables = tables
        self.keeper.call("endpoints", self.encoder.endpoints())
        return {"writes": stats.writes, "deletes": stats.deletes}

    def _rt_names(self, tables: Tables) -> dict[int, str]:
        assert self.encoder is not None
        return {i: n for n, i in self.encoder.rt_ids.ids.items() if n in tables.route_tables}

    def keeper_stats(self) -> dict[str, Any]:
        """The keeper's slow-path outcomes and pool maintenance counts."""
        assert self.keeper is not None
        return dict(self.keeper.call("stats", timeout=5))

    def counters(self) -> dict[str, int]:
        """Per-reason counters summed over CPUs."""
        return self._reader.counters()

    def dump(self) -> dict[str, Any]:
        """The pinned maps rendered readably."""
        from bpf.datapath import dump

        return dump(self.pin_dir, self.encoder)

    def close(self, detach: bool = True) -> None:
        """detach=True: stop the keeper, detach and unpin; else leave everything serving."""
        if self.keeper is not None:
            if detach:
                try:
                    self.keeper.call("stop", timeout=10)
                except (socket_keeper.KeeperError, OSError, EOFError) as exc:
                    log.warning("socket keeper stop: %s", exc)
            self.keeper.close()
            self.keeper = None
        if self.encoder is not None:
            self.encoder.close()
            self.encoder = None
        if self.loader is not None:
            self.loader.close(detach=detach)
            self.loader = None
