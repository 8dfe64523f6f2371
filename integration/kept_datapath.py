"""The agent's datapath handle: bpf's Datapath running in the socket keeper.

Everything about the datapath (loading, the encoder's diffs and make-before-break order, the
splice listener and slow path, pools and draining) is ``bpf.datapath.Datapath`` unchanged;
it just runs in the keeper process (integration/socket_keeper.py) so that its sockets outlive
the agent.  This class is the agent-side proxy with the same surface the agent uses.

    load():  a keeper already serving this pin dir?  adopt it (nothing is reloaded);
             else start one, which loads (or re-attaches) the pinned programs.
    apply(): the tables go to the keeper's Datapath.apply.
    close(detach=True):  the keeper detaches, unpins and exits (SIGTERM).
    close(detach=False): drop the connection; keeper, programs and maps keep serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bpf.datapath import Datapath as BpfDatapath
from integration import socket_keeper
from translator.tables import Tables


class KeptDatapath:
    """Proxy for the Datapath in the socket keeper."""

    def __init__(self, cgroups: list[Path], pin_dir: Path,
                 splice_addr: str | None = None) -> None:
        self.cgroups = list(cgroups)
        self.pin_dir = Path(pin_dir)
        self.splice_addr = splice_addr  # None: bpf's default (loopback)
        self.keeper: socket_keeper.KeeperClient | None = None
        self.tables = Tables()
        self.adopted = False
        # counters are read straight from the pinned map; this instance is never loaded
        self._reader = BpfDatapath(self.cgroups, self.pin_dir)

    def load(self) -> KeptDatapath:
        """Adopt the running keeper or start one; KeeperError says why the datapath is not
        there (the agent then fails open)."""
        keeper = socket_keeper.connect(self.pin_dir) if self.pin_dir.exists() else None
        if keeper is not None:
            self.adopted = True
        else:
            keeper = socket_keeper.spawn(self.cgroups, self.pin_dir, self.splice_addr)
            self.adopted = bool(keeper.info.get("reused_pins"))
        self.keeper = keeper
        return self

    def _call(self, *msg: Any, timeout: float = 60.0) -> Any:
        if self.keeper is None:
            raise socket_keeper.KeeperError("datapath not loaded")
        return self.keeper.call(*msg, timeout=timeout)

    def apply(self, tables: Tables) -> dict[str, int]:
        """Write ``tables`` through the keeper's Datapath (diffs, make-before-break)."""
        stats: dict[str, int] = self._call("apply", tables)
        self.tables = tables
        return stats

    def counters(self) -> dict[str, int]:
        """Per-reason counters summed over CPUs, from the pinned map."""
        return self._reader.counters()

    def names(self) -> dict[str, dict[str, Any]]:
        """Kernel id -> name tables of the keeper's encoder."""
        return dict(self._call("names", timeout=10))

    def map_fill(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries, max_entries)."""
        return {k: (int(v[0]), int(v[1])) for k, v in self._call("map_fill", timeout=10).items()}

    def endpoint_stats(self) -> list[dict[str, Any]]:
        """Per endpoint: cluster, address, active requests, pool size, idle connections."""
        return list(self._call("endpoint_stats", timeout=10))

    def keeper_stats(self) -> dict[str, Any]:
        """The slow path's outcomes and pool maintenance counts."""
        return dict(self._call("stats", timeout=10))

    def dump(self) -> dict[str, Any]:
        """The pinned maps rendered readably (with the encoder's names)."""
        return dict(self._call("dump", timeout=30))

    def close(self, detach: bool = True) -> None:
        """detach=True: the keeper detaches, unpins and exits; else leave all serving."""
        keeper, self.keeper = self.keeper, None
        if keeper is None:
            return
        if detach:
            keeper.call("stop", True, timeout=30)
            keeper.close()
            keeper.wait_exit()
        else:
            keeper.close()
