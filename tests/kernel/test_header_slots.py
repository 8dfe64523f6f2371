"""Header names get kernel slots while rules use them: when a config stops naming a header,
its slot goes to the next one (after one apply of quarantine), so a long-running agent's
header rules keep being decided in kernel."""

from __future__ import annotations

from bpf.encoder import FIRST_HDR_SLOT
from bpf.limits import limit
from tests.kernel.backend import Backend
from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost
from translator.tables import StringKind, Tables, ValueMatch

VIP, PORT = "127.10.0.10", 8080
HOST = "svc.test"
QUARANTINE_APPLIES = 2  # the apply that frees a slot, then the one that may reuse it


def _tables(names: list[str], b1: Backend, b2: Backend) -> Tables:
    rules = [rule("/", action=to("c1"))] + [
        rule(f"/{n}", action=to("c2"), headers=(ValueMatch(n, StringKind.EXACT, "yes"),))
        for n in names]
    return http_tables(VIP, PORT, [vhost("svc", [HOST], rules)],
                       [cluster("c1", [b1]), cluster("c2", [b2])])


def test_slots_of_headers_no_rule_names_are_reused(mesh: Mesh, client: Client,
                                                   backends) -> None:
    assert mesh.dp.encoder is not None
    b1, b2 = make_backends(backends, "b1", "b2")
    n_slots = limit("HDR_SLOTS") - FIRST_HDR_SLOT
    old = [f"x-old-{i}" for i in range(n_slots)]
    new = [f"x-new-{i}" for i in range(n_slots)]
    mesh.apply(_tables(old, b1, b2))
    for _ in range(1 + QUARANTINE_APPLIES):
        mesh.apply(_tables(new, b1, b2))
    assert set(mesh.dp.encoder.hdr_slots) == set(new)
    client.connect("a", VIP, PORT)
    cases = [(http("GET", f"/{n}", HOST, {n: "yes"}), "b2") for n in new]
    cases += [(http("GET", f"/{n}", HOST, {n: "no"}), "b1") for n in new]
    before = mesh.counters()
    got = client.requests("a", [raw for raw, _ in cases])
    assert [r["headers"]["x-backend"] for r in got] == [want for _, want in cases]
    assert mesh.counters()["fast"] - before["fast"] == len(cases)  # all decided in kernel
