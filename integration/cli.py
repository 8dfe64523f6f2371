"""The `sockmesh` command line.

Each subcommand lives in its own module under ``integration.commands`` exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only lists them, so
``sockmesh --help`` shows every subcommand with a one-line purpose.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module under integration.commands, one-line purpose)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the built-in demo: embedded xDS server, backends, datapath, report"),
    "run": ("run", "run the node agent: subscribe over xDS and program the eBPF datapath"),
    "xds-server": ("xds_server", "serve Envoy config files over ADS (SotW and delta)"),
    "xds-dump": ("xds_dump", "subscribe to an xDS server and print what it sends as JSON"),
    "explain": ("explain", "route requests on a config dump and say why"),
    "tables": ("tables", "print the flattened match tables of a config dump"),
    "dump": ("dump", "print what is in the pinned kernel maps"),
    "status": ("status", "show the running agent's state"),
    "ab": ("ab", "A/B: replay requests through Envoy and sockmesh and compare"),
    "bench": ("bench", "benchmark sockmesh against a direct connection and Envoy"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockmesh",
        description="Sidecarless Istio/Envoy-compatible data plane with an eBPF datapath.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, purpose) in COMMANDS.items():
        mod = importlib.import_module(f"integration.commands.{module}")
        p = sub.add_parser(name, help=purpose, description=purpose)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
