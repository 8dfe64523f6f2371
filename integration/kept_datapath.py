"""The agent's datapath handle: bpf's Datapath running in the socket keeper.

Everything about the datapath (loading, the encoder's diffs and make-before-break order, the
splice listener and slow path, pools and draining) is ``bpf.datapath.Datapath`` unchanged;
it just runs in the keeper process (integration/socket_keeper.py) so that its sockets outlive
the agent.  This class is the agent-side proxy with the same surface the agent uses.

    load():  a keeper already serving this pin dir?  adopt it (nothing is reloaded);
             else start one, which loads (or re-attaches) the pinned programs.
    apply(): only the TablesDiff goes to the keeper, which rebuilds its tables from the
             ones it holds (translator.table_builder.apply_diff) and gives both to its
             Datapath.apply; the whole tables when there is no diff or the keeper does not
             hold the tables the diff starts from (adopted, or after a failed apply).
    close(detach=True):  the keeper detaches, unpins and exits (SIGTERM).
    close(detach=False): drop the connection; keeper, programs and maps keep serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bpf.datapath import Datapath as BpfDatapath
from integration import socket_keeper
from translator.table_builder import TablesDiff
from translator.tables import Tables


class KeptDatapath:
    """Proxy for the Datapath in the socket keeper."""

    def __init__(self, cgroups: list[Path], pin_dir: Path,
                 splice_addr: str | None = None) -> None:
        self.cgroups = list(cgroups)
        self.pin_dir = Path(pin_dir)
        self.splice_addr = splice_addr  # None: bpf's default (loopback)
        self.keeper: socket_keeper.KeeperClient | None = None
        self.adopted = False
        # the keeper's generation of the tables it holds, as of our last apply (None: not
        # known, e.g. a keeper we adopted: the next apply sends whole tables)
        self._generation: int | None = None
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
        self._generation = None
        return self

    def _call(self, *msg: Any, timeout: float = 60.0) -> Any:
        if self.keeper is None:
            raise socket_keeper.KeeperError("datapath not loaded")
        return self.keeper.call(*msg, timeout=timeout)

    def apply(self, tables: Tables, diff: TablesDiff | None = None) -> dict[str, int]:
        """Write ``tables`` through the keeper's Datapath (diffs, make-before-break).

        ``diff`` (what changed since the last apply) is all that is sent when the keeper
        holds the tables of our last apply; else, or without a diff, the whole tables."""
        base, self._generation = self._generation, None  # unknown until this one succeeds
        reply: dict[str, int] | None = None
        if diff is not None and base is not None:
            reply = self._call("apply_diff", base, diff)
            if "resend" in reply:  # it holds other tables than the diff starts from
                reply = None
        if reply is None:
            reply = self._call("apply", tables)
        self._generation = reply.pop("generation", None)
        return reply

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
        """The slow path's outcomes, pool maintenance counts, applies by kind (whole
        tables or diffs)."""
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
