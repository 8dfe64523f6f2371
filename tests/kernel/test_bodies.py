"""Request and response bodies, split writes, long keep-alive runs, concurrency."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.kernel.conftest import Client, Mesh, http, make_backends
from tests.kernel.tables_util import cluster, http_tables, rule, to, vhost

VIP, PORT = "127.10.0.6", 8084
HOST = "body.test"


@pytest.fixture
def one_backend(mesh: Mesh, backends):
    b1, b2 = make_backends(backends, "b1", "b2")
    mesh.apply(http_tables(VIP, PORT, [vhost("b", [HOST], [
        rule("/", action=to("c1")), rule("/two", action=to("c2"))])],
        [cluster("c1", [b1]), cluster("c2", [b2])]))
    return b1, b2


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


@pytest.mark.parametrize("size", [100, 10_000, 300_000])
def test_content_length_request_body_in_kernel(mesh: Mesh, client: Client, one_backend,
                                               size: int) -> None:
    client.connect("a", VIP, PORT)
    body = bytes(i % 251 for i in range(size))
    before = mesh.counters()
    r = client.request("a", http("POST", "/two/up", HOST, body=body))
    assert r["headers"]["x-backend"] == "b2"
    assert r["headers"]["x-body-len"] == str(size)
    assert r["headers"]["x-body-sha"] == _sha(body)
    assert mesh.counters()["fast"] - before["fast"] == 1
    # the connection is still framed right: the next request goes to its own route
    assert client.request("a", http("GET", "/", HOST))["headers"]["x-backend"] == "b1"


@pytest.mark.parametrize("size,parts", [(12_345, None), (300_000, None), (5000, [60, 700, 9])],
                         ids=["one-write", "large", "split-writes"])
def test_chunked_request_body_in_kernel(mesh: Mesh, client: Client, one_backend, size: int,
                                        parts: list[int] | None) -> None:
    client.connect("a", VIP, PORT)
    body = bytes(i % 253 for i in range(size))
    before = mesh.counters()
    raw = http("POST", "/two/c", HOST, body=body, chunked=True)
    r = client.request("a", raw, parts=parts, pause_ms=10 if parts else 0)
    assert (r["headers"]["x-backend"], r["headers"]["x-body-len"]) == ("b2", str(size))
    assert r["headers"]["x-body-sha"] == _sha(body)
    d = {k: v - before[k] for k, v in mesh.counters().items() if v != before[k]}
    assert d.get("fast") == 1, d
    # framing ended exactly at the last chunk: the next request is routed on its own
    assert client.request("a", http("GET", "/", HOST))["headers"]["x-backend"] == "b1"


def test_chunked_body_followed_by_a_pipelined_request_goes_to_user_space(
        mesh: Mesh, client: Client, one_backend) -> None:
    client.connect("a", VIP, PORT)
    before = mesh.counters()
    raw = http("POST", "/two/p", HOST, body=b"abc" * 100, chunked=True) + http("GET", "/", HOST)
    rs = client.pipeline("a", raw, ["POST", "GET"])
    assert [r["headers"]["x-backend"] for r in rs] == ["b2", "b1"]
    assert rs[0]["headers"]["x-body-len"] == "300"
    assert mesh.counters()["pipelined"] - before["pipelined"] == 1


@pytest.mark.parametrize("path,length", [("/big/1048576", 1 << 20), ("/big/65537", 65537),
                                         ("/chunked/200", None)])
def test_large_and_chunked_responses(mesh: Mesh, client: Client, one_backend, path: str,
                                     length: int | None) -> None:
    client.connect("a", VIP, PORT)
    before = mesh.counters()
    r = client.request("a", http("GET", path, HOST))
    if length is not None:
        assert len(r["body"]) == length
        assert r["body"].startswith(b"b1-")
    else:
        assert r["body"] == b"".join(f"b1-{i};".encode() for i in range(200))
    after = mesh.counters()
    assert after["fast"] - before["fast"] == 1
    assert after["resp_done"] - before["resp_done"] == 1
    assert client.request("a", http("GET", "/two", HOST))["headers"]["x-backend"] == "b2"


@pytest.mark.parametrize("method,path,status", [("HEAD", "/big/5000", 200),
                                                ("GET", "/status/204", 204),
                                                ("GET", "/status/304", 304)])
def test_responses_without_body(mesh: Mesh, client: Client, one_backend, method: str,
                                path: str, status: int) -> None:
    client.connect("a", VIP, PORT)
    before = mesh.counters()
    for _ in range(3):  # a wrong framing would eat or leak bytes of the next response
        r = client.request("a", http(method, path, HOST))
        assert (r["status"], r["body"]) == (status, b"")
        assert client.request("a", http("GET", "/two", HOST))["body"] == b"b2"
    after = mesh.counters()
    assert after["resp_done"] - before["resp_done"] == 6
    assert after["resp_lost"] == before["resp_lost"]


def test_head_split_over_two_writes_is_corked(mesh: Mesh, client: Client, one_backend) -> None:
    client.connect("a", VIP, PORT)
    raw = http("GET", "/two/split", HOST, {"x-pad": "p" * 50})
    before = mesh.counters()
    r = client.request("a", raw, parts=[9, 30], pause_ms=20)
    assert r["headers"]["x-backend"] == "b2"
    d = {k: v - before[k] for k, v in mesh.counters().items()}
    assert d["corked"] >= 1 and d["fast"] == 1


def test_many_sequential_requests_on_one_connection(mesh: Mesh, client: Client,
                                                    one_backend) -> None:
    client.connect("a", VIP, PORT)
    n = 2000
    raws = [http("GET", "/two" if i % 3 == 0 else f"/x{i}", HOST) for i in range(n)]
    before = mesh.counters()
    rs = client.requests("a", raws)
    assert [r["headers"]["x-backend"] for r in rs] == [
        "b2" if i % 3 == 0 else "b1" for i in range(n)]
    assert mesh.counters()["fast"] - before["fast"] == n


def test_64_concurrent_connections(mesh: Mesh, client: Client, one_backend) -> None:
    raws = [base64.b64encode(http("GET", "/two" if i % 2 else f"/c{i}", HOST)).decode()
            for i in range(20)]
    before = mesh.counters()
    out = client.cmd(op="parallel", n=64, host=VIP, port=PORT, raws=raws)["results"]
    for res in out:
        assert isinstance(res, list), res
        assert [r["headers"]["x-backend"] for r in res] == [
            "b2" if i % 2 else "b1" for i in range(20)]
    after = mesh.counters()
    delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    print(f"64 connections x 20 requests: {delta}, pools grown by {mesh.dp.pools.grown}")
    handled = sum(after[k] - before[k] for k in ("fast", "pool_empty", "sticky"))
    assert handled >= 64 * 20
    # the pools grew under the load (misses make them grow up to SM_POOL_PER_ENDPOINT)
    assert mesh.dp.pools.grown > 0 or after["pool_empty"] == before["pool_empty"]


def _pool_states(mesh: Mesh, backend) -> list[str]:
    eps = {e["addr"]: e for e in mesh.dp.dump()["endpoints"]}
    return eps[f"{backend.host}:{backend.port}"]["pool"]


def test_client_gone_before_response_releases_the_slot(mesh: Mesh, client: Client,
                                                       one_backend) -> None:
    import time

    b1, _ = one_backend
    client.connect("gone", VIP, PORT)
    client.send("gone", http("GET", "/slow/100", HOST))
    client.cmd(op="close", conn="gone")  # closes before the response arrives
    deadline = time.monotonic() + 5
    while "busy" in _pool_states(mesh, b1) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "busy" not in _pool_states(mesh, b1)
    eps = {e["addr"]: e for e in mesh.dp.dump()["endpoints"]}
    assert eps[f"{b1.host}:{b1.port}"]["active"] == 0
    client.connect("a", VIP, PORT)
    assert client.request("a", http("GET", "/", HOST))["body"] == b"b1"


def test_backend_closing_after_response(mesh: Mesh, client: Client, one_backend) -> None:
    import time

    client.connect("a", VIP, PORT)
    before, replaced, lost = mesh.counters(), mesh.dp.pools.replaced, mesh.dp.pools.lost
    for _ in range(3):  # each response ends with the backend closing that pooled connection
        r = client.request("a", http("GET", "/close", HOST))
        assert (r["status"], r["body"]) == (200, b"b1")
        assert client.request("a", http("GET", "/two", HOST))["body"] == b"b2"
    # the FIN may ride on the response (seen by the pools' poll) or come alone (sk_skb);
    # either way the closed pooled connections are replaced
    deadline = time.monotonic() + 5
    while mesh.dp.pools.replaced - replaced < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert mesh.dp.pools.replaced - replaced >= 2
    assert mesh.counters()["resp_lost"] == before["resp_lost"]
    assert mesh.dp.pools.lost == lost


def test_request_lost_with_its_pooled_connection_gets_503(mesh: Mesh, client: Client,
                                                          one_backend) -> None:
    client.connect("a", VIP, PORT)
    lost = mesh.dp.pools.lost
    r = client.request("a", http("GET", "/hangup", HOST))  # the backend closes, no answer
    assert r["status"] == 503
    assert mesh.dp.pools.lost == lost + 1
    assert client.request("a", http("GET", "/two", HOST))["body"] == b"b2"
    assert client.request("a", http("GET", "/", HOST))["body"] == b"b1"
