"""`sockmesh xds-server`: serve Envoy config files over ADS (SotW and delta).

PATH is an Envoy admin ``/config_dump`` JSON file or a directory of resource files
(``*.json``, ``*.yaml``, ``*.yml``; each holds one resource with ``@type``, a list of them,
or ``{"resources": [...]}``).  The path is polled; a changed, valid config is pushed as a
new version, a broken one is logged (file and field) and the last good one keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from integration.commands._args import existing_path, listen_port, poll_interval
from integration.xds_server import (
    AdsServer,
    ConfigError,
    ConfigWatcher,
    config_fingerprint,
    load_config,
)
from translator.resources import ResourceSet

DEFAULT_PORT = 18000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("--config", required=True, type=existing_path, metavar="PATH",
                        help="Envoy /config_dump JSON file or directory of resource files")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=listen_port, default=DEFAULT_PORT,
                        help=f"port to listen on, 0 for any free port ({DEFAULT_PORT})")
    parser.add_argument("--poll-interval", type=poll_interval, default=0.5, metavar="SECONDS",
                        help="how often to check PATH for changes (0.5)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; exit 1 when the initial config cannot be loaded."""
    if getattr(args, "verbose", 0) == 0:
        # ACKs, NACKs and reloads are what a user runs this for: show them by default.
        logging.getLogger("integration.xds_server").setLevel(logging.INFO)
    # Fingerprint before loading: a change while loading is seen by the first poll.
    fingerprint = config_fingerprint(args.config)
    try:
        resources = load_config(args.config)
    except ConfigError as exc:
        print(f"sockmesh xds-server: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_serve(args, resources, fingerprint))


async def _serve(args: argparse.Namespace, resources: ResourceSet, fingerprint: str) -> int:
    server = AdsServer(resources)
    watcher = ConfigWatcher(server, args.config, args.poll_interval)
    watcher.fingerprint = fingerprint
    try:
        port = await server.start(args.host, args.port)
    except (OSError, RuntimeError) as exc:
        print(f"sockmesh xds-server: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"sockmesh xds-server: listening on {args.host}:{port} (ADS, SotW and delta), "
          f"serving {len(resources)} resources from {args.config} version {server.version}",
          flush=True)
    try:
        await watcher.run(stop)
    finally:
        await server.stop(grace=1.0)
    return 0
