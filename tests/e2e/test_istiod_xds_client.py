"""sockmesh's xDS client against a real, standalone istiod (Istio 1.29.x), SotW and delta.

istiod runs with no Kubernetes (``--registries=``, ``--configDir`` = a private copy of
tests/peers/istiod/config) and every port on loopback (tests/support/istiod.py).  The
client presents itself as an Istio sidecar in namespace ``sockmesh-test`` (the node
istio-agent would send) and validates every response with sockmesh's translator, as
``sockmesh xds-dump --validate`` does, so a NACK here is a resource sockmesh rejects.

Covered: full sync (what istiod generates for the test config: the outbound HTTP listener,
route config "19080" in VirtualService order, subset clusters with their LB policies,
endpoints), an edited YAML reaching the client (time printed), removal, what istiod does
with a NACK, and reconnecting after istiod restarts.  Waits poll conditions with
deadlines; istiod is stopped by PID in teardown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.validation import translator_validator
from tests.support.istiod import NAMESPACE, Istiod, copy_config, edit_yaml
from tests.support.xds_watch import watch_all
from translator import translate
from translator.resources import ResourceSet
from xds_client import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    Nack,
    WatchEvent,
    WatchEventKind,
    XdsClient,
    istio_node,
)

pytestmark = pytest.mark.istiod

WAIT = 20.0
VARIANTS = pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
PORT = 19080
ROUTE_NAME = str(PORT)
OUTBOUND_LISTENER = f"0.0.0.0_{PORT}"
CLIENT_IP = "127.0.0.50"


def cluster_name(host: str, subset: str = "") -> str:
    return f"outbound|{PORT}|{subset}|{host}.sockmesh.test"


@pytest.fixture
def istiod(tmp_path: Path) -> Iterator[Istiod]:
    config = copy_config(tmp_path / "istio-config")
    proc = Istiod(config, tmp_path / "istiod")
    proc.start()
    print(f"istiod ready {proc.ready_after:.2f} s after start")
    yield proc
    proc.stop()


def new_client(istiod: Istiod, delta: bool, events: list[WatchEvent] | None = None
               ) -> XdsClient:
    node = istio_node(CLIENT_IP, "client-0", NAMESPACE, labels={"app": "client"})
    client = XdsClient(istiod.xds_address, node, delta=delta, validator=translator_validator,
                       does_not_exist_timeout=5.0, backoff_initial=0.1, backoff_max=1.0)
    return watch_all(client, events)


def vhost(client: XdsClient, host: str) -> Any:
    rc = client.snapshot().of(ROUTE_CONFIGURATION).get(ROUTE_NAME)
    if rc is None:
        return None
    for vh in rc.virtual_hosts:
        if vh.name == f"{host}.sockmesh.test:{PORT}":
            return vh
    return None


def endpoints(client: XdsClient, cluster: str) -> set[str]:
    cla = client.snapshot().of(CLUSTER_LOAD_ASSIGNMENT).get(cluster)
    if cla is None:
        return set()
    return {f"{e.endpoint.address.socket_address.address}:"
            f"{e.endpoint.address.socket_address.port_value}"
            for loc in cla.endpoints for e in loc.lb_endpoints}


async def synced(client: XdsClient) -> None:
    await client.start()
    await client.wait_synced(WAIT)
    # istiod sends RDS/EDS after the listeners/clusters that name them; wait for content
    try:
        await client.wait_for(lambda c: vhost(c, "reviews") is not None
                              and bool(endpoints(c, cluster_name("reviews", "v1"))), WAIT)
    except TimeoutError:
        snap = client.snapshot()
        raise AssertionError(f"istiod's config did not arrive: status {client.status}; "
                             f"{ {t: sorted(snap.of(t)) for t in (LISTENER, ROUTE_CONFIGURATION, CLUSTER, CLUSTER_LOAD_ASSIGNMENT)} }") from None


@VARIANTS
async def test_full_sync(istiod: Istiod, delta: bool) -> None:
    client = new_client(istiod, delta)
    try:
        t0 = time.monotonic()
        await synced(client)
        print(f"{'delta' if delta else 'sotw'}: synced in {time.monotonic() - t0:.2f} s")
        snap = client.snapshot()
        assert OUTBOUND_LISTENER in snap.of(LISTENER)
        clusters = snap.of(CLUSTER)
        lb = {name: cluster_pb_lb(c) for name, c in clusters.items()}
        assert lb[cluster_name("reviews", "v1")] == "ROUND_ROBIN"
        assert lb[cluster_name("reviews", "v2")] == "RANDOM"
        assert lb[cluster_name("reviews", "v3")] == "LEAST_REQUEST"
        assert lb[cluster_name("ratings")] == "LEAST_REQUEST"
        assert lb[cluster_name("ratings", "v1")] == "RANDOM"
        assert lb[cluster_name("details")] == "RANDOM"
        assert endpoints(client, cluster_name("reviews", "v2")) == {"127.0.1.2:19180"}
        assert endpoints(client, cluster_name("ratings", "v2")) == {"127.0.1.12:19180",
                                                                    "127.0.1.13:19180"}
        assert endpoints(client, cluster_name("reviews")) == {
            "127.0.1.1:19180", "127.0.1.2:19180", "127.0.1.3:19180"}
        # the VirtualService's http routes, in order, then nothing else
        names = [r.name for r in vhost(client, "reviews").routes]
        assert names == ["admin-direct", "old-redirect", "jason-v2", "beta-query-v3",
                         "api-regex-v1", "canary-and-or", "canary-and-or",
                         "default-weighted"], names
        assert "127.10.0.1" in vhost(client, "reviews").domains
        for t in (LISTENER, ROUTE_CONFIGURATION, CLUSTER, CLUSTER_LOAD_ASSIGNMENT):
            st = client.status.types[t]
            assert st.nacks == 0, st.last_nack  # sockmesh's translator takes all of it
            assert st.acks >= 1
    finally:
        await client.stop()


def cluster_pb_lb(c: Any) -> str:
    from envoy.config.cluster.v3 import cluster_pb2

    return str(cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy))


@VARIANTS
async def test_yaml_edit_reaches_client(istiod: Istiod, delta: bool) -> None:
    client = new_client(istiod, delta)
    try:
        await synced(client)
        vs = istiod.config_dir / "virtualservices.yaml"

        def reweight(docs: list[Any]) -> list[Any]:
            for d in docs:
                if d["metadata"]["name"] == "reviews":
                    last = d["spec"]["http"][-1]
                    for dest, w in zip(last["route"], (10, 20, 70), strict=True):
                        dest["weight"] = w
            return docs

        t0 = time.monotonic()
        edit_yaml(vs, reweight)

        def weights(c: XdsClient) -> list[int] | None:
            vh = vhost(c, "reviews")
            if vh is None:
                return None
            wc = vh.routes[-1].route.weighted_clusters.clusters
            return [w.weight.value for w in wc]

        await client.wait_for(lambda c: weights(c) == [10, 20, 70], WAIT)
        took = time.monotonic() - t0
        print(f"{'delta' if delta else 'sotw'}: VirtualService edit reached the client "
              f"in {took:.2f} s")

        # a WorkloadEntry moves: EDS follows
        def move(docs: list[Any]) -> list[Any]:
            for d in docs:
                if d["kind"] == "WorkloadEntry" and d["metadata"]["name"] == "reviews-v2":
                    d["spec"]["address"] = "127.0.1.4"
            return docs

        t0 = time.monotonic()
        edit_yaml(istiod.config_dir / "workloadentries.yaml", move)
        await client.wait_for(lambda c: endpoints(c, cluster_name("reviews", "v2"))
                              == {"127.0.1.4:19180"}, WAIT)
        print(f"WorkloadEntry move reached the client in {time.monotonic() - t0:.2f} s")
        assert client.status.nacks == 0
    finally:
        await client.stop()


@VARIANTS
async def test_removal(istiod: Istiod, delta: bool) -> None:
    events: list[WatchEvent] = []
    client = new_client(istiod, delta, events)
    try:
        await synced(client)
        assert vhost(client, "ratings") is not None

        def drop_ratings(docs: list[Any]) -> list[Any]:
            return [d for d in docs if d["metadata"]["name"] != "ratings"
                    and d["spec"].get("labels", {}).get("app") != "ratings"]

        for f in ("services.yaml", "workloadentries.yaml", "destinationrules.yaml",
                  "virtualservices.yaml"):
            edit_yaml(istiod.config_dir / f, drop_ratings)
        await client.wait_for(
            lambda c: not any("ratings" in n for n in c.snapshot().of(CLUSTER))
            and vhost(c, "ratings") is None, WAIT)
        removed = {e.name for e in events if e.kind == WatchEventKind.REMOVED}
        assert {cluster_name("ratings"), cluster_name("ratings", "v1"),
                cluster_name("ratings", "v2")} <= removed
        assert vhost(client, "reviews") is not None  # the rest stays
        assert client.status.nacks == 0
    finally:
        await client.stop()


# A URI regex Go's RE2 (istiod's validation) accepts but whose RE2 program is over Envoy's
# size limit: Envoy rejects the route config, and so does sockmesh's translator.
OVERSIZED_REGEX = "/huge/[a-z]{120}"


@VARIANTS
async def test_nack(istiod: Istiod, delta: bool) -> None:
    """A VirtualService whose URI regex is too big for Envoy passes istiod's validation;
    the translator rejects the route config and the client NACKs it.

    istiod logs the NACK and does not resend the rejected resources (it pushes again only
    when config changes); the client keeps the last good route config.
    """
    nacks: list[Nack] = []
    client = new_client(istiod, delta)
    client.on_nack(nacks.append)
    try:
        await synced(client)
        good_routes = [r.name for r in vhost(client, "reviews").routes]

        def add_huge(docs: list[Any]) -> list[Any]:
            for d in docs:
                if d["metadata"]["name"] == "reviews":
                    d["spec"]["http"].insert(0, {
                        "name": "huge-regex", "match": [{"uri": {"regex": OVERSIZED_REGEX}}],
                        "route": [{"destination": {"host": "reviews.sockmesh.test",
                                                   "subset": "v1"}}]})
            return docs

        edit_yaml(istiod.config_dir / "virtualservices.yaml", add_huge)
        await client.wait_for(lambda c: c.status.types[ROUTE_CONFIGURATION].nacks >= 1, WAIT)
        nack = nacks[0]
        assert nack.type_url == ROUTE_CONFIGURATION
        assert ROUTE_NAME in nack.error_detail and "program size" in nack.error_detail, \
            nack.error_detail
        assert [r.name for r in vhost(client, "reviews").routes] == good_routes
        # istiod saw it: its log names the NACK
        await asyncio.to_thread(poll_log, istiod, "ACK ERROR", WAIT)
        # and does not resend on its own: no second NACK within two seconds
        received = client.responses_received
        t0 = time.monotonic()
        await client.wait_for(lambda c: time.monotonic() - t0 > 2.0, WAIT)
        rds_nacks = client.status.types[ROUTE_CONFIGURATION].nacks
        print(f"{'delta' if delta else 'sotw'}: istiod sent {client.responses_received - received}"
              f" responses in 2 s after the NACK; RDS NACKs {rds_nacks}")
        assert rds_nacks == 1
        # removing the bad route heals it
        acks = client.status.types[ROUTE_CONFIGURATION].acks
        edit_yaml(istiod.config_dir / "virtualservices.yaml", lambda docs: [
            {**d, "spec": {**d["spec"], "http": [h for h in d["spec"].get("http", [])
                                                 if h.get("name") != "huge-regex"]}}
            if d["metadata"]["name"] == "reviews" else d for d in docs])
        await client.wait_for(lambda c: c.status.types[ROUTE_CONFIGURATION].acks > acks, WAIT)
        assert [r.name for r in vhost(client, "reviews").routes] == good_routes
    finally:
        await client.stop()


@VARIANTS
async def test_ipv6_endpoint_is_acked_and_skipped(istiod: Istiod, delta: bool) -> None:
    """A dual-stack mesh: an IPv6 WorkloadEntry next to the IPv4 ones is ACKed; the
    translator leaves it out of the IPv4 datapath's endpoints and says so."""
    client = new_client(istiod, delta)
    try:
        await synced(client)

        def add_v6(docs: list[Any]) -> list[Any]:
            return [*docs, {
                "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                "metadata": {"name": "details-v6", "namespace": NAMESPACE},
                "spec": {"address": "::1", "ports": {"http": 19180},
                         "labels": {"app": "details", "version": "v1"}}}]

        edit_yaml(istiod.config_dir / "workloadentries.yaml", add_v6)
        await client.wait_for(
            lambda c: endpoints(c, cluster_name("details")) == {"127.0.1.21:19180",
                                                                "::1:19180"}, WAIT)
        assert client.status.nacks == 0
        snap = client.snapshot()
        rs = ResourceSet()
        for t in (CLUSTER, CLUSTER_LOAD_ASSIGNMENT):
            for msg in snap.of(t).values():
                rs.add(msg)
        details = translate(rs).clusters[cluster_name("details")]
        assert [(e.address, e.port) for e in details.endpoints] == [("127.0.1.21", 19180)]
        assert "endpoint [::1]:19180 skipped: IPv6 not supported" in details.not_enforced
    finally:
        await client.stop()


