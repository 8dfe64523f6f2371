"""The malformed-HTTP corpus through the real agent: kernel path and forced slow path, with a
real Envoy one hop away as the oracle for every case.

Every case (tests/support/http_corpus.py, plus the split-write sweep at every byte offset of
a request's header section) is sent by a client inside the test cgroup to the reviews VIP
twice: on ``/fast`` (the kernel decides) and on ``/slow`` (a regex route, so the kernel hands
every request to the user-space slow path), and outside the cgroup to Envoy.
tests/reliability/http_judge.py says what must hold.  Results go to
.cache/reliability/http_corpus.json for docs/reliability.md (tests/reliability/report.py).
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import PORT, VIP, LiveMesh, live_mesh
from tests.reliability.http_judge import judge, outcome
from tests.support.http_corpus import HttpCase, corpus, split_cases

pytestmark = [pytest.mark.kernel, pytest.mark.envoy]

RESULTS = Path(__file__).resolve().parents[2] / ".cache" / "reliability"
VARIANTS = {"kernel": b"/fast", "slow": b"/slow"}
STREAMED = ("kernel path: the head is dispatched (to Envoy's cluster) before the body is "
            "framed; the bad chunk then retires the pooled connection")


def _wire(case: HttpCase, prefix: bytes) -> dict[str, Any]:
    raw = case.materialize(prefix)
    cuts = [0, *case.splits, len(raw)]
    chunks = [raw[a:b] for a, b in itertools.pairwise(cuts) if b > a]
    return {"name": case.name, "responses": case.responses,
            "chunks": [base64.b64encode(c).decode() for c in chunks]}


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMesh]:
    with live_mesh(tmp_path_factory.mktemp("http-corpus"), with_envoy=True) as lv:
        yield lv


def test_http_corpus_kernel_and_slow_path_agree_with_envoy(lm: LiveMesh) -> None:
    t0 = time.monotonic()
    report: dict[str, Any] = {"variants": {}}
    problems: list[str] = []
    for variant, prefix in VARIANTS.items():
        cases = corpus() + split_cases(prefix)
        wire = [_wire(c, prefix) for c in cases]
        assert lm.envoy_port is not None
        theirs = lm.run_client(wire, in_cgroup=False, host="127.0.0.1", port=lm.envoy_port,
                               name=f"envoy-{variant}")
        mine = lm.run_client(wire, in_cgroup=True, host=VIP, port=PORT, name=variant,
                             counters=True)
        rows = []
        for case, got, env in zip(cases, mine, theirs, strict=True):
            p = judge(case, got, env, kernel_path=variant == "kernel")
            problems += [f"{variant}/{case.name}: {x}" for x in p]
            rows.append({"name": case.name, "family": case.family, "expect": case.expect,
                         "sockmesh": outcome(got, case.responses),
                         "envoy": outcome(env, case.responses),
                         "counters": got.get("counters", {}), "ms": got.get("ms"),
                         "ok": not p, "problems": p,
                         "envoy_note": case.envoy_note or (STREAMED if case.kernel_streams_body
                                                           else "")})
        report["variants"][variant] = rows
    assert lm.agent.proc is not None and lm.agent.proc.poll() is None, "agent died"
    report["seconds"] = round(time.monotonic() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http_corpus.json").write_text(json.dumps(report, indent=1))
    n = sum(len(v) for v in report["variants"].values())
    print(f"\nHTTP corpus: {n} connections in {report['seconds']} s, {len(problems)} problems")
    assert not problems, "\n".join(problems[:60])
