"""`sockmesh bench`'s split of the kernel path's added latency (integration/bench/report.py):
BPF program time per request against the rest, from a results JSON built here."""

from __future__ import annotations

from typing import Any

from integration.bench import report


def _results(direct_p50: float, kernel_p50: float, bpf_ns: float | None) -> dict[str, Any]:
    def sc(p50: float) -> dict[str, Any]:
        return {"low_rate": {"p50_us": p50}}
    r: dict[str, Any] = {"scenarios": {"direct": sc(direct_p50), "kernel": sc(kernel_p50)}}
    if bpf_ns is not None:
        r["scenarios"]["kernel"]["bpf_programs"] = {
            "bpf_ns_per_request": bpf_ns, "requests": 1000,
            "programs": [{"name": "sm_sk_msg", "runs": 1000, "ns_per_run": bpf_ns / 2,
                          "runs_per_request": 1.0}]}
    return r


def test_added_latency_is_split_into_bpf_and_the_rest() -> None:
    r = _results(40.0, 62.5, 4500.0)
    assert report.added_latency_split(r) == {"added_p50_us": 22.5, "mechanism_us": 0.0,
                                             "bpf_us": 4.5, "rest_us": 18.0}
    line = next(x for x in report.profile_lines(r) if "adds" in x)
    assert "+22.5 us p50" in line and "4.50 us" in line and "+18.0 us is the rest" in line
    assert "mechanism" not in line  # no bare relay in this run


def test_the_bare_relay_takes_its_share_of_the_added_latency() -> None:
    r = _results(40.0, 62.5, 4500.0)
    r["scenarios"]["floor"] = {"low_rate": {"p50_us": 50.0}}
    assert report.added_latency_split(r) == {"added_p50_us": 22.5, "mechanism_us": 10.0,
                                             "bpf_us": 4.5, "rest_us": 8.0}
    line = next(x for x in report.profile_lines(r) if "adds" in x)
    assert "+10.0 us is the sockmap mechanism" in line and "+8.0 us is the rest" in line


def test_no_split_without_a_program_profile() -> None:
    r = _results(40.0, 62.5, None)
    assert report.added_latency_split(r) is None
    assert not any("adds" in x for x in report.profile_lines(r))
