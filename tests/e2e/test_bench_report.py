"""The benchmark's verdicts and ratios (integration/bench/report.py) on results built here:
each target flips between MET and MISSED at its threshold, and the A/B comparison flags what
differs.  No kernel, no network; milliseconds."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from integration.ab import Side, compare, percentiles
from integration.bench import report


def _wrk(rps: float, p50: float, p99: float) -> dict[str, Any]:
    return {"connections": 8, "seconds": 8, "requests": int(rps * 8), "rps": rps,
            "p50_us": p50, "p90_us": (p50 + p99) / 2, "p99_us": p99, "errors": 0}


def _results(kernel_rps: float, kernel_p50: float, kernel_cpu: float) -> dict[str, Any]:
    sc = {
        "direct": (10_000.0, 50.0, 100.0, 1.0),
        "kernel": (kernel_rps, kernel_p50, 110.0, kernel_cpu),
        "slow": (3_000.0, 200.0, 400.0, 5.0),
        "envoy": (4_000.0, 150.0, 300.0, 3.0),
        "sidecars": (3_000.0, 250.0, 500.0, 4.0),
    }
    return {
        "scenarios": {k: {"saturation": _wrk(rps, p50 * 2, p99 * 2),
                          "low_rate": _wrk(900.0, p50, p99), "cpu_s_per_10k": cpu}
                      for k, (rps, p50, p99, cpu) in sc.items()},
        "memory": {"istio": {"agent_rss": 100 * 2**20, "bpf_map_bytes": 50 * 2**20,
                             "envoy_sidecar_rss": 200 * 2**20, "clusters": 3000}},
        "control": {"snapshot_apply": {"kernel_s": 0.5, "translate_s": 0.4, "map_writes": 9},
                    "endpoint_change": {"median_ms": 2.0, "p99_ms": 3.0, "n": 10}},
    }


def _verdicts(r: dict[str, Any]) -> dict[str, bool | None]:
    return {t.name: t.met for t in report.targets(r)}


def test_targets_met_and_missed_at_their_thresholds() -> None:
    good = _verdicts(_results(kernel_rps=9_500, kernel_p50=55, kernel_cpu=1.1))
    assert len(good) == 8 and all(good.values()), good
    bad = _verdicts(_results(kernel_rps=8_000, kernel_p50=80, kernel_cpu=1.3))
    assert bad["throughput vs direct"] is False  # 0.8 < 0.9
    assert bad["throughput vs Envoy one hop"] is True  # 2.0 >= 2.0
    assert bad["added p50 latency vs Envoy's added (low rate)"] is False  # 30/100
    assert bad["CPU per request vs direct"] is False  # 1.3 > 1.15
    r = _results(kernel_rps=9_500, kernel_p50=55, kernel_cpu=1.1)
    r["memory"]["istio"]["bpf_map_bytes"] = 100 * 2**20  # 200 MiB is not < 200 MiB
    r["control"]["endpoint_change"]["median_ms"] = 10.0
    v = _verdicts(r)
    assert v["agent + maps memory vs one Envoy sidecar (Istio-sized config)"] is False
    assert v["one endpoint change to the datapath (median ms)"] is False


def test_noise_leaves_a_latency_ratio_unmeasured() -> None:
    r = _results(kernel_rps=9_500, kernel_p50=55, kernel_cpu=1.1)
    r["scenarios"]["envoy"]["low_rate"]["p99_us"] = 90.0  # below direct's p99
    t = next(t for t in report.targets(r) if t.name.startswith("added p99"))
    assert t.met is None and "noise" in t.figures and t.line().startswith("NOT MEASURED")


def test_readme_section_is_replaced_not_added(tmp_path: Any) -> None:
    r = _results(kernel_rps=9_500, kernel_p50=55, kernel_cpu=1.1)
    r.update({"date": "2026-01-01T00:00:00+00:00", "loadavg_end": [0.1, 0.1, 0.1],
              "method": {"pace_rps": 1000},
              "machine": {"nproc": 2, "cpu_model": "cpu", "kernel": "k",
                          "loadavg": [0.2, 0.2, 0.2]}})
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nkept\n")
    report.update_readme(readme, r)
    first = readme.read_text()
    r2 = copy.deepcopy(r)
    r2["scenarios"]["kernel"]["saturation"]["rps"] = 9_876
    report.update_readme(readme, r2)
    text = readme.read_text()
    assert text.startswith("# x\n\nkept\n") and text.count(report.README_START) == 1
    assert "| 9,876 |" in text and "| 9,876 |" not in first


@pytest.mark.parametrize(("envoy", "ours", "decision", "problems"), [
    (("r", "a", 200, None), ("r", "a", 200, None), {"action": "cluster", "cluster": "a"}, 0),
    (("r", "a", 200, None), ("q", "a", 200, None), {"action": "cluster", "cluster": "a"}, 1),
    (("r", "a", 200, None), ("r", "b", 200, None), {"action": "cluster", "cluster": "a"}, 2),
    (("r", "a", 200, None), ("r", "b", 200, None),
     {"action": "weighted_clusters", "candidates": [{"cluster": "a"}, {"cluster": "b"}]}, 0),
    ((None, None, 301, "http://x/"), (None, None, 301, "http://y/"),
     {"action": "redirect"}, 1),
    ((None, None, 404, None), (None, None, 503, None), {"action": "no_route"}, 1),
])
def test_ab_compare(envoy: tuple[Any, ...], ours: tuple[Any, ...], decision: dict[str, Any],
                    problems: int) -> None:
    def side(route: str | None, cluster: str | None, status: int,
             location: str | None) -> Side:
        return Side(route, cluster, None, status, location, 1.0, None)

    assert len(compare(side(*envoy), side(*ours), decision)) == problems


def test_percentiles_nearest_rank() -> None:
    p = percentiles([float(x) for x in range(1, 101)])
    assert (p["p50_us"], p["p90_us"], p["p99_us"], p["max_us"]) == (50.0, 90.0, 99.0, 100.0)


def test_the_mechanism_alone_stands_beside_each_data_plane_target() -> None:
    r = _results(kernel_rps=4_000, kernel_p50=90, kernel_cpu=2.0)  # misses all four
    r["scenarios"]["floor"] = {"saturation": _wrk(6_000.0, 140.0, 220.0),
                               "low_rate": _wrk(900.0, 60.0, 105.0), "cpu_s_per_10k": 1.1}
    ts = {t.name: t for t in report.targets(r)}
    thr = ts["throughput vs direct"]
    assert thr.met is False and thr.floor == pytest.approx(0.6) and thr.floor_met is False
    cpu = ts["CPU per request vs direct"]
    assert cpu.met is False and cpu.floor == pytest.approx(1.1) and cpu.floor_met is True
    assert ts["added p50 latency vs Envoy's added (low rate)"].floor == pytest.approx(0.1)
    assert ts["one endpoint change to the datapath (median ms)"].floor is None
    lines = report.floor_lines(r)
    assert any(ln.startswith("- throughput vs direct") and "no change to sockmesh's programs"
               in ln for ln in lines)
    assert any(ln.startswith("- CPU per request vs direct") and "sockmesh's own work" in ln
               for ln in lines)
    assert "the mechanism alone: 0.600 (missed)" in thr.line()
    table = "\n".join(report._md_targets(r))
    assert "| 0.600 (missed) |" in table and "| 1.100 (met) |" in table
    del r["scenarios"]["floor"]  # an older run without the scenario: no floor anywhere
    assert all(t.floor is None for t in report.targets(r)) and report.floor_lines(r) == []


def test_the_low_rate_p99_spread_over_rounds_is_shown() -> None:
    r = _results(kernel_rps=9_500, kernel_p50=55, kernel_cpu=1.1)
    assert report.low_rate_p99_spread(r) == {}  # one aggregate, no rounds: nothing to show
    r["scenarios"]["direct"]["rounds"] = [{"low_rate": _wrk(900.0, 50.0, p99)}
                                          for p99 in (300.0, 4100.0, 900.0)]
    assert report.low_rate_p99_spread(r) == {"direct": (300.0, 4100.0)}
    assert any("direct 300..4100 us" in ln for ln in report.profile_lines(r))


def _full(r: dict[str, Any], one_backend: bool) -> dict[str, Any]:
    """``r`` with what the docs page and the plots read besides the scenarios; the method of
    a run with one-backend low-rate runs, or of an older run without them (no memory or
    control-plane figures: the docs page leaves those sections out)."""
    r.update({"memory": {}, "control": {}, "version": 2 if one_backend else 1, "date": "2026-01-01T00:00:00+00:00",
              "quick": True, "duration_s": 90.0, "loadavg_end": [0.1, 0.1, 0.1],
              "machine": {"nproc": 2, "cpu_model": "cpu", "kernel": "k", "mem_total_mb": 1024,
                          "loadavg": [0.2, 0.2, 0.2]},
              "tools": {"nginx": "nginx", "wrk": "wrk", "envoy": "1.40"},
              "method": {"backends": 3, "connections": 8, "saturation_s": 2.0,
                         "low_rate_s": 2.0, "warmup_s": 1.0, "rounds": 1, "pace_ms": 1,
                         "pace_rps": 1000, "client_cpu": "1", "server_cpu": "0"}})
    if one_backend:
        r["method"].update({"low_rate_one_backend": True, "low_rate_rr": ["kernel", "envoy"]})
    return r


def _with_round_robin(kernel_rr_p50: float, envoy_rr_p50: float) -> dict[str, Any]:
    """A run whose kernel path adds 5 us p50 on direct's backend (Envoy 100 us) and whose
    round-robin runs add ``kernel_rr_p50 - 50`` and ``envoy_rr_p50 - 50``."""
    r = _full(_results(kernel_rps=9_500, kernel_p50=55, kernel_cpu=1.1), one_backend=True)
    r["scenarios"]["kernel"]["low_rate_rr"] = _wrk(900.0, kernel_rr_p50, 130.0)
    r["scenarios"]["envoy"]["low_rate_rr"] = _wrk(900.0, envoy_rr_p50, 320.0)
    return r


def test_latency_targets_use_the_one_backend_runs_not_the_round_robin_ones() -> None:
    r = _with_round_robin(kernel_rr_p50=75.0, envoy_rr_p50=160.0)
    t = next(t for t in report.targets(r) if t.name.startswith("added p50"))
    assert t.value == pytest.approx(5.0 / 100.0) and t.met is True
    assert "+5.0 us vs +100.0 us" in t.figures and "direct's one backend" in t.figures
    # on the round-robin figures the same ratio would miss: shown, never a verdict
    assert report.rr_added_ratio(r) == pytest.approx(25.0 / 110.0)
    r["scenarios"]["kernel"]["low_rate"]["p50_us"] = 70.0  # now the one-backend run misses
    t = next(t for t in report.targets(r) if t.name.startswith("added p50"))
    assert t.met is False and t.value == pytest.approx(0.2)


def test_the_round_robin_runs_have_their_own_rows() -> None:
    r = _with_round_robin(kernel_rr_p50=75.0, envoy_rr_p50=160.0)
    rows = {row["scenario"]: row for row in report.rr_rows(r)}
    assert set(rows) == {"kernel", "envoy"}  # only the scenarios that ran them
    k = rows["kernel"]
    assert (k["added_p50_us"], k["added_p99_us"]) == (25.0, 30.0)  # over direct's 50 / 100
    assert (k["spread_p50_us"], k["spread_p99_us"]) == (20.0, 20.0)  # over its 55 / 110
    text = report.text_table(r)
    assert "ROUND_ROBIN over the 3 backends" in text and "0.227" in text
    assert any(ln.strip().startswith(report.LABELS["kernel"]) and "p50    75.0" in ln
               and "spread cost (over one backend) p50  +20.0" in ln
               for ln in text.splitlines())
    row = "| sockmesh kernel path | 75 / 102 / 130 | +25 / +30 | +20 / +20 |"
    assert row in report.readme_section(r)
    page = report.docs_page(r, "benchmarks", "benchmarks/bench.json")
    assert row in page and "p50 / p90 / p99 at ~1,000 req/s, one backend (us)" in page
    # the Method section says which figures are which, and why
    assert "Every scenario's low-rate run goes to the one backend direct calls" in page
    assert "both proxies pay it, the direct baseline (one warm nginx) never does" in page
    assert any("round robin over the backends instead of direct's one backend costs "
               "sockmesh kernel path +20.0 us" in ln for ln in report.profile_lines(r))


def test_plots_carry_the_round_robin_runs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    import matplotlib.pyplot as plt

    r = _with_round_robin(kernel_rr_p50=75.0, envoy_rr_p50=160.0)
    drawn: list[list[str]] = []
    real = plt.Axes.set_xticks

    def record(ax: Any, ticks: Any, labels: Any = None, **kw: Any) -> Any:
        drawn.append(list(labels or []))
        return real(ax, ticks, labels, **kw)

    monkeypatch.setattr(plt.Axes, "set_xticks", record)
    paths = report.plots(r, tmp_path)
    assert (tmp_path / "latency.png") in paths
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert ["direct", "kernel", "slow", "envoy", "sidecars", "kernel RR", "envoy RR"] in drawn


def test_an_older_run_without_the_one_backend_runs_regenerates_and_says_so(
        tmp_path: Any) -> None:
    import json

    from integration import cli

    r = _full(_results(kernel_rps=9_500, kernel_p50=55, kernel_cpu=1.1), one_backend=False)
    assert report.rr_rows(r) == [] and not report.low_rate_one_backend(r)
    t = next(t for t in report.targets(r) if t.name.startswith("added p50"))
    assert t.met is True and "an older run" in t.figures and "spread cost" in t.figures
    old = tmp_path / "old.json"
    old.write_text(json.dumps(r))
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    assert cli.main(["bench", "--from-json", str(old), "--out", str(tmp_path / "o"),
                     "--docs", str(docs)]) == 0
    page = docs.read_text()
    assert "In this run (an older one) the proxied scenarios' low-rate runs took the " \
        "saturation route" in page
    assert "round robin (us)" not in page and "one backend (us)" not in page
    assert "a second relay" not in page  # that run had none


def test_a_paired_run_says_how_its_low_rate_was_measured_and_shows_the_l4_alternative(
        ) -> None:
    r = _with_round_robin(kernel_rr_p50=75.0, envoy_rr_p50=160.0)
    page = report.docs_page(r, "benchmarks", "benchmarks/bench.json")
    assert "wrk with a Lua `delay()`" in page and "Low-rate latency, paired" not in page
    assert not any("the alternative" in ln for ln in report.profile_lines(r))
    r["method"].update({"low_rate_paired": True, "low_rate_block": 100,
                        "low_rate_block_warmup": 10, "low_rate_requests": 1000})
    r["low_rate_l4"] = {"p50_us": 51.5, "p90_us": 80.0, "p99_us": 97.0}
    page = report.docs_page(r, "benchmarks", "benchmarks/bench.json")
    assert "Low-rate latency, paired" in page and "wrk with a Lua `delay()`" not in page
    assert "blocks of 10 untimed and 100 timed requests" in page and "1,000 timed" in page
    l4 = [ln for ln in report.profile_lines(r) if "the alternative" in ln]
    # over direct's 50 / 100 us
    assert len(l4) == 1 and "adds +1.5 us p50 and -3.0 us p99" in l4[0]
