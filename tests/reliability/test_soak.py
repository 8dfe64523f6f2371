"""The soak in CI: 60 s of mixed traffic with a configuration push every second
(tests/reliability/soak.py; scripts/soak.py runs it for 10 minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability import soak

pytestmark = pytest.mark.kernel

RESULTS = Path(__file__).resolve().parents[2] / ".cache" / "reliability"


def test_soak_60s_config_churn_zero_failures_bounded_memory(tmp_path: Path) -> None:
    fig = soak.run(60.0, tmp_path)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak_ci.json").write_text(json.dumps(fig, indent=1))
    print(f"\nsoak: {fig['requests']} requests, {fig['failed']} failed, {fig['pushes']} pushes, "
          f"RSS {fig['rss_kib_after_warmup']} KiB -> max {fig['rss_kib_max']} KiB, pool "
          f"sockets max {fig['pool_sockets_max']}")
    assert fig["requests"] > 1000
    assert not soak.check(fig), soak.check(fig)
