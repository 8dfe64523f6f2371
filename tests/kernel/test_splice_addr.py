"""The splice listener binds the address the Datapath is given, and connect4 sends L7
connections there (a node agent with hostNetwork gives the node IP; tests stay on
loopback)."""

from __future__ import annotations

import ctypes as C
import socket
from pathlib import Path

import pytest

from bpf import layout
from bpf.datapath import Datapath
from bpf.encoder import ip_str
from bpf.maps import PinnedMap
from tests.kernel.conftest import Client, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost
from tests.support import cgroup as cgsupport
from translator.tables import PathKind

VIP, PORT = "127.10.0.9", 8080
SPLICE = "127.0.0.9"  # loopback, but not the default 127.0.0.1


def test_connect4_sends_l7_connections_to_the_given_splice_address(backends) -> None:
    b1, b2 = make_backends(backends, "b1", "b2")
    with cgsupport.test_cgroup() as cg:
        dp = Datapath(cg, cgsupport.pin_dir_for(cg), splice_addr=SPLICE, warm=1)
        dp.load()
        client = None
        try:
            assert dp.splice is not None and dp.splice.addr[0] == SPLICE
            cfg = PinnedMap(dp.pin_dir / layout.CONFIG_MAP, C.c_uint32, layout.Config)
            try:
                got = cfg.get(0)
            finally:
                cfg.close()
            assert got is not None
            assert (ip_str(got.splice_ip), socket.ntohs(got.splice_port)) == dp.splice.addr
            dp.apply(http_tables(VIP, PORT, [vhost("svc", ["*"], [
                rule("/", action=to("c1")),
                rule("/re/[a-z]+", PathKind.REGEX, action=to("c2"))])],  # slow path
                [cluster("c1", [b1]), cluster("c2", [b2])]))
            client = Client(cg)
            client.connect("a", VIP, PORT)
            assert client.request("a", http("GET", "/", "svc"))["headers"]["x-backend"] == "b1"
            r = client.request("a", http("GET", "/re/x", "svc"))
            assert r["headers"]["x-backend"] == "b2"
            assert r["headers"].get("x-sockmesh-path") is None  # proxied, not a local reply
            me = dp.dump()["clients"]
            assert len(me) == 1 and me[0]["service"] == f"{VIP}:{PORT}"
        finally:
            if client is not None:
                client.close()
            dp.close()


def test_splice_address_must_be_ipv4() -> None:
    for bad in ("::1", "localhost", "127.0.0.256"):
        with pytest.raises(ValueError, match="not an IPv4 address"):
            Datapath([], Path("/sys/fs/bpf/sockmesh-test-unused"), splice_addr=bad)


def test_sockmesh_run_flag_reaches_the_keepers_datapath() -> None:
    """``sockmesh run --splice-addr`` -> AgentConfig -> the socket keeper's Datapath."""
    from integration.agent import default_datapath
    from integration.cli import build_parser
    from integration.commands.run import build_config

    args = build_parser().parse_args(["run", "--xds-server", "127.0.0.1:1", "--no-datapath",
                                      "--splice-addr", SPLICE])
    config = build_config(args)
    assert config.splice_addr == SPLICE
    with cgsupport.test_cgroup() as cg:
        dp = default_datapath([cg], cgsupport.pin_dir_for(cg), config.splice_addr)
        dp.load()
        try:
            keeper = getattr(dp, "keeper", None)
            assert keeper is not None and keeper.info["splice"][0] == SPLICE
        finally:
            dp.close(detach=True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--splice-addr", "::1"])
