"""Start sockmesh's xDS client the way the e2e tests do: a wildcard watch of listeners and
clusters (routes and endpoints follow from what they name), every event into one list."""

from __future__ import annotations

from xds_client import CLUSTER, LISTENER, WatchEvent, XdsClient


def watch_all(client: XdsClient, events: list[WatchEvent] | None = None) -> XdsClient:
    """Subscribe ``client`` to every listener and cluster; events go to ``events``."""
    sink: list[WatchEvent] = [] if events is None else events
    for type_url in (LISTENER, CLUSTER):
        client.watch(type_url, None, sink.append)
    return client
