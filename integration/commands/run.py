"""`sockmesh run`: the node agent (xDS -> translator -> eBPF datapath, metrics, status).

Startup problems the operator must fix (a bad flag, not root, no bpffs) stop it with a
message naming what is wrong.  A datapath that passes those checks but still fails to load
(a verifier error, say) fails open: the agent keeps its xDS side, metrics and status up,
says why in the log and in ``sockmesh status``, and intercepts nothing.
An unreachable control server is retried with exponential backoff forever (logged).

SIGTERM/SIGINT: stop, detach the programs, unpin.  SIGKILL: programs and maps stay pinned
and keep routing; the next ``sockmesh run`` with the same ``--pin-dir`` adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from integration.agent import DEFAULT_ADMIN_ADDR, DEFAULT_PIN_DIR, Agent, AgentConfig
from integration.commands._args import (
    cgroup_path,
    ipv4_addr,
    listen_addr,
    pin_dir,
    positive,
    server_addr,
)
from integration.istio import IstioConfigError, istio_bootstrap, istio_env_present
from integration.preflight import CGROUP2_ROOT, missing_for_datapath
from xds_client import make_node

log = logging.getLogger("sockmesh.run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("--xds-server", type=server_addr, metavar="HOST:PORT",
                        help="the xDS (ADS) server, e.g. istiod.istio-system.svc:15012; "
                             "required unless --istio finds it in the environment")
    parser.add_argument("--delta", action="store_true",
                        help="use the incremental (delta) ADS variant instead of SotW")
    parser.add_argument("--cgroup", type=cgroup_path, action="append", default=[],
                        metavar="PATH",
                        help="child cgroup v2 whose processes join the mesh (repeatable; "
                             f"relative paths are under {CGROUP2_ROOT})")
    parser.add_argument("--metrics-addr", type=listen_addr,
                        default=DEFAULT_ADMIN_ADDR, metavar="IP:PORT",
                        help="admin endpoint: /metrics and /status (default "
                             f"{DEFAULT_ADMIN_ADDR[0]}:{DEFAULT_ADMIN_ADDR[1]}; 'off' disables)")
    parser.add_argument("--pin-dir", type=pin_dir, default=DEFAULT_PIN_DIR, metavar="PATH",
                        help=f"bpffs directory for pinned maps and programs ({DEFAULT_PIN_DIR})")
    parser.add_argument("--node-id", default=None, metavar="ID",
                        help="node id to present (default sockmesh~HOSTNAME; with --istio "
                             "the sidecar id istio-agent would use)")
    parser.add_argument("--node-cluster", default="sockmesh", metavar="NAME",
                        help="node cluster to present (sockmesh)")
    parser.add_argument("--istio", action="store_true",
                        help="istio-agent mode: node id and metadata from POD_NAME, "
                             "POD_NAMESPACE, INSTANCE_IP, ISTIO_META_*; TLS to istiod:15012 "
                             "with the service-account token and mesh root cert "
                             "(automatic when those variables are set)")
    parser.add_argument("--plaintext", action="store_true",
                        help="with --istio: plaintext to istiod's port 15010")
    parser.add_argument("--ca-file", default=None, metavar="PEM",
                        help="TLS: CA bundle to verify the xDS server")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help="send 'authorization: Bearer <token>' read from FILE on connect")
    parser.add_argument("--server-name", default=None,
                        help="TLS: name to verify in the server certificate")
    parser.add_argument("--missing-after", type=positive, default=15.0, metavar="S",
                        help="a watched resource not sent S seconds after the stream is up "
                             "does not exist (15)")
    parser.add_argument("--backoff-max", type=positive, default=10.0, metavar="S",
                        help="longest wait between reconnect attempts (10)")
    parser.add_argument("--splice-addr", type=ipv4_addr, default=None, metavar="IP",
                        help="address of the splice listener that L7 connections are sent "
                             "to (default 127.0.0.1); a hostNetwork node agent whose "
                             "applications run in pod network namespaces gives the node IP")
    parser.add_argument("--no-datapath", action="store_true",
                        help="xDS side only: subscribe, translate, serve status/metrics, "
                             "program nothing")


def build_config(args: argparse.Namespace, parser_error: object = None) -> AgentConfig:
    """AgentConfig from parsed flags; raises ValueError with a flag-naming message."""
    istio = args.istio or (args.xds_server is None and istio_env_present())
    if istio:
        try:
            boot = istio_bootstrap(server=args.xds_server, plaintext=args.plaintext,
                                   ca_file=args.ca_file, token_file=args.token_file)
        except IstioConfigError as exc:
            raise ValueError(f"--istio: {exc}") from exc
        node = boot.node
        if args.node_id:
            node.id = args.node_id
        server, ca, token, name = boot.server, boot.ca_file, boot.token_file, boot.server_name
        name = args.server_name or name
    else:
        if args.xds_server is None:
            raise ValueError("--xds-server HOST:PORT is required (or --istio)")
        node = make_node(args.node_id or f"sockmesh~{socket.gethostname()}", args.node_cluster)
        server, ca, token, name = args.xds_server, args.ca_file, args.token_file, args.server_name
    if args.plaintext and not istio:
        raise ValueError("--plaintext only applies with --istio")
    if not args.no_datapath and not args.cgroup:
        raise ValueError("--cgroup PATH is required: the child cgroup whose processes join "
                         "the mesh (or --no-datapath for the xDS side only)")
    return AgentConfig(
        server=server, node=node, cgroups=list(args.cgroup), pin_dir=args.pin_dir,
        delta=args.delta, admin_addr=args.metrics_addr, ca_file=ca, token_file=token,
        server_name=name, does_not_exist_timeout=args.missing_after,
        backoff_max=args.backoff_max, datapath=not args.no_datapath,
        splice_addr=args.splice_addr,
    )


def run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT."""
    try:
        config = build_config(args)
    except ValueError as exc:
        print(f"sockmesh run: error: {exc}", file=sys.stderr)
        return 2
    for f in (config.ca_file, config.token_file):
        if f is not None and not Path(f).is_file():
            print(f"sockmesh run: error: {f}: no such file", file=sys.stderr)
            return 2
    if config.datapath:
        missing = missing_for_datapath()
        if missing:
            print("sockmesh run: cannot load the eBPF datapath here:\n  - "
                  + "\n  - ".join(missing)
                  + "\n(use --no-datapath to run the xDS side only)", file=sys.stderr)
            return 1
    # the agent's own progress is worth seeing without -v
    logging.getLogger("integration").setLevel(min(logging.getLogger().level, logging.INFO))
    return asyncio.run(_main(config))


async def _main(config: AgentConfig) -> int:
    agent = Agent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
    except OSError as exc:
        # only the admin bind raises here, before anything was loaded or adopted
        print(f"sockmesh run: error: {exc.strerror or exc}", file=sys.stderr)
        await agent.stop(detach=False)
        return 1
    admin = agent.admin
    dp = agent.datapath_status()
    if dp["loaded"]:
        how = "adopted from pinned state" if dp.get("adopted") else "loaded"
        datapath = f"{how} on " + ", ".join(map(str, config.cgroups))
    else:
        datapath = f"NOT loaded ({agent.datapath_error or 'disabled'})"
    print(f"sockmesh run: pid {os.getpid()}, xDS server {config.server}"
          f"{' (delta)' if config.delta else ''}, datapath {datapath}"
          + (f", admin http://{admin.host}:{admin.port}/status" if admin else ""), flush=True)
    await stop.wait()
    print("sockmesh run: stopping; detaching the datapath", flush=True)
    await agent.stop(detach=True)
    return 0
