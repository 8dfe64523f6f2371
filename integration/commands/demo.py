"""`sockmesh demo`: the whole product on one machine, on loopback, in under a minute.

1. identity backends for a bookinfo-like mesh on 127.20.x.y (one ratings endpoint slow);
2. the embedded xDS server (in this process) serving that mesh (integration/demo/mesh.py);
3. the node agent (in this process) with the eBPF datapath attached to a demo cgroup it
   creates (``sockmesh-demo-<pid>``; never the root cgroup);
4. a client process in that cgroup calling the services by VIP (127.10.0.x:9080) over
   keep-alive connections, with progress shown while it runs;
5. a summary (per route/cluster/endpoint counts, checks, fast-path share, latency) and a
   report (report.html with a plot, summary.json, requests.json) in ``--out``.
Everything it started is stopped by PID, the programs detached, the pins and the cgroup
removed, also on Ctrl-C, SIGTERM or failure.  Without root/BPF it says what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import integration
from integration import cgroups, processes
from integration.agent import Agent, AgentConfig, fast_path_share
from integration.demo import mesh
from integration.demo.report import render_text, summarize, write_report
from integration.preflight import BPFFS, missing_for_datapath
from translator.model import Request, route
from xds_client import make_node

log = logging.getLogger("sockmesh.demo")
PREFIX = "sockmesh-demo"
PKG_ROOT = str(Path(integration.__file__).resolve().parents[1])

# request kind -> (service, path, extra headers); the mix below says how many of each
KINDS: dict[str, tuple[str, str, dict[str, str]]] = {
    "productpage": ("productpage", "/productpage", {}),
    "details": ("details", "/details/0", {}),
    "reviews-jason": ("reviews", "/reviews/0", {"end-user": "jason"}),
    "reviews-other": ("reviews", "/reviews/0", {"end-user": "alice"}),
    "ratings": ("ratings", "/ratings/0", {}),
}
MIX = {"productpage": 0.12, "details": 0.2, "reviews-jason": 0.13, "reviews-other": 0.3,
       "ratings": 0.25}


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("--out", type=Path, default=Path("sockmesh-demo-report"),
                        help="report directory (default ./sockmesh-demo-report)")
    parser.add_argument("--requests", type=int, default=5000, metavar="N",
                        help="requests the client sends (5000)")
    parser.add_argument("--workers", type=int, default=8, metavar="N",
                        help="concurrent client connections per service (8)")
    parser.add_argument("--max-seconds", type=float, default=50.0, metavar="S",
                        help="stop the client after S seconds whatever is left (50)")
    parser.add_argument("--slow-ms", type=float, default=mesh.SLOW_RATINGS_DELAY_MS,
                        metavar="MS", help="delay of the slow ratings endpoint "
                                           f"({mesh.SLOW_RATINGS_DELAY_MS:g})")
    parser.add_argument("--seed", type=int, default=1, help="request order seed (1)")


def _validate(args: argparse.Namespace) -> str | None:
    if not 1 <= args.requests <= 100_000:
        return "--requests must be in 1..100000"
    if not 1 <= args.workers <= 64:
        return "--workers must be in 1..64"
    if not 0 < args.max_seconds <= 600:
        return "--max-seconds must be in (0, 600]"
    if not 0 <= args.slow_ms <= 1000:
        return "--slow-ms must be in 0..1000"
    return None


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when it completed and every check passed."""
    problem = _validate(args)
    if problem:
        print(f"sockmesh demo: error: {problem}", file=sys.stderr)
        return 2
    missing = missing_for_datapath()
    if missing:
        print("sockmesh demo: cannot run the eBPF datapath here:\n  - " + "\n  - ".join(missing),
              file=sys.stderr)
        return 1
    logging.getLogger("integration").setLevel(logging.WARNING)
    try:
        return asyncio.run(Demo(args).main())
    except KeyboardInterrupt:
        print("sockmesh demo: interrupted; cleaned up", file=sys.stderr)
        return 130


