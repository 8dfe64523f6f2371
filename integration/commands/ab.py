"""`sockmesh ab`: replay requests through a real Envoy and through sockmesh on the same config.

Both sides run here, on loopback, against the same identity backends; see integration/ab.py
for how the configuration is mapped.  The output: every disagreement with both decisions,
per-cluster endpoint distributions side by side, latency percentiles, and ab.json +
report.html (with plots) in ``--out``.  Exit code 0 iff every request agrees; 1 when they
disagree or the run failed; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from integration.preflight import missing_for_datapath

MAX_REQUESTS = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--xds-server", metavar="HOST:PORT",
                     help="take the configuration from this xDS (ADS) server")
    src.add_argument("--config-dump", type=Path, metavar="FILE",
                     help="an Envoy admin /config_dump or `istioctl proxy-config all -o json`")
    reqs = parser.add_mutually_exclusive_group()
    reqs.add_argument("--requests", type=Path, metavar="FILE.jsonl",
                      help="requests to replay, one JSON object a line: the `sockmesh "
                           "explain` shape plus an optional \"route_config\"")
    reqs.add_argument("--generate", type=int, metavar="N",
                      help="generate N requests covering every route (boundary requests); "
                           "the default, with N = 1000")
    parser.add_argument("--out", type=Path, default=Path("sockmesh-ab-report"),
                        help="report directory (./sockmesh-ab-report)")
    parser.add_argument("--envoy", type=Path, default=None, metavar="PATH",
                        help="the Envoy binary (default: $SOCKMESH_ENVOY, else `envoy` on "
                             "PATH)")
    parser.add_argument("--timeout", type=float, default=15.0, metavar="S",
                        help="with --xds-server: give up fetching the config after S (15)")


def _load(args: argparse.Namespace):
    from translator.resources import parse_config_dump

    if args.config_dump is not None:
        try:
            dump = json.loads(args.config_dump.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{args.config_dump}: {exc}") from None
        return parse_config_dump(dump, str(args.config_dump))
    from integration.commands import xds_dump

    ns = argparse.Namespace(server=args.xds_server, delta=False, node_id=None,
                            namespace="default", ip="127.0.0.1", node_cluster="sockmesh",
                            timeout=args.timeout, missing_after=None, referenced_only=False,
                            validate=False, ca_file=None, token_file=None, server_name=None)
    _, doc = asyncio.run(xds_dump.dump(ns))
    if doc is None:
        raise ValueError(f"could not fetch the configuration from {args.xds_server}")
    return parse_config_dump(doc, f"xDS server {args.xds_server}")


def run(args: argparse.Namespace) -> int:
    """Run the A/B; 0 iff Envoy and sockmesh agree on every request."""
    from integration import ab
    from integration.envoy import EnvoyError, find_envoy

    n = args.generate if args.generate is not None else 1000
    if args.requests is None and not 1 <= n <= MAX_REQUESTS:
        print(f"sockmesh ab: error: --generate must be in 1..{MAX_REQUESTS}", file=sys.stderr)
        return 2
    missing = missing_for_datapath()
    if missing:
        print("sockmesh ab: cannot run the eBPF datapath here:\n  - " + "\n  - ".join(missing),
              file=sys.stderr)
        return 1
    try:
        envoy = find_envoy(args.envoy)
    except EnvoyError as exc:
        print(f"sockmesh ab: error: {exc}", file=sys.stderr)
        return 1
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {text}", flush=True)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        rs = _load(args)
        cfg = ab.map_config(rs)
        if args.requests is not None:
            requests = ab.requests_from_file(args.requests, cfg)
            say(f"{len(requests)} requests from {args.requests}")
        else:
            requests, n_routes = ab.generate(cfg, n)
            say(f"generated {len(requests)} requests; the first "
                f"{min(n_routes, len(requests))} cover {n_routes} routes "
                f"(one boundary request each)")
            if n < n_routes:
                cfg.notes.append(f"--generate {n} is less than the {n_routes} routes: "
                                 "not every route is covered")
        summary = ab.AbRun(cfg, requests, args.out.resolve(), say, envoy).run()
    except KeyboardInterrupt:
        print("sockmesh ab: interrupted; cleaned up", file=sys.stderr)
        return 130
    except (ab.AbError, ValueError, OSError, RuntimeError) as exc:
        print(f"sockmesh ab: error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)
    print()
    print(ab.render_text(summary))
    report = ab.write_report(args.out, summary)
    say(f"report: {report}")
    return 0 if summary["ok"] else 1
