"""Record the outcome and duration of every reliability test for docs/reliability.md
(.cache/reliability/pytest_run.json, read by tests/reliability/report.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / ".cache" / "reliability"
_run: dict[str, object] = {"tests": {}, "started": time.monotonic()}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.nodeid.startswith("tests/reliability/"):
        return
    tests: dict[str, dict[str, object]] = _run["tests"]  # type: ignore[assignment]
    entry = tests.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0})
    entry["seconds"] = round(float(entry["seconds"]) + report.duration, 1)  # type: ignore[arg-type]
    if report.failed:
        entry["outcome"] = "failed"
    elif report.skipped:
        entry["outcome"] = "skipped"


def pytest_sessionfinish(session: pytest.Session) -> None:
    tests: dict[str, dict[str, object]] = _run["tests"]  # type: ignore[assignment]
    if len(tests) < 10:
        return  # a partial run: keep the last full record
    outcomes = [t["outcome"] for t in tests.values()]
    doc = {"passed": outcomes.count("passed"), "failed": outcomes.count("failed"),
           "skipped": outcomes.count("skipped"),
           "seconds": round(sum(float(t["seconds"]) for t in tests.values()), 1),  # type: ignore[arg-type]
           "tests": tests}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pytest_run.json").write_text(json.dumps(doc, indent=1))
