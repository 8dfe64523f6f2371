"""`sockmesh tables`: readable and JSON forms of the flattened tables; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.routegen import generate
from tests.support.testdata import BOOKINFO_DUMP, PATH_SEPARATED_PREFIX_DUMP, istio_dump


def psp_dump() -> Path:
    return istio_dump(PATH_SEPARATED_PREFIX_DUMP)


def bookinfo_dump() -> Path:
    return istio_dump(BOOKINFO_DUMP)


def bookinfo_route_config() -> dict[str, Any]:
    dump = json.loads(bookinfo_dump().read_text())
    rc: dict[str, Any] = dump["configs"][0]["dynamic_route_configs"][0]["route_config"]
    return rc


def test_readable_tables_show_rules_in_last_match_order(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = bookinfo_route_config()
    routes = rc["virtual_hosts"][0]["routes"]
    code, out, err = run_cli(["tables", "--config-dump", str(bookinfo_dump())], capsys)
    assert code == 0, err
    assert f"ROUTE CONFIG {rc['name']}" in out
    assert f"VIRTUAL HOST {rc['virtual_hosts'][0]['name']}" in out
    # rule i of the table is Envoy route n-1-i, and its match is shown
    rule_lines = [ln for ln in out.splitlines() if ln.strip().split(" ")[0].isdigit()]
    assert len(rule_lines) == len(routes)
    for i, line in enumerate(rule_lines):
        envoy_index = len(routes) - 1 - i
        assert line.split()[:2] == [str(i), f"#{envoy_index}"]
        m = routes[envoy_index]["match"]
        assert repr(m.get("path", m.get("prefix"))) in line
    assert "not enforced:" in out and "retry_policy" in out
    assert "CLUSTERS (1)" in out and "LEAST_REQUEST" in out


def test_json_tables_keep_every_route_of_a_generated_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = generate(5)
    dump = tmp_path / "d.json"
    dump.write_text(json.dumps(g.config_dump()))
    code, out, err = run_cli(["tables", "--config-dump", str(dump), "--json"], capsys)
    assert code == 0, err
    tables = json.loads(out)
    assert set(tables) >= {"services", "route_tables", "clusters"}
    assert set(tables["clusters"]) == set(g.clusters)
    rt = tables["route_tables"][g.name]
    want_vhosts = g.route_config["virtual_hosts"]
    assert [v["name"] for v in rt["virtual_hosts"]] == [v["name"] for v in want_vhosts]
    for got, want in zip(rt["virtual_hosts"], want_vhosts, strict=True):
        assert got["domains"] == want["domains"]
        names = [r.get("name", "") for r in want["routes"]]
        assert [r["name"] for r in got["rules"]] == names[::-1]
        assert [r["envoy_index"] for r in got["rules"]] == list(range(len(names)))[::-1]


def test_tables_bad_input_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{\n\n  nope")
    code, out, err = run_cli(["tables", "--config-dump", str(bad)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("sockmesh tables: ") and "line 3 column 3" in err


def test_services_come_from_listeners(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.routegen import config_dump
    from tests.unit.test_explain_cmd import hcm_listener, with_listeners

    g = generate(6)
    dump = with_listeners(config_dump([g.route_config], g.clusters),
                          [hcm_listener("0.0.0.0_9080", "0.0.0.0", 9080, g.name)])
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dump))
    code, out, err = run_cli(["tables", "--config-dump", str(path)], capsys)
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "0.0.0.0:9080" in ln)
    assert line.split() == ["0.0.0.0:9080", "http", g.name, "0.0.0.0_9080"]
    code, out, err = run_cli(["tables", "--config-dump", str(path), "--json"], capsys)
    (svc,) = json.loads(out)["services"]
    assert {k: svc[k] for k in ("vip", "port", "kind", "route_table", "cluster", "listener")} == {
        "vip": "0.0.0.0", "port": 9080, "kind": "http", "route_table": g.name,
        "cluster": None, "listener": "0.0.0.0_9080"}


def test_skipped_endpoints_are_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dual-stack EDS assignment: the IPv6 endpoint is not an error, it is listed."""
    name = "outbound|80||svc.ns.svc.cluster.local"
    sock = [{"endpoint": {"address": {"socket_address": {"address": a, "port_value": 80}}}}
            for a in ("10.1.0.5", "fd00::5")]
    dump = {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
         "dynamic_active_clusters": [{"cluster": {
             "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": name,
             "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
         "dynamic_endpoint_configs": [{"endpoint_config": {
             "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
             "cluster_name": name, "endpoints": [{"lb_endpoints": sock}]}}]}]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dump))
    code, out, err = run_cli(["tables", "--config-dump", str(path)], capsys)
    assert code == 0, err
    lines = [ln.strip() for ln in out.splitlines()]
    assert any(ln.startswith("10.1.0.5:80 ") for ln in lines)
    assert not any(ln.startswith("fd00::5") for ln in lines)
    assert "not enforced: endpoint [fd00::5]:80 skipped: IPv6 not supported" in lines
