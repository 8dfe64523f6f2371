"""The live mesh every reliability test uses, built from the agent e2e harness.

A real ``sockmesh run`` on a fresh test cgroup, fed by the embedded AdsServer (running on its
own event-loop thread so synchronous tests and scripts can drive it), the demo's identity
backends, and optionally a real Envoy one hop away with the same route configuration and
STATIC clusters pointing at the same backends (the oracle: its ``x-backend`` answers say
which cluster Envoy picked).

The reviews virtual host gets four routes (Envoy order): ``/slow.*`` + ``end-user: jason``
-> reviews-v2 and ``/slow.*`` -> reviews-v3, both regex matches (evaluated in user space, so
these force the slow path); ``end-user: jason`` -> reviews-v2; ``/`` ->
reviews-v1 (kernel path); all with istiod's default retry policy.

Safety: cgroup and pin dir from tests.e2e.agent_harness.mesh_cgroup (removed afterwards),
loopback only, every process ended by PID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from integration import cgroups
from integration.demo import mesh
from integration.xds_server import AdsServer
from tests.e2e.agent_harness import ROOT, SOCKMESH, AgentProc, Backends, mesh_cgroup

T = TypeVar("T")

VIP = next(s.vip for s in mesh.SERVICES if s.name == "reviews")
PORT = mesh.PORT
SLOW = {"safeRegex": {"regex": "/slow.*"}}  # regex rules are evaluated in user space
JASON = {"name": "end-user", "stringMatch": {"exact": "jason"}}
REVIEWS_ROUTES: list[dict[str, Any]] = [mesh.with_istio_retry(r) for r in (
    {"name": "slow-jason", "match": {**SLOW, "headers": [JASON]},
     "route": {"cluster": "reviews-v2"}},
    {"name": "slow", "match": SLOW, "route": {"cluster": "reviews-v3"}},
    {"name": "jason", "match": {"prefix": "/", "headers": [JASON]},
     "route": {"cluster": "reviews-v2"}},
    {"name": "all", "match": {"prefix": "/"}, "route": {"cluster": "reviews-v1"}},
)]
GOOD = b"GET /fast/good HTTP/1.1\r\nHost: reviews:9080\r\n\r\n"
CLUSTER_OF = {b.name: b.cluster for b in mesh.backends(0)}


class LoopThread:
    """An asyncio loop on a daemon thread; ``run`` a coroutine on it from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="reliability-loop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class LiveMesh:
    """Everything a reliability test drives."""

    cgroup: Path
    pin: Path
    tmp: Path
    backends: Backends
    server: AdsServer
    agent: AgentProc
    loop: LoopThread
    envoy_port: int | None = None
    routes: list[dict[str, Any]] = field(default_factory=lambda: REVIEWS_ROUTES)  # reviews'
    separate: dict[str, Backends] = field(default_factory=dict)  # backends in own processes
    overrides: dict[str, tuple[str, int]] = field(default_factory=dict)  # backends run by tests

    def endpoints(self, without: tuple[str, ...] = ()) -> dict[str, list[tuple[str, int]]]:
        """cluster -> endpoints of the running backends (``without``: leave these out)."""
        ports = dict(self.backends.ports)
        for b in self.separate.values():
            ports.update(b.ports)
        out = mesh.endpoints_of([b for b in mesh.backends(0) if b.name in ports
                                 and b.name not in without], ports)
        for name, (host, port) in self.overrides.items():
            if name not in without:
                out[CLUSTER_OF[name]].append((host, port))
        return out

    def resources(self) -> Any:
        return mesh.mesh_resources(self.endpoints(), self.routes)

    def push_good(self) -> str:
        return self.server.set_resources(self.resources())

    def dump(self) -> dict[str, Any]:
        """``sockmesh dump --json`` on the pinned maps (what the kernel holds)."""
        r = subprocess.run(SOCKMESH + ["dump", "--json", "--pin-dir", str(self.pin),
                                       "--admin-addr", f"127.0.0.1:{self.agent.admin}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"sockmesh dump failed: {r.stderr}")
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def counters(self) -> dict[str, int]:
        return self.agent.status()["datapath"]["counters"]  # type: ignore[no-any-return]

    def run_client(self, cases: list[dict[str, Any]], *, in_cgroup: bool, host: str,
                   port: int, name: str, counters: bool = False, timeout: float = 600.0
                   ) -> list[dict[str, Any]]:
        """Run tests/reliability/corpus_client.py on ``cases`` (inside the cgroup or not);
        with ``counters`` each result carries the agent's counter deltas for its case."""
        spec = {"host": host, "port": port, "good": base64.b64encode(GOOD).decode(),
                "cases": cases, "status_port": self.agent.admin if counters else None}
        src, dst = self.tmp / f"{name}.in.json", self.tmp / f"{name}.out.json"
        src.write_text(json.dumps(spec))
        argv = [sys.executable, "-m", "tests.reliability.corpus_client", str(src), str(dst)]
        proc = (cgroups.spawn_in(argv, self.cgroup, cwd=ROOT) if in_cgroup
                else subprocess.Popen(argv, cwd=ROOT))
        try:
            rc = proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()  # our own child, by PID
                proc.wait(5)
        if rc != 0:
            raise RuntimeError(f"corpus client exited {rc}")
        return json.loads(dst.read_text())  # type: ignore[no-any-return]


def envoy_bootstrap(endpoints: dict[str, list[tuple[str, int]]], workdir: Path,
                    routes: list[dict[str, Any]]) -> dict[str, Any]:
    """The oracle: the mesh's route configuration on one Envoy listener, one STATIC cluster
    per mesh cluster with the same backends (tests.diff.envoy_oracle's bootstrap)."""
    from tests.diff.envoy_oracle import bootstrap

    boot = bootstrap({"mesh": mesh.route_config(routes)}, mesh.CLUSTERS, 1,
                     workdir / "access.log")
    for c in boot["static_resources"]["clusters"]:
        c["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
            {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}}
            for h, p in endpoints[c["name"]]]
    return boot


@contextlib.contextmanager
def live_mesh(tmp: Path, with_envoy: bool = False, separate: tuple[str, ...] = (),
              overrides: dict[str, tuple[str, int]] | None = None,
              routes: list[dict[str, Any]] | None = None) -> Iterator[LiveMesh]:
    """Start backends, ADS server, agent (and Envoy); yield; stop everything by PID.

    ``separate``: backend names each run in their own process (a test may kill one);
    ``overrides``: backend name -> (host, port) of a backend the test runs itself (or an
    address nothing listens on); ``routes``: the reviews virtual host's routes (default
    REVIEWS_ROUTES), for the agent and Envoy alike."""
    loop = LoopThread()
    overrides = overrides or {}
    with mesh_cgroup() as (cg, pin):
        own = [b for b in mesh.backends(0) if b.name not in separate and b.name not in overrides]
        backends = Backends([(b.name, b.host) for b in own])
        apart = {b.name: Backends([(b.name, b.host)]) for b in mesh.backends(0)
                 if b.name in separate}
        server = AdsServer()
        agent: AgentProc | None = None
        envoy = None
        try:
            port = loop.run(server.start("127.0.0.1", 0))
            agent = AgentProc(f"127.0.0.1:{port}", cg, pin)
            lv = LiveMesh(cg, pin, tmp, backends, server, agent, loop, separate=apart,
                          overrides=dict(overrides), routes=routes or REVIEWS_ROUTES)
            lv.push_good()
            agent.start()
            # bcc compiles the programs at start: allow for a busy machine
            agent.wait_applied(lambda st: st["config"]["applied"]["endpoints"] == 9, timeout=120)
            if not agent.status()["datapath"]["loaded"]:
                raise RuntimeError(f"datapath not loaded: {agent.output()}")
            if with_envoy:
                from tests.diff.envoy_oracle import listener_ports, start_envoy

                envoy = start_envoy(envoy_bootstrap(lv.endpoints(), tmp / "envoy", lv.routes),
                                    tmp / "envoy")
                envoy.start()
                lv.envoy_port = listener_ports(envoy, ["mesh"])["mesh"]
            yield lv
        finally:
            if envoy is not None:
                envoy.stop()
            if agent is not None:
                agent.stop()
            loop.run(server.stop(grace=0.2))
            backends.stop()
            for b in apart.values():
                b.stop()
            loop.close()