def poll_log(istiod: Istiod, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in istiod.log_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{needle!r} not in istiod's log within {timeout} s\n"
                               f"{istiod.log_tail()}")
        time.sleep(0.1)


@VARIANTS
async def test_reconnect_after_restart(istiod: Istiod, delta: bool) -> None:
    client = new_client(istiod, delta)
    try:
        await synced(client)
        before = {t: dict(client.snapshot().of(t)) for t in (LISTENER, CLUSTER)}
        opened = client.status.streams_opened
        await asyncio.to_thread(istiod.stop)
        await client.wait_for(lambda c: not c.status.connected, WAIT)
        assert set(client.snapshot().of(CLUSTER)) == set(before[CLUSTER])  # kept
        t0 = time.monotonic()
        await asyncio.to_thread(istiod.start)  # same ports
        await client.wait_for(lambda c: c.status.connected
                              and c.status.streams_opened > opened, WAIT)
        # The helper starts istiod on an empty config dir and then hands the config in
        # (see tests/support/istiod.py), so a client that reconnects at once may first see
        # an empty config; what matters is that it ends up with everything again.
        await client.wait_for(
            lambda c: set(c.snapshot().of(CLUSTER)) == set(before[CLUSTER])
            and set(c.snapshot().of(LISTENER)) == set(before[LISTENER])
            and bool(endpoints(c, cluster_name("reviews", "v1"))), WAIT)
        await client.wait_synced(WAIT)
        print(f"{'delta' if delta else 'sotw'}: reconnected and synced "
              f"{time.monotonic() - t0:.2f} s after istiod was started again")
        assert client.status.nacks == 0
    finally:
        await client.stop()
