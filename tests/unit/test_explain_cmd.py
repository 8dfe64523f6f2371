"""`sockmesh explain`: batch and single forms, --port, and every bad-input path (exit 2).

Runs the CLI in-process (integration.cli.main); no network.  Expected decisions are derived
from the input configs (route names, clusters, domains), never typed in as results.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.routegen import config_dump, generate
from tests.support.testdata import BOOKINFO_DUMP, PATH_SEPARATED_PREFIX_DUMP, istio_dump

DECISION_KEYS = {"route_config", "virtual_host", "route", "envoy_index", "rule", "action",
                 "cluster", "candidates", "status", "location", "not_enforced"}
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")


def psp_dump() -> Path:
    return istio_dump(PATH_SEPARATED_PREFIX_DUMP)


def bookinfo_dump() -> Path:
    return istio_dump(BOOKINFO_DUMP)


def write(tmp_path: Path, name: str, obj: Any) -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def psp_route_config() -> dict[str, Any]:
    dump = json.loads(psp_dump().read_text())
    rc: dict[str, Any] = dump["configs"][0]["dynamic_route_configs"][0]["route_config"]
    return rc


def hcm_listener(name: str, vip: str, port: int, rds: str) -> dict[str, Any]:
    """An Istio-shaped outbound listener whose HCM takes route config ``rds`` over ADS."""
    return {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": name,
            "address": {"socket_address": {"address": vip, "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM_TYPE, "stat_prefix": name,
                    "rds": {"route_config_name": rds, "config_source": {"ads": {}}},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router."
                                 "v3.Router"}}]}}]}]}


def with_listeners(dump: dict[str, Any], listeners: list[dict[str, Any]]) -> dict[str, Any]:
    dump = json.loads(json.dumps(dump))
    dump["configs"].append({"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                            "dynamic_listeners": [{"name": lst["name"],
                                                   "active_state": {"listener": lst}}
                                                  for lst in listeners]})
    return dump


# --- batch form -----------------------------------------------------------------------------

def test_batch_one_decision_per_line_in_order(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = psp_route_config()
    route = rc["virtual_hosts"][0]["routes"][0]
    prefix, cluster = route["match"]["path_separated_prefix"], route["route"]["cluster"]
    host = rc["virtual_hosts"][0]["domains"][0]
    paths = [prefix, f"{prefix}x", f"{prefix}/x", f"{prefix}?q=1", "/"]
    reqs = write(tmp_path, "r.jsonl", "".join(
        json.dumps({"method": "GET", "authority": host, "path": p, "headers": {"x-a": "b"}})
        + "\n" + ("\n" if i == 1 else "")  # a blank line is skipped
        for i, p in enumerate(paths)))
    code, out, err = run_cli(["explain", "--config-dump", str(psp_dump()),
                              "--route-config", rc["name"], "--requests", str(reqs)], capsys)
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == len(paths)
    for d in lines:
        assert set(d) == DECISION_KEYS
        assert d["route_config"] == rc["name"]
    routed = [d["cluster"] for d in lines]
    assert routed == [cluster, None, cluster, cluster, None]
    assert lines[0]["route"] == route["name"] and lines[0]["envoy_index"] == 0
    assert lines[1]["action"] == "no_route" and lines[1]["status"] == 404
    assert "retry_policy.retry_on.retriable-status-codes" in lines[0]["not_enforced"]


def test_batch_reads_stdin(capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    rc = psp_route_config()
    host = rc["virtual_hosts"][0]["domains"][0]
    monkeypatch.setattr("sys.stdin", io.StringIO(
        json.dumps({"authority": host, "path": "/get"}) + "\n"
        + json.dumps({"authority": "elsewhere", "path": "/get"}) + "\n"))
    code, out, err = run_cli(["explain", "--config-dump", str(psp_dump()),
                              "--route-config", rc["name"], "--requests", "-"], capsys)
    assert code == 0, err
    first, second = (json.loads(x) for x in out.splitlines())
    assert first["virtual_host"] == rc["virtual_hosts"][0]["name"]
    assert second["virtual_host"] is None and second["status"] == 404


def test_batch_matches_single_json_on_generated_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = generate(3)
    dump = write(tmp_path, "gen.json", g.config_dump())
    # -H drops whitespace around a value (like curl), so padded values stay out of the sample
    sample = [r for r in g.requests if r.headers and not r.extra_headers
              and all(v == v.strip() for v in r.headers.values())][:20]
    reqs = write(tmp_path, "r.jsonl", "".join(json.dumps(r.to_dict()) + "\n" for r in sample))
    code, out, err = run_cli(["explain", "--config-dump", str(dump), "--route-config", g.name,
                              "--requests", str(reqs)], capsys)
    assert code == 0, err
    batch = [json.loads(x) for x in out.splitlines()]
    for r, want in zip(sample, batch, strict=True):
        argv = ["explain", "--config-dump", str(dump), "--route-config", g.name, "--json",
                "-X", r.method]
        for k, v in r.headers.items():
            argv += ["-H", f"{k}: {v}"]
        code, out, err = run_cli([*argv, f"http://{r.authority}{r.path}"], capsys)
        assert code == 0, err
        assert json.loads(out) == want, r


# --- single form ----------------------------------------------------------------------------

def test_single_form_explains_virtual_host_rule_and_action(
        capsys: pytest.CaptureFixture[str]) -> None:
    dump = json.loads(bookinfo_dump().read_text())
    rc = dump["configs"][0]["dynamic_route_configs"][0]["route_config"]
    vh = rc["virtual_hosts"][0]
    routes = vh["routes"]
    target = next(i for i, r in enumerate(routes) if "prefix" in r["match"])
    path = routes[target]["match"]["prefix"] + "/app.css"
    code, out, err = run_cli(["explain", "--config-dump", str(bookinfo_dump()), "--route-config",
                              rc["name"], "-H", "x-user: jason", f"http://anything:80{path}"],
                             capsys)
    assert code == 0, err
    assert f"virtual host   {vh['name']}" in out
    assert f"#{len(routes) - 1 - target} of {len(routes)} in the last-match table" in out
    assert f"#{target} in Envoy order" in out
    assert routes[target]["route"]["cluster"] in out
    assert "x-user: jason" in out
    assert "not enforced" in out and "retry_policy" in out


def test_single_form_host_header_sets_authority(capsys: pytest.CaptureFixture[str]) -> None:
    rc = psp_route_config()
    host = rc["virtual_hosts"][0]["domains"][0]
    code, out, err = run_cli(["explain", "--config-dump", str(psp_dump()), "--route-config",
                              rc["name"], "--json", "-H", f"Host: {host}",
                              "http://127.0.0.1:8080/get/x"], capsys)
    assert code == 0, err
    assert json.loads(out)["virtual_host"] == rc["virtual_hosts"][0]["name"]


def test_single_form_no_route_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    rc = psp_route_config()
    code, out, _ = run_cli(["explain", "--config-dump", str(psp_dump()), "--route-config",
                            rc["name"], "http://no.such.host/get"], capsys)
    assert code == 0
    assert "virtual host   none" in out and "404" in out


# --- --port ---------------------------------------------------------------------------------

def test_port_picks_the_route_config_of_the_wildcard_listener(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = generate(1), generate(2)
    dump = config_dump([a.route_config, b.route_config], a.clusters + b.clusters)
    dump = with_listeners(dump, [hcm_listener("0.0.0.0_9080", "0.0.0.0", 9080, a.name),
                                 hcm_listener("0.0.0.0_8000", "0.0.0.0", 8000, b.name)])
    path = write(tmp_path, "d.json", dump)
    reqs = write(tmp_path, "r.jsonl", json.dumps(a.requests[0].to_dict()) + "\n")
    for port, name in ((9080, a.name), (8000, b.name)):
        code, out, err = run_cli(["explain", "--config-dump", str(path), "--port", str(port),
                                  "--requests", str(reqs)], capsys)
        assert code == 0, err
        assert json.loads(out)["route_config"] == name


def test_port_errors_name_the_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = generate(1), generate(2)
    dump = config_dump([a.route_config, b.route_config], a.clusters + b.clusters)
    dump = with_listeners(dump, [hcm_listener("10.0.0.1_8080", "10.0.0.1", 8080, a.name),
                                 hcm_listener("10.0.0.2_8080", "10.0.0.2", 8080, b.name),
                                 hcm_listener("0.0.0.0_7070", "0.0.0.0", 7070, "missing")])
    path = write(tmp_path, "d.json", dump)
    base = ["explain", "--config-dump", str(path), "http://x/"]
    code, _, err = run_cli([*base, "--port", "8080"], capsys)
    assert code == 2 and "ambiguous" in err and a.name in err and b.name in err
    code, _, err = run_cli([*base, "--port", "1234"], capsys)
    assert code == 2 and "no service listens on port 1234" in err and "8080" in err
    code, _, err = run_cli([*base, "--port", "7070"], capsys)
    assert code == 2 and "'missing'" in err and "not in the config dump" in err
    bare = write(tmp_path, "bare.json", a.config_dump())
    code, _, err = run_cli(["explain", "--config-dump", str(bare), "--port", "9080",
                            "http://x/"], capsys)
    assert code == 2 and "no listeners" in err


# --- bad input ------------------------------------------------------------------------------

def _explain_err(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (code, out, err)
    assert out == ""
    assert err.startswith("sockmesh explain: ")
    return err


def test_unreadable_and_malformed_config_dump(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    err = _explain_err(["explain", "--config-dump", str(missing), "--route-config", "x",
                        "http://a/"], capsys)
    assert "cannot read" in err and "nope.json" in err
    bad = write(tmp_path, "bad.json", '{"configs": [\n  {"@type": 1,}\n]}')
    err = _explain_err(["explain", "--config-dump", str(bad), "--route-config", "x",
                        "http://a/"], capsys)
    assert "malformed JSON at line 2 column" in err
    notdump = write(tmp_path, "nd.json", {"virtual_hosts": []})
    err = _explain_err(["explain", "--config-dump", str(notdump), "--route-config", "x",
                        "http://a/"], capsys)
    assert "not a config dump" in err


def _dump_with_route(tmp_path: Path, route: dict[str, Any], **rc_extra: Any) -> Path:
    rc = {"name": "rc1", "virtual_hosts": [{"name": "vh1", "domains": ["*"],
                                            "routes": [route]}], **rc_extra}
    return write(tmp_path, "d.json", config_dump([rc], ["c1"]))


def test_unknown_field_names_resource_and_field(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    dump = _dump_with_route(tmp_path, {"match": {"prefix": "/", "prefixx": "/a"},
                                       "route": {"cluster": "c1"}})
    err = _explain_err(["explain", "--config-dump", str(dump), "--route-config", "rc1",
                        "http://a/"], capsys)
    assert "RouteConfiguration 'rc1'" in err and "prefixx" in err


def test_invalid_regex_names_resource_and_field(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    dump = _dump_with_route(tmp_path, {"match": {"safe_regex": {"regex": "/a(["}},
                                       "route": {"cluster": "c1"}})
    err = _explain_err(["explain", "--config-dump", str(dump), "--route-config", "rc1",
                        "http://a/"], capsys)
    assert "rc1" in err and "safe_regex" in err and "regex" in err


def test_dangling_cluster_reference_is_an_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # validate_clusters on and the dump has clusters: a route to an unknown one is rejected
    dump = _dump_with_route(tmp_path, {"match": {"prefix": "/"},
                                       "route": {"cluster": "not-defined"}},
                            validate_clusters=True)
    err = _explain_err(["explain", "--config-dump", str(dump), "--route-config", "rc1",
                        "http://a/"], capsys)
    assert "rc1" in err and "not-defined" in err


def test_unknown_route_config_lists_known_ones(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    a = generate(4)
    dump = write(tmp_path, "d.json", a.config_dump())
    err = _explain_err(["explain", "--config-dump", str(dump), "--route-config", "nope",
                        "http://a/"], capsys)
    assert "unknown route config 'nope'" in err and a.name in err


@pytest.mark.parametrize(("line", "expect"), [
    ('{"path": "/a"', "malformed JSON"),
    ('["GET", "/"]', "expected a JSON object"),
    ('{"path": "/a", "hedaers": {}}', "hedaers"),
    ('{"path": 5}', "'path' must be a string"),
    ('{"path": "a"}', "must start with '/'"),
    ('{"path": "/", "headers": {"x": 1}}', "header"),
    ('{"path": "/", "headers": "x: y"}', "'headers'"),
])
def test_bad_request_line_names_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         line: str, expect: str) -> None:
    rc = psp_route_config()
    reqs = write(tmp_path, "r.jsonl", '{"path": "/get"}\n\n' + line + "\n")
    err = _explain_err(["explain", "--config-dump", str(psp_dump()), "--route-config",
                        rc["name"], "--requests", str(reqs)], capsys)
    assert "r.jsonl line 3" in err and expect in err


def test_bad_single_form_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    rc = psp_route_config()
    base = ["explain", "--config-dump", str(psp_dump()), "--route-config", rc["name"]]
    assert "expected 'name: value'" in _explain_err([*base, "-H", "novalue", "http://a/"],
                                                    capsys)
    assert "expected http://" in _explain_err([*base, "a/b"], capsys)
    assert "either --requests" in _explain_err(base, capsys)


def test_port_error_says_which_listeners_were_skipped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = generate(1)
    inbound = hcm_listener("virtualInbound", "0.0.0.0", 15006, a.name)
    inbound["traffic_direction"] = "INBOUND"
    dump = with_listeners(config_dump([a.route_config], a.clusters), [inbound])
    path = write(tmp_path, "d.json", dump)
    err = _explain_err(["explain", "--config-dump", str(path), "--port", "15006",
                        "http://x/"], capsys)
    assert "no service listens on port 15006" in err and "virtualInbound skipped" in err


def test_config_dump_from_stdin(capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    rc = psp_route_config()
    monkeypatch.setattr("sys.stdin", io.StringIO(psp_dump().read_text()))
    code, out, err = run_cli(["explain", "--config-dump", "-", "--route-config", rc["name"],
                              "--json", f"http://{rc['virtual_hosts'][0]['domains'][0]}/get"],
                             capsys)
    assert code == 0, err
    assert json.loads(out)["cluster"] == rc["virtual_hosts"][0]["routes"][0]["route"]["cluster"]
    err = _explain_err(["explain", "--config-dump", "-", "--route-config", rc["name"],
                        "--requests", "-"], capsys)
    assert "cannot both be stdin" in err


def test_header_given_twice_in_both_forms(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = {"name": "rc1", "virtual_hosts": [{"name": "vh1", "domains": ["*"], "routes": [
        {"name": "r", "match": {"prefix": "/", "headers": [
            {"name": "x-v", "string_match": {"exact": "b"}}]}, "route": {"cluster": "c1"}}]}]}
    dump = write(tmp_path, "d.json", config_dump([rc], ["c1"]))
    reqs = write(tmp_path, "r.jsonl", "".join(json.dumps(x) + "\n" for x in (
        {"path": "/", "headers": {"x-v": ["a", "b"]}},
        {"path": "/", "headers": [["x-v", "a"], ["x-v", "b"]]},
        {"path": "/", "headers": {"x-v": "a"}})))
    code, out, err = run_cli(["explain", "--config-dump", str(dump), "--route-config", "rc1",
                              "--requests", str(reqs)], capsys)
    assert code == 0, err
    # Envoy matches a repeated header when any one value matches (see tests/diff)
    assert [json.loads(x)["route"] for x in out.splitlines()] == ["r", "r", None]
