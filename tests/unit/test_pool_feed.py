"""datapath.PoolFeed: endpoint changes reach the pools in order, merged, off the caller's
thread; an apply that may reuse endpoint ids waits until the pools dropped the released ones."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from bpf.datapath import PoolFeed
from bpf.loader import DatapathError

A, B, C = ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)


class GatedPools:
    """Stands in for bpf.pools.Pools: set_endpoints blocks until the test opens the gate
    (as the real one blocks on its lock during a maintenance pass)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple[dict[int, Any], bool]] = []
        self.endpoints: dict[int, Any] = {}

    def set_endpoints(self, endpoints: dict[int, Any], drop_missing: bool = True) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        self.calls.append((dict(endpoints), drop_missing))
        self.endpoints = dict(endpoints) if drop_missing else self.endpoints | endpoints


@pytest.fixture
def feed() -> Any:
    pools = GatedPools()
    f = PoolFeed(pools)  # type: ignore[arg-type]
    yield f, pools
    pools.gate.set()
    f.close()


def test_changes_do_not_block_and_arrive_merged_in_order(feed: Any) -> None:
    f, pools = feed
    f.before_apply(reuse=False)
    f.add({1: A})
    assert pools.entered.wait(5)  # the thread holds the first batch, blocked in the pools
    f.before_apply(reuse=False)
    f.add({2: B})
    f.replace({B: 2})  # 1 removed
    f.before_apply(reuse=False)
    f.add({3: C})
    pools.gate.set()
    assert f.wait_idle(5)
    assert pools.calls == [({1: A}, False), ({2: B, 3: C}, True)]
    assert pools.endpoints == {2: B, 3: C}


def test_an_apply_that_may_reuse_ids_waits_for_their_drop(feed: Any) -> None:
    f, pools = feed
    f.DROP_WAIT_S = 0.2
    f.before_apply(reuse=True)
    f.add({1: A})
    assert pools.entered.wait(5)
    f.before_apply(reuse=True)
    f.replace({})  # 1 released (apply 2)
    f.before_apply(reuse=True)  # apply 3: id 1 still in quarantine, nothing to wait for
    with pytest.raises(DatapathError, match="did not drop"):
        f.before_apply(reuse=True)  # apply 4 may reuse id 1: its drop is still queued
    f.before_apply(reuse=False)  # fresh ids left: no wait
    pools.gate.set()
    assert f.wait_idle(5)
    f.before_apply(reuse=True)  # dropped now
    assert pools.endpoints == {}
