"""Istio's outboundTrafficPolicy: what istiod sends for REGISTRY_ONLY and ALLOW_ANY, and the
service-table entry (or none) the translator makes of it.

The two dumps in tests/peers/istiod/dumps are what a standalone istiod 1.29 sends a sidecar
of the test config with each mode (`test_stored_dumps_are_what_istiod_sends` checks them
against a live istiod and rewrites them with SOCKMESH_WRITE_ISTIOD_DUMPS=1).  The shapes:

* virtualOutbound (use_original_dst): a chain matching destination_port 15001 (a loop
  guard) to BlackHoleCluster, and the catch-all chain without match criteria to
  BlackHoleCluster (REGISTRY_ONLY) or PassthroughCluster (ALLOW_ANY);
* 0.0.0.0_19080: the HTTP chain, and a default chain to the same cluster as the catch-all;
* route config 19080: the services' virtual hosts plus ``*`` -> "block_all" (direct
  response 502) or "allow_any" (PassthroughCluster).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from translator import TableBuilder, translate
from translator.model import Request, decide_connect, route
from translator.resources import LISTENER, parse_config_dump, parse_resource
from translator.tables import (
    ANY_PORT,
    BLACKHOLE_CLUSTER,
    ActionKind,
    Service,
    ServiceKind,
    Tables,
)

DUMPS = Path(__file__).resolve().parents[1] / "peers" / "istiod" / "dumps"
MODES = ("REGISTRY_ONLY", "ALLOW_ANY")
T = "type.googleapis.com/"
TCP_PROXY = T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
POLICY = Service("0.0.0.0", ANY_PORT, ServiceKind.BLACKHOLE, cluster=BLACKHOLE_CLUSTER,
                 listener="virtualOutbound")
KNOWN_VIP = "127.10.0.1"  # reviews.sockmesh.test
SPLICE = ("127.0.0.1", 15999)


def dump_path(mode: str) -> Path:
    return DUMPS / f"{mode.lower()}.json"


def load(mode: str) -> Tables:
    return translate(parse_config_dump(json.loads(dump_path(mode).read_text())))


def test_registry_only_refuses_unknown_destinations() -> None:
    t = load("REGISTRY_ONLY")
    by_key = {(s.vip, s.port): s for s in t.services}
    assert by_key[("0.0.0.0", ANY_PORT)] == POLICY
    assert by_key[("0.0.0.0", 19080)].kind is ServiceKind.HTTP  # the HTTP chain wins the port
    assert "virtualOutbound" not in dict(t.skipped_listeners)
    verdicts = {dst: decide_connect(t, *dst, splice=SPLICE).verdict for dst in [
        ("127.30.0.1", 8080), ("10.1.2.3", 443), (KNOWN_VIP, 19080), ("127.30.0.1", 19080),
        ("127.0.0.1", 8080), SPLICE, ("127.0.0.2", 8080)]}
    assert verdicts == {
        ("127.30.0.1", 8080): "refused", ("10.1.2.3", 443): "refused",
        (KNOWN_VIP, 19080): "http",
        ("127.30.0.1", 19080): "http",  # any destination on an HTTP port: block_all below
        ("127.0.0.1", 8080): "pass", SPLICE: "pass",  # exempt
        ("127.0.0.2", 8080): "refused"}
    # an unknown host on the HTTP port: Envoy's block_all answer
    d = route(t.route_tables["19080"], Request(authority="unknown.example", path="/x"),
              t.clusters)
    assert (d.virtual_host, d.action, d.status) == ("block_all", ActionKind.DIRECT_RESPONSE, 502)


def test_allow_any_leaves_unknown_destinations_alone() -> None:
    t = load("ALLOW_ANY")
    assert not [s for s in t.services if s.port == ANY_PORT or s.kind is ServiceKind.BLACKHOLE]
    why = dict(t.skipped_listeners)["virtualOutbound"]
    assert "left alone" in why and "PassthroughCluster" in why
    assert decide_connect(t, "127.30.0.1", 8080).verdict == "pass"
    assert decide_connect(t, KNOWN_VIP, 19080).verdict == "http"
    d = route(t.route_tables["19080"], Request(authority="unknown.example", path="/x"),
              t.clusters)
    assert (d.virtual_host, d.action, d.cluster) == ("allow_any", ActionKind.CLUSTER,
                                                     "PassthroughCluster")


def tcp(cluster: str) -> dict[str, Any]:
    return {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster}}]}


def listener(name: str, addr: str, port: int, chains: list[dict[str, Any]],
             **extra: Any) -> Any:
    return parse_resource({"@type": LISTENER, "name": name, "address": {"socket_address": {
        "address": addr, "port_value": port}}, "filter_chains": chains, **extra})


def virtual_outbound(chains: list[dict[str, Any]], **extra: Any) -> Any:
    return listener("virtualOutbound", "0.0.0.0", 15001, chains, use_original_dst=True,
                    traffic_direction="OUTBOUND", **extra)


GUARD = {"filter_chain_match": {"destination_port": 15001}, **tcp("PassthroughCluster")}


@pytest.mark.parametrize(("chains", "extra", "blackhole"), [
    ([GUARD, tcp(BLACKHOLE_CLUSTER)], {}, True),  # istiod 1.29, REGISTRY_ONLY
    ([GUARD, tcp("PassthroughCluster")], {}, False),  # ALLOW_ANY
    ([GUARD], {"default_filter_chain": tcp(BLACKHOLE_CLUSTER)}, True),  # only a default
    # Envoy takes a chain without match criteria before the default chain
    ([tcp("PassthroughCluster")], {"default_filter_chain": tcp(BLACKHOLE_CLUSTER)}, False),
    ([{"filter_chain_match": {"destination_port": 15001}, **tcp(BLACKHOLE_CLUSTER)}], {},
     False),  # no catch-all: the loop guard alone says nothing about other destinations
])
def test_the_catch_all_chain_decides(chains: list[dict[str, Any]], extra: dict[str, Any],
                                     blackhole: bool) -> None:
    b = TableBuilder()
    diff = b.apply(LISTENER, "virtualOutbound", virtual_outbound(chains, **extra))
    t = b.tables()
    assert (POLICY in t.services) == blackhole
    assert ("virtualOutbound" in dict(t.skipped_listeners)) != blackhole
    assert dict(diff.services.upserted) == ({("0.0.0.0", ANY_PORT): POLICY} if blackhole else {})


def test_switching_modes_is_one_service_row() -> None:
    """The encoder writes diffs: the policy comes and goes as the (0.0.0.0, 0) row."""
    b = TableBuilder()
    allow = virtual_outbound([GUARD, tcp("PassthroughCluster")])
    block = virtual_outbound([GUARD, tcp(BLACKHOLE_CLUSTER)])
    assert not b.apply(LISTENER, "virtualOutbound", allow)
    diff = b.apply(LISTENER, "virtualOutbound", block)
    assert (dict(diff.services.upserted), diff.services.removed) == (
        {("0.0.0.0", ANY_PORT): POLICY}, ())
    diff = b.apply(LISTENER, "virtualOutbound", allow)
    assert (dict(diff.services.upserted), diff.services.removed) == ({}, (("0.0.0.0",
                                                                           ANY_PORT),))
    diff = b.apply(LISTENER, "virtualOutbound", block)
    diff = b.apply(LISTENER, "virtualOutbound", None)
    assert diff.services.removed == (("0.0.0.0", ANY_PORT),)


def test_tcp_proxy_to_blackhole_cluster_is_refused_not_an_l4_service() -> None:
    """A per-VIP or per-port chain to BlackHoleCluster refuses like the catch-all does (a
    TCP entry to a cluster without endpoints would let the connect through)."""
    t = translate_listeners([
        listener("10.96.0.9_3306", "10.96.0.9", 3306, [tcp(BLACKHOLE_CLUSTER)]),
        listener("0.0.0.0_5432", "0.0.0.0", 5432, [
            {"filter_chain_match": {"prefix_ranges": [{"address_prefix": "10.96.0.8",
                                                       "prefix_len": 32}]},
             **tcp("outbound|5432||pg")}], default_filter_chain=tcp(BLACKHOLE_CLUSTER)),
    ])
    got = {(s.vip, s.port): (s.kind, s.cluster) for s in t.services}
    assert got == {("10.96.0.9", 3306): (ServiceKind.BLACKHOLE, BLACKHOLE_CLUSTER),
                   ("10.96.0.8", 5432): (ServiceKind.TCP, "outbound|5432||pg"),
                   ("0.0.0.0", 5432): (ServiceKind.BLACKHOLE, BLACKHOLE_CLUSTER)}
    assert decide_connect(t, "10.96.0.7", 5432).verdict == "refused"
    assert decide_connect(t, "10.96.0.8", 5432).verdict == "tcp"
    assert decide_connect(t, "10.96.0.7", 5433).verdict == "pass"  # no catch-all policy


def translate_listeners(listeners: list[Any]) -> Tables:
    b = TableBuilder()
    for lst in listeners:
        b.apply(LISTENER, lst.name, lst)
    return b.tables()


@pytest.mark.istiod
@pytest.mark.parametrize("mode", MODES)
def test_stored_dumps_are_what_istiod_sends(mode: str, tmp_path: Path) -> None:
    """A live istiod with the test config and ``mode`` translates to the same tables as the
    stored dump (SOCKMESH_WRITE_ISTIOD_DUMPS=1 rewrites the stored dump instead)."""
    from tests.support.istio_sidecar import xds_dump
    from tests.support.istiod import Istiod, copy_config, mesh_config

    mesh = mesh_config()
    mesh["outboundTrafficPolicy"] = {"mode": mode}
    with Istiod(copy_config(tmp_path / "config"), tmp_path / "istiod", mesh=mesh) as istiod:
        live = xds_dump(istiod, tmp_path / "dump.json")
    if os.environ.get("SOCKMESH_WRITE_ISTIOD_DUMPS") == "1":
        dump_path(mode).write_text(json.dumps(live, indent=1, sort_keys=True) + "\n")
    got, want = translate(parse_config_dump(live)), load(mode)
    assert got.services == want.services
    assert got.skipped_listeners == want.skipped_listeners
    assert got.route_tables == want.route_tables


def test_explain_connect_says_what_connect4_does(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.cli import run_cli

    def explain(mode: str, *args: str) -> tuple[int, str, str]:
        return run_cli(["explain", "--config-dump", str(dump_path(mode)), *args], capsys)

    code, out, _ = explain("REGISTRY_ONLY", "--connect", "127.30.0.1:8080")
    assert code == 0 and "0.0.0.0:0 blackhole (listener virtualOutbound)" in out
    assert "refused" in out and "EPERM" in out
    code, out, _ = explain("ALLOW_ANY", "--connect", "127.30.0.1:8080", "--json")
    assert code == 0 and json.loads(out)["verdict"] == "pass"
    code, out, _ = explain("REGISTRY_ONLY", "--connect", "127.0.0.1:8080", "--json")
    assert json.loads(out)["verdict"] == "pass"
    # requests on an HTTP port are routed on that service's table: block_all's 502
    code, out, _ = explain("REGISTRY_ONLY", "--connect", "127.30.0.1:19080", "--json",
                           "http://unknown.example/x")
    assert code == 0 and (json.loads(out)["virtual_host"], json.loads(out)["status"]) == (
        "block_all", 502)
    code, _, err = explain("REGISTRY_ONLY", "--connect", "127.30.0.1:8080",
                           "http://unknown.example/x")
    assert code == 2 and "not routed per request: refused" in err
    code, _, err = explain("REGISTRY_ONLY", "--connect", "reviews:19080")
    assert code == 2 and "not an IPv4 address" in err
