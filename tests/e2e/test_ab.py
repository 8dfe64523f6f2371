"""`sockmesh ab`: a real Envoy and the real kernel datapath on the same configuration.

* the three Istio sample dumps (shared/testdata/istio), generated boundary requests: 100%
  agreement, exit 0, report written, the kernel routed some of them itself;
* the demo's bookinfo mesh taken from a live xDS server (--xds-server): agreement, header
  and weighted routes covered, both clusters of the 50/50 split seen on both sides;
* a datapath given the wrong endpoints for one cluster: every affected request is listed as
  a disagreement with both decisions (the comparison can fail);
* --requests FILE with route_config, and a bad line named by its number.
~60 s on 2 busy cores (each run starts backends, the datapath and Envoy).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from integration import ab
from integration.preflight import BPFFS, CGROUP2_ROOT
from tests.support.testdata import istio_testdata
from translator.resources import parse_config_dump
from translator.tables import Tables

ROOT = Path(__file__).resolve().parents[2]
SOCKMESH = [sys.executable, "-m", "integration.cli"]
ISTIO = istio_testdata()
DUMPS = ("istio_bookinfo_gateway_rds_cds.json", "istio_gateway_prefix_rds.json",
         "istio_k8s_gateway_path_separated_prefix_rds.json")

pytestmark = [pytest.mark.kernel, pytest.mark.envoy, pytest.mark.timeout(300)]


def _leftovers() -> set[str]:
    """Cgroups and pin dirs of runs whose process is gone (a live one belongs to a run in
    progress, e.g. another checkout's test session on this machine)."""
    return {p.name for base in (CGROUP2_ROOT, BPFFS) for p in base.glob("sockmesh-ab-*")
            if not Path(f"/proc/{p.name.rsplit('-', 1)[-1]}").exists()}


def _ab(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(SOCKMESH + ["ab", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize("dump", DUMPS)
def test_istio_dump_agrees(dump: str, tmp_path: Path) -> None:
    if ISTIO is None:
        pytest.skip("shared/testdata/istio not found")
    before = _leftovers()
    out = tmp_path / "ab"
    proc = _ab(["--config-dump", str(ISTIO / dump), "--generate", "300", "--out", str(out)])
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "ab.json").read_text())
    assert s["ok"] and s["compared"] == 300 and s["disagree"] == 0
    assert all(r["agree"] and not r["envoy"]["error"] and not r["sockmesh"]["error"]
               for r in s["rows"])
    assert s["datapath"]["counters"].get("fast", 0) > 0  # the kernel routed some itself
    served = [r for r in s["rows"] if r["envoy"]["cluster"]]
    assert served, "no request reached a cluster"
    html = (out / "report.html").read_text()
    assert "AGREE" in html and "data:image/png;base64," in html
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "requests.jsonl").read_text().splitlines()) == 300
    assert _leftovers() <= before


@pytest.fixture
def demo_xds_server() -> Iterator[int]:
    """The demo's bookinfo mesh (endpoints on 127.20.x.y) on an embedded xDS server."""
    from integration.demo import mesh
    from integration.xds_server import AdsServer

    endpoints = mesh.endpoints_of(mesh.backends(), {b.name: 19000 + i for i, b in
                                                    enumerate(mesh.backends())})
    server = AdsServer(mesh.mesh_resources(endpoints))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(30)
    try:
        yield int(port)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=0.2), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_demo_mesh_from_xds_server_agrees(demo_xds_server: int, tmp_path: Path) -> None:
    out = tmp_path / "ab"
    proc = _ab(["--xds-server", f"127.0.0.1:{demo_xds_server}", "--generate", "400",
                "--out", str(out)])
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "ab.json").read_text())
    assert s["ok"] and s["disagree"] == 0 and s["compared"] == 400
    jason = [r for r in s["rows"] if ["end-user", "jason"] in r["request"]["headers"]]
    assert jason and {r["envoy"]["cluster"] for r in jason} == {"reviews-v2"}
    assert {r["sockmesh"]["cluster"] for r in jason} == {"reviews-v2"}
    split = [r for r in s["rows"] if r["tables"]["action"] == "weighted_clusters"]
    for side in ("envoy", "sockmesh"):
        assert {r[side]["cluster"] for r in split} == {"reviews-v1", "reviews-v3"}, side
    # details has two endpoints (RANDOM): both sides use both
    details = s["distributions"]["details"]
    assert len(details) == 2
    assert all(v["envoy"] > 0 and v["sockmesh"] > 0 for v in details.values()), details


def test_wrong_endpoints_are_reported_as_disagreements(demo_xds_server: int,
                                                       tmp_path: Path) -> None:
    """The datapath gets productpage's endpoints for cluster details: the A/B must say so."""
    from integration.commands import ab as ab_cmd

    rs = ab_cmd._load(ab_cmd.argparse.Namespace(
        config_dump=None, xds_server=f"127.0.0.1:{demo_xds_server}", timeout=15.0))
    cfg = ab.map_config(rs)
    real = cfg.sockmesh_tables

    def tampered(ports: Mapping[str, int]) -> Tables:
        t = real(ports)
        clusters = dict(t.clusters)
        clusters["details"] = replace(clusters["details"],
                                      endpoints=clusters["productpage"].endpoints)
        return replace(t, clusters=clusters)

    cfg.sockmesh_tables = tampered  # type: ignore[method-assign]
    requests, _ = ab.generate(cfg, 200)
    s = ab.AbRun(cfg, requests, tmp_path / "ab", print).run()
    details = [r for r in s["rows"] if r["envoy"]["cluster"] == "details"]
    assert details
    assert not s["ok"] and s["disagree"] == len(details)
    for row in s["disagreements"]:
        assert row["envoy"]["cluster"] == "details"
        assert row["sockmesh"]["cluster"] == "productpage"
        assert any("kernel served cluster productpage, the tables say details" in p
                   for p in row["problems"])
    text = ab.render_text(s)
    assert "DISAGREE" in text and "envoy:" in text and "sockmesh:" in text
    report = ab.write_report(tmp_path / "ab", s)
    assert "DISAGREE" in report.read_text()


def test_requests_file(tmp_path: Path) -> None:
    if ISTIO is None:
        pytest.skip("shared/testdata/istio not found")
    dump = ISTIO / "istio_gateway_prefix_rds.json"
    rc = next(iter(parse_config_dump(json.loads(dump.read_text())).route_configs))
    lines = [{"route_config": rc, "authority": "httpbin.example.com", "path": "/get"},
             {"authority": "httpbin.example.com", "path": "/getx?a=1"},
             {"authority": "other.example.com", "path": "/get", "headers": {"x-a": "1"}}]
    reqs = tmp_path / "r.jsonl"
    reqs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = _ab(["--config-dump", str(dump), "--requests", str(reqs), "--out",
                str(tmp_path / "ab")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((tmp_path / "ab" / "ab.json").read_text())
    assert s["compared"] == 3
    assert [r["envoy"]["status"] for r in s["rows"]] == [r["sockmesh"]["status"]
                                                        for r in s["rows"]]
    assert s["rows"][2]["envoy"]["status"] == 404  # unknown host: no route on either side
    reqs.write_text(json.dumps(lines[0]) + "\n" + "{not json\n")
    proc = _ab(["--config-dump", str(dump), "--requests", str(reqs), "--out",
                str(tmp_path / "ab2")])
    assert proc.returncode == 1 and "line 2" in proc.stderr, proc.stderr
