"""The bad-xDS corpus (tests/support/xds_corpus.py) served by the embedded AdsServer to the
real agent: every response is NACKed with an error_detail naming the problem (read from what
the server received), and `sockmesh dump --json` shows the kernel maps unchanged afterwards.

After each NACK the good snapshot is served again and its ACK awaited, so every case starts
from the same good state.  Results go to .cache/reliability/xds_corpus.json for
docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.xds_server import AckEvent
from tests.e2e.agent_harness import poll
from tests.reliability.harness import LiveMesh, live_mesh
from tests.support.xds_corpus import corpus
from translator.resources import RESOURCE_TYPES

pytestmark = pytest.mark.kernel

RESULTS = Path(__file__).resolve().parents[2] / ".cache" / "reliability"


def kernel_state(doc: dict[str, Any]) -> dict[str, Any]:
    """What routing depends on in a dump: services, clusters, endpoint addresses (not pool
    slot states, active counts or per-client counters, which traffic changes)."""
    return {"services": sorted((s["vip"], s["port"], s["kind"], s["name"])
                               for s in doc["services"]),
            "clusters": sorted((c["name"], c["policy"], c["flags"], len(c["hosts"]))
                               for c in doc["clusters"]),
            "endpoints": sorted(e["addr"] for e in doc["endpoints"])}


def _event(lm: LiveMesh, start: int, pred: Any, what: str, timeout: float = 15.0) -> AckEvent:
    return poll(lambda: next((e for e in lm.server.events[start:] if pred(e)), None),  # type: ignore[no-any-return]
                timeout, what)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMesh]:
    with live_mesh(tmp_path_factory.mktemp("xds-corpus")) as lv:
        yield lv


def test_bad_xds_is_nacked_with_a_reason_and_maps_stay(lm: LiveMesh) -> None:
    t0 = time.monotonic()
    rs = lm.resources()
    good = {t: dict(rs.by_type(t)) for t in RESOURCE_TYPES}
    baseline = kernel_state(lm.dump())
    rows, problems = [], []
    for case in corpus():
        start = len(lm.server.events)
        lm.server.set_raw(case.type_url, case.build(good))
        nack = _event(lm, start, lambda e, t=case.type_url: e.type_url == t and not e.ack,
                      f"NACK for {case.name}")
        detail = nack.error_detail or ""
        named = any(k.lower() in detail.lower() for k in case.expect)
        same = kernel_state(lm.dump()) == baseline
        start = len(lm.server.events)
        version = lm.push_good()
        _event(lm, start, lambda e, t=case.type_url, v=version: e.type_url == t and e.ack
               and e.version == v, f"ACK after {case.name}")
        ok = named and same
        rows.append({"name": case.name, "family": case.family, "type": case.type_url.rsplit(
            ".", 1)[-1], "nack": True, "detail": detail, "named": named,
            "maps_unchanged": same, "ok": ok})
        if not named:
            problems.append(f"{case.name}: error_detail {detail!r} names none of {case.expect}")
        if not same:
            problems.append(f"{case.name}: kernel maps changed after the NACK")
    assert lm.agent.proc is not None and lm.agent.proc.poll() is None, "agent died"
    assert kernel_state(lm.dump()) == baseline
    report = {"cases": rows, "seconds": round(time.monotonic() - t0, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "xds_corpus.json").write_text(json.dumps(report, indent=1))
    print(f"\nxDS corpus: {len(rows)} NACKed in {report['seconds']} s, {len(problems)} problems")
    assert not problems, "\n".join(problems)
