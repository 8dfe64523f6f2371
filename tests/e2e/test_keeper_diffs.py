"""The socket keeper takes diffs: after the first apply only a TablesDiff crosses to it, it
rebuilds its tables from the ones it holds, and the pinned maps say what the agent's tables
say.  A handle that does not know what the keeper holds (an agent that adopted it, or one
another handle got ahead of) sends whole tables instead of a diff from the wrong base.
And memory: neither the agent nor the keeper loads bcc's compiler libraries.
Real keeper process and datapath on a test cgroup; nothing listens on the endpoints.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration import socket_keeper
from integration.demo import mesh
from integration.kept_datapath import KeptDatapath
from integration.xds_server import AdsServer
from tests.e2e.agent_harness import AgentProc, mesh_cgroup
from translator import diff_tables, translate
from translator.tables import Tables

pytestmark = pytest.mark.kernel


def tables(ports: range) -> Tables:
    """The demo mesh with every cluster on loopback ``ports`` (none listening)."""
    return translate(mesh.mesh_resources({c: [("127.0.0.1", p) for p in ports]
                                          for c in mesh.CLUSTERS}))


def endpoints_of(t: Tables) -> set[str]:
    return {f"{e.address}:{e.port}" for c in t.clusters.values() for e in c.endpoints}


def in_maps(kd: KeptDatapath) -> set[str]:
    return {e["addr"] for e in kd.dump()["endpoints"]}


@pytest.fixture
def pinned() -> Iterator[tuple[Path, Path]]:
    with mesh_cgroup() as (cg, pin):
        try:
            yield cg, pin
        finally:
            keeper = socket_keeper.connect(pin)  # whichever handle is left: stop it
            if keeper is not None:
                keeper.call("stop", True, timeout=30)
                keeper.close()
                keeper.wait_exit()


def test_keeper_applies_diffs_and_a_handle_that_lost_track_sends_tables(
        pinned: tuple[Path, Path]) -> None:
    cg, pin = pinned
    first = KeptDatapath([cg], pin).load()
    t1, t2, t3, t4, t5 = (tables(range(21000 + 10 * i, 21002 + 10 * i)) for i in range(5))
    first.apply(t1)
    first.apply(t2, diff_tables(t1, t2))
    assert first.keeper_stats()["applies"] == {"tables": 1, "diffs": 1}
    assert in_maps(first) == endpoints_of(t2)
    first.close(detach=False)

    # an agent that adopts the keeper does not know what it holds: whole tables first
    a = KeptDatapath([cg], pin).load()
    b = KeptDatapath([cg], pin).load()
    assert a.adopted and b.adopted
    a.apply(t3, diff_tables(t1, t3))  # a diff from a base the keeper no longer holds
    assert a.keeper_stats()["applies"] == {"tables": 2, "diffs": 1}
    assert in_maps(a) == endpoints_of(t3)
    a.apply(t4, diff_tables(t3, t4))
    assert a.keeper_stats()["applies"] == {"tables": 2, "diffs": 2}
    # b gets ahead of a: a's next diff would start from t4, the keeper holds t5 (with a
    # cluster that diff would not remove)
    extra = dataclasses.replace(t5.clusters["details"], name="extra")
    b.apply(dataclasses.replace(t5, clusters={**t5.clusters, "extra": extra}))
    a.apply(t3, diff_tables(t4, t3))
    assert a.keeper_stats()["applies"] == {"tables": 4, "diffs": 2}
    assert in_maps(a) == endpoints_of(t3)
    assert {c["name"] for c in a.dump()["clusters"]} == set(t3.clusters)
    b.close(detach=False)
    a.close(detach=True)
    assert socket_keeper.connect(pin) is None


def _maps_libs(pid: int) -> set[str]:
    return {line.rsplit("/", 1)[-1].strip() for line in Path(f"/proc/{pid}/maps").read_text()
            .splitlines() if ".so" in line}


async def test_neither_the_agent_nor_its_keeper_loads_the_compiler(
        pinned: tuple[Path, Path]) -> None:
    """bcc maps libbcc with LLVM and clang (~55-80 MB resident): a child of the keeper
    compiles the programs and exits; the agent and the keeper never load them."""
    cg, pin = pinned
    server = AdsServer(mesh.mesh_resources({c: [("127.0.0.1", 21000)] for c in mesh.CLUSTERS}))
    agent = None
    try:
        agent = AgentProc(f"127.0.0.1:{await server.start('127.0.0.1', 0)}", cg, pin)
        agent.start()
        st = await asyncio.to_thread(agent.wait_applied, lambda s: s["datapath"]["loaded"])
        assert agent.proc is not None
        assert st["datapath"]["adopted"] is False  # loaded fresh, not adopted from pins
        for pid in (agent.proc.pid, st["datapath"]["socket_keeper_pid"]):
            libs = _maps_libs(pid)
            assert any(lib.startswith("libc.so") for lib in libs), sorted(libs)
            assert not {lib for lib in libs if lib.startswith(("libLLVM", "libclang",
                                                               "libbcc"))}, pid
    finally:
        if agent is not None:
            assert await asyncio.to_thread(agent.stop) == 0, agent.output()
        await server.stop(grace=0.2)
