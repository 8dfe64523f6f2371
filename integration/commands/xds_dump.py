"""`sockmesh xds-dump`: subscribe to an xDS server and print what it sends as config-dump JSON.

Subscribes to every Listener and Cluster (wildcard), follows them to the RouteConfigurations
and ClusterLoadAssignments they reference, waits until everything was received and ACKed
(or is known not to exist), and prints an Envoy admin ``/config_dump``-shaped document that
``sockmesh xds-server --config`` and ``translator.resources.parse_config_dump`` read back.
For users debugging a control plane.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from typing import Any

from google.protobuf import any_pb2, symbol_database
from google.protobuf.message import Message

from integration.validation import translator_validator
from translator.resources import TYPED_STRUCT, known_type, to_json
from xds_client import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    XdsClient,
    istio_node,
    make_node,
)
from xds_client.client import ClientStatus
from xds_client.protocol import Snapshot
from xds_client.resource_types import SHORT_NAMES

ADMIN = "type.googleapis.com/envoy.admin.v3."
# (dump type, list field, per-entry key) in Envoy's config_dump order
_SECTIONS = (
    (LISTENER, "ListenersConfigDump", "dynamic_listeners", "listener"),
    (CLUSTER, "ClustersConfigDump", "dynamic_active_clusters", "cluster"),
    (CLUSTER_LOAD_ASSIGNMENT, "EndpointsConfigDump", "dynamic_endpoint_configs",
     "endpoint_config"),
    (ROUTE_CONFIGURATION, "RoutesConfigDump", "dynamic_route_configs", "route_config"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("--server", required=True, metavar="HOST:PORT",
                        help="the xDS (ADS) server, e.g. 127.0.0.1:18000 or istiod:15010")
    parser.add_argument("--delta", action="store_true",
                        help="use the incremental (delta) ADS variant instead of SotW")
    parser.add_argument("--node-id", default=None, metavar="ID",
                        help="node id to present (default: an Istio sidecar id, "
                             "sidecar~IP~sockmesh-xds-dump.NS~NS.svc.cluster.local, with the "
                             "node metadata istiod expects; other servers accept it too)")
    parser.add_argument("--namespace", default="default", metavar="NS",
                        help="namespace for the default Istio node id (default)")
    parser.add_argument("--ip", default="127.0.0.1",
                        help="workload IP for the default Istio node id (127.0.0.1)")
    parser.add_argument("--node-cluster", default="sockmesh", metavar="NAME",
                        help="node cluster to present with --node-id (sockmesh)")
    parser.add_argument("--timeout", type=float, default=15.0, metavar="S",
                        help="give up after S seconds (15)")
    parser.add_argument("--missing-after", type=float, default=None, metavar="S",
                        help="treat a referenced resource as absent after S seconds "
                             "(default: half of --timeout, at most 15)")
    parser.add_argument("--referenced-only", action="store_true",
                        help="fetch only route configs and endpoints that listeners and "
                             "clusters refer to (no wildcard RDS/EDS)")
    parser.add_argument("--validate", action="store_true",
                        help="check each response with sockmesh's translator and NACK what "
                             "sockmesh would reject (the reason goes to the server and stderr)")
    parser.add_argument("--ca-file", default=None, help="TLS: CA bundle to verify the server")
    parser.add_argument("--token-file", default=None,
                        help="send 'authorization: Bearer <token>' read from this file")
    parser.add_argument("--server-name", default=None,
                        help="TLS: name to verify in the server certificate")


def _fix_anys(msg: Message) -> None:
    """Make every nested Any printable: import its proto if we have it, else keep the
    bytes in a TypedStruct stand-in (Istio-private extensions have no public proto)."""
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            items = [v for v in value.values() if isinstance(v, Message)]
        elif fd.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            if isinstance(item, any_pb2.Any):
                _fix_any(item)
            else:
                _fix_anys(item)


def _fix_any(a: any_pb2.Any) -> None:
    if not a.type_url:
        return
    if known_type(a.type_url):
        cls = symbol_database.Default().GetSymbol(a.type_url.rsplit("/", 1)[-1])
        inner = cls.FromString(a.value)
        _fix_anys(inner)
        a.Pack(inner)
        return
    from xds.type.v3 import typed_struct_pb2  # only for unknown payloads

    ts = typed_struct_pb2.TypedStruct(type_url=a.type_url)
    ts.value.update({"@value_base64": base64.b64encode(a.value).decode()})
    a.Pack(ts)
    assert a.type_url == TYPED_STRUCT


def resource_json(msg: Message) -> dict[str, Any]:
    """A resource as JSON; nested extension payloads round-trip or are kept as bytes."""
    try:
        return to_json(msg)
    except (TypeError, KeyError, ValueError):
        copy = type(msg)()
        copy.CopyFrom(msg)
        _fix_anys(copy)
        return to_json(copy)


def config_dump(snapshot: Snapshot) -> dict[str, Any]:
    """An Envoy admin ``/config_dump`` document of a client snapshot."""
    configs = []
    for type_url, dump_type, list_field, key in _SECTIONS:
        version = snapshot.versions.get(type_url, "")
        entries = []
        for name, msg in sorted(snapshot.of(type_url).items()):
            body = resource_json(msg)
            if type_url == LISTENER:
                entries.append({"name": name, "active_state": {
                    "version_info": version, "listener": body}})
            else:
                entries.append({"version_info": version, key: body})
        section: dict[str, Any] = {"@type": ADMIN + dump_type, list_field: entries}
        if type_url == CLUSTER:
            section["version_info"] = version
        configs.append(section)
    return {"configs": configs}


def _describe_missing(status: ClientStatus) -> str:
    parts = []
    for type_url, st in status.types.items():
        if st.subscribed or st.wildcard:
            state = "answered" if st.initialized else "no answer"
            parts.append(f"{SHORT_NAMES[type_url]}: {state}, {st.resources} resources")
    return "; ".join(parts) or "nothing subscribed"


async def dump(args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    """Run the subscription; returns (exit code, config dump or None)."""
    missing_after = args.missing_after
    if missing_after is None:
        missing_after = min(15.0, max(0.1, args.timeout / 2))
    if args.node_id:
        node = make_node(args.node_id, args.node_cluster)
    else:
        node = istio_node(args.ip, "sockmesh-xds-dump", args.namespace)
    client = XdsClient(
        args.server, node, delta=args.delta,
        validator=translator_validator if args.validate else None,
        does_not_exist_timeout=missing_after, ca_file=args.ca_file,
        token_file=args.token_file, server_name=args.server_name,
        backoff_max=min(2.0, args.timeout / 4),
    )
    # Listeners and clusters by wildcard, following their references; route configs and
    # endpoints also by wildcard unless asked not to, so that resources nothing refers to
    # show up too (servers that ignore wildcard RDS/EDS, like istiod, still answer the
    # referenced names).
    types = [LISTENER, CLUSTER]
    if not args.referenced_only:
        types += [ROUTE_CONFIGURATION, CLUSTER_LOAD_ASSIGNMENT]
    for type_url in types:
        client.watch(type_url, None, lambda ev: None)
    await client.start()
    try:
        await client.wait_synced(args.timeout)
    except TimeoutError:
        status = client.status
        if client.responses_received == 0:
            why = status.last_error or "no response"
            print(f"sockmesh xds-dump: no xDS response from {args.server} within "
                  f"{args.timeout:g} s: {why}", file=sys.stderr)
        else:
            print(f"sockmesh xds-dump: {args.server} did not send everything within "
                  f"{args.timeout:g} s ({_describe_missing(status)})", file=sys.stderr)
        return 1, None
    finally:
        await client.stop()
    status = client.status
    code = 0
    for type_url, st in status.types.items():
        if st.does_not_exist:
            print(f"sockmesh xds-dump: {SHORT_NAMES[type_url]} referenced but not sent: "
                  f"{', '.join(sorted(st.does_not_exist))}", file=sys.stderr)
        if st.nacks:
            print(f"sockmesh xds-dump: rejected {SHORT_NAMES[type_url]} response "
                  f"({st.nacks}x): {st.last_nack}", file=sys.stderr)
            code = 1
    return code, config_dump(client.snapshot())


def run(args: argparse.Namespace) -> int:
    """Subscribe, wait for everything, print the config dump."""
    if args.timeout <= 0:
        print("sockmesh xds-dump: --timeout must be positive", file=sys.stderr)
        return 2
    code, doc = asyncio.run(dump(args))
    if doc is not None:
        json.dump(doc, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    return code
