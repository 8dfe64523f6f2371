"""``sockmesh dump`` without a running agent: everything comes from the pins.

With no agent there is no encoder to ask which endpoint ids exist; the dump must find them
in the pinned endpoint array itself.
"""

from __future__ import annotations

import time

from bpf.datapath import dump
from tests.kernel.conftest import Mesh, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost

VIP, PORT = "127.10.0.10", 8090
HOST = "dump.test"


def test_dump_from_pins_alone_lists_every_endpoint(mesh: Mesh, backends) -> None:
    bs = make_backends(backends, "d1", "d2", "d3")
    mesh.dp.apply(http_tables(VIP, PORT, [vhost("dump", [HOST], [rule("/", action=to("dd"))])],
                              [cluster("dd", bs)]))
    want = {f"{b.host}:{b.port}" for b in bs}
    ids = {i for i, a in mesh.dp.encoder.endpoints().items()
           if f"{a[0]}:{a[1]}" in want}
    assert len(ids) == len(bs)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(mesh.dp.pools.size(i) for i in ids):
        time.sleep(0.01)

    doc = dump(mesh.dp.pin_dir)  # what `sockmesh dump` reads with the agent stopped
    listed = {e["addr"]: e for e in doc["endpoints"]}
    assert want <= set(listed)
    assert {listed[a]["id"] for a in want} == ids
    assert all(listed[a]["pool"] for a in want)  # pool states read from the pins too
    # the same set the agent's encoder names: nothing stale, nothing missing
    assert {e["id"] for e in doc["endpoints"]} == set(mesh.dp.encoder.endpoints())