class Demo:
    """One demo run; ``main()`` always cleans up what it started."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out.resolve()
        self.cgroup: Path | None = None
        self.pin_dir: Path | None = None
        self.backends: subprocess.Popen[str] | None = None
        self.client: subprocess.Popen[str] | None = None
        self.server: Any = None
        self.agent: Agent | None = None

    def say(self, text: str) -> None:
        print(f"sockmesh demo: {text}", flush=True)

    async def main(self) -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        stopped_by = {"code": 143}

        def on_signal(code: int) -> None:
            stopped_by["code"] = code
            if task is not None:
                task.cancel()

        # Ctrl-C and SIGTERM both cancel the run, so the cleanup below always happens
        loop.add_signal_handler(signal.SIGINT, on_signal, 130)
        loop.add_signal_handler(signal.SIGTERM, on_signal, 143)
        try:
            return await self._run()
        except DemoError as exc:
            print(f"sockmesh demo: error: {exc}", file=sys.stderr)
            return 1
        except asyncio.CancelledError:
            print("sockmesh demo: stopped by a signal; cleaning up", file=sys.stderr)
            return stopped_by["code"]
        finally:
            await self._cleanup()

    async def _run(self) -> int:
        t_start = time.monotonic()
        for path in cgroups.sweep(PREFIX):
            self.say(f"removed leftover {path} of an earlier demo")
        self.cgroup = cgroups.create(PREFIX)
        self.pin_dir = BPFFS / self.cgroup.name
        self.say(f"demo cgroup {self.cgroup}, pins {self.pin_dir}")

        specs = mesh.backends(self.args.slow_ms)
        ports = await self._start_backends(specs)
        self.say(f"{len(specs)} identity backends up on 127.20.x.y "
                 f"(ratings-3 answers {self.args.slow_ms:g} ms late)")

        from integration.xds_server import AdsServer

        endpoints = mesh.endpoints_of(specs, ports)
        self.server = AdsServer(mesh.mesh_resources(endpoints))
        xds_port = await self.server.start("127.0.0.1", 0)
        self.say(f"embedded xDS server on 127.0.0.1:{xds_port} serving "
                 f"{len(mesh.SERVICES)} services, {len(mesh.CLUSTERS)} clusters")

        self.agent = Agent(AgentConfig(
            server=f"127.0.0.1:{xds_port}", node=make_node(f"sockmesh-demo~{os.getpid()}"),
            cgroups=[self.cgroup], pin_dir=self.pin_dir, admin_addr=("127.0.0.1", 0),
            does_not_exist_timeout=5.0))
        await self.agent.start()
        if self.agent.datapath is None:
            raise DemoError(f"the eBPF datapath did not load: {self.agent.datapath_error}")
        n_eps = sum(len(v) for v in endpoints.values())
        try:
            await self.agent.wait_applied(
                lambda a: a.applied is not None and a.applied.endpoints == n_eps, 20.0)
        except TimeoutError as exc:
            raise DemoError(f"the agent did not apply the mesh: {exc}") from None
        assert self.agent.applied is not None and self.agent.admin is not None
        self.say(f"agent applied the mesh in {self.agent.applied.seconds * 1000:.1f} ms; "
                 f"status at http://127.0.0.1:{self.agent.admin.port}/status")

        decisions = self._decisions()
        before = self._counters()
        records = await self._run_client()
        after = self._counters()
        delta = ({k: after.get(k, 0) - before.get(k, 0) for k in after}
                 if after is not None and before is not None else None)
        backend_cluster = {b.name: b.cluster for b in specs}
        summary = summarize(records, decisions, backend_cluster, delta,
                            fast_path_share(delta) if delta else None,
                            {"backend_cluster": backend_cluster, "slow_backend": "ratings-3",
                             "slow_ms": self.args.slow_ms, "workers": self.args.workers,
                             "xds_server": f"127.0.0.1:{xds_port}",
                             "cgroup": str(self.cgroup),
                             "apply_ms": self.agent.applied.seconds * 1000})
        print()
        print(render_text(summary))
        report = write_report(self.out, summary, records)
        self.say(f"report written to {report} (plot: {self.out / 'report.png'}); "
                 f"total {time.monotonic() - t_start:.1f} s")
        return 0 if summary["ok"] else 1

    def _decisions(self) -> dict[str, dict[str, Any]]:
        assert self.agent is not None and self.agent.tables is not None
        tables = self.agent.tables
        table = tables.route_tables[mesh.ROUTE_CONFIG]
        out = {}
        for kind, (svc, path, headers) in KINDS.items():
            req = Request(method="GET", authority=f"{svc}:{mesh.PORT}", path=path,
                          headers=tuple(headers.items()))
            out[kind] = route(table, req, tables.clusters).to_json()
        return out

    def _counters(self) -> dict[str, int] | None:
        dp = self.agent.datapath if self.agent else None
        fn = getattr(dp, "counters", None)
        return dict(fn()) if fn is not None else None

    async def _start_backends(self, specs: tuple[mesh.BackendSpec, ...]) -> dict[str, int]:
        argv = [sys.executable, "-m", "integration.demo.backends"] + [
            f"{b.name}={b.host}@{b.delay_ms:g}" for b in specs]
        self.backends = await asyncio.to_thread(
            subprocess.Popen, argv, stdout=subprocess.PIPE, text=True, env=_env(), cwd=PKG_ROOT)
        assert self.backends.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(self.backends.stdout.readline), 15)
            ports = json.loads(line)
        except (TimeoutError, ValueError):
            raise DemoError("the demo backends did not start (see above)") from None
        return {str(k): int(v) for k, v in ports.items()}

    async def _run_client(self) -> list[list[Any]]:
        assert self.cgroup is not None
        rng = random.Random(self.args.seed)
        n = self.args.requests
        seq = [k for k, share in MIX.items() for _ in range(max(1, round(n * share)))][:n]
        rng.shuffle(seq)
        vips = {s.name: s.vip for s in mesh.SERVICES}
        plan = {
            "kinds": {k: {"vip": vips[svc], "port": mesh.PORT, "host": f"{svc}:{mesh.PORT}",
                          "path": path, "headers": headers}
                      for k, (svc, path, headers) in KINDS.items()},
            "sequence": seq, "workers": self.args.workers,
            "max_seconds": self.args.max_seconds, "loop": False,
        }
        work = self.out / ".run"
        work.mkdir(parents=True, exist_ok=True)
        (work / "plan.json").write_text(json.dumps(plan))
        results = work / "results.json"
        results.unlink(missing_ok=True)
        self.say(f"client in {self.cgroup.name}: {len(seq)} requests over "
                 f"{self.args.workers} keep-alive workers to "
                 + ", ".join(f"{s.name} {s.vip}:{mesh.PORT}" for s in mesh.SERVICES))
        self.client = cgroups.spawn_in(
            [sys.executable, "-m", "integration.demo.client", "--plan",
             str(work / "plan.json"), "--out", str(results)],
            self.cgroup, stdout=subprocess.PIPE, text=True, env=_env(), cwd=PKG_ROOT)
        assert self.client.stdout is not None
        tty = sys.stdout.isatty()
        last = 0.0
        deadline = time.monotonic() + self.args.max_seconds + 30
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(self.client.stdout.readline)
            if not line:
                break
            parts = line.split()
            if parts[:1] != ["progress"] or len(parts) != 4:
                continue
            done, total, errors = map(int, parts[1:])
            now = time.monotonic()
            if tty or now - last >= 2.0 or done == total:
                last = now
                bar = "#" * (30 * done // max(total, 1))
                text = f"  [{bar:<30}] {done}/{total} requests, {errors} failed"
                print(("\r" + text) if tty else text, end="" if tty else "\n", flush=True)
        if tty:
            print()
        try:
            rc = await asyncio.wait_for(asyncio.to_thread(self.client.wait), 30)
        except TimeoutError:
            raise DemoError("the client did not finish in time") from None
        if rc != 0 or not results.exists():
            raise DemoError(f"the client failed (exit {rc})")
        records: list[list[Any]] = json.loads(results.read_text())
        shutil.rmtree(work, ignore_errors=True)
        return records

    async def _cleanup(self) -> None:
        # client first (it is in the cgroup), then the agent (its pools would otherwise try
        # to reconnect to backends going away), then the backends
        await _end(self.client)
        if self.agent is not None:
            try:
                await self.agent.stop(detach=True)
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                print(f"sockmesh demo: agent stop: {exc}", file=sys.stderr)
        await _end(self.backends)
        if self.server is not None:
            await self.server.stop(grace=0.5)
        if self.pin_dir is not None and self.pin_dir.exists():
            shutil.rmtree(self.pin_dir, ignore_errors=True)
        if self.cgroup is not None:
            try:
                cgroups.remove(self.cgroup)
            except OSError as exc:
                print(f"sockmesh demo: could not remove {self.cgroup}: {exc}", file=sys.stderr)


async def _end(proc: subprocess.Popen[str] | None) -> None:
    """Terminate a process we started (by its PID) and reap it, off the event loop."""
    await asyncio.to_thread(processes.end, proc)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env
