"""integration.datapath_info reads the maps a loaded Datapath actually pins."""

from __future__ import annotations

from bpf import layout
from integration import datapath_info as info
from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost

VIP, PORT = "127.10.0.8", 8080


def test_every_hash_map_it_names_is_pinned_and_counted(mesh: Mesh, client: Client,
                                                       backends) -> None:
    (b1,) = make_backends(backends, "b1")
    mesh.dp.apply(http_tables(VIP, PORT, [vhost("svc", ["*"], [rule("/", action=to("c1"))])],
                              [cluster("c1", [b1])]))
    client.connect("a", VIP, PORT)
    assert client.request("a", http("GET", "/", "svc.test"))["headers"]["x-backend"] == "b1"
    missing = [n for n in info.HASH_MAPS if not (mesh.dp.pin_dir / n).exists()]
    assert not missing, f"named but not pinned: {missing}"
    fill = info.map_fill(mesh.dp.pin_dir, mesh.dp.encoder)
    assert set(info.HASH_MAPS) <= set(fill)
    assert all(cap > 0 for _, cap in fill.values())
    assert fill[layout.CLIENTS_MAP][0] >= 1  # our connection is counted
