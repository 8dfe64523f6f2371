"""Comparing `sockmesh explain` with Envoy: run explain in batch, diff two decisions.

Shared by the differential tests in this directory (test_envoy_routing, test_istiod_envoy).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from integration.cli import main as cli_main
from tests.diff.envoy_oracle import EnvoyDecision
from tests.support.capabilities import ROOT
from tests.support.routegen import GeneratedRequest


def run_explain(args: list[str], requests: list[GeneratedRequest], requests_file: Path,
                subprocess_cli: bool = True) -> tuple[int, str, str]:
    """`sockmesh explain ARGS --requests FILE` with ``requests`` written to ``requests_file``:
    (exit code, stdout, stderr).

    As a real command in a subprocess by default; ``subprocess_cli=False`` calls the same CLI
    entry point in this process (saves ~1 s of interpreter start per call).
    """
    requests_file.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in requests))
    argv = ["explain", *args, "--requests", str(requests_file)]
    if subprocess_cli:
        proc = subprocess.run([sys.executable, "-m", "integration.cli", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue(), err.getvalue()


def explain_batch(dump: Path, route_config: str, requests: list[GeneratedRequest],
                  workdir: Path, subprocess_cli: bool = True) -> list[dict[str, Any]]:
    """Run `sockmesh explain --route-config` on ``requests`` (``subprocess_cli`` as in
    :func:`run_explain`) and return its decisions in order."""
    reqs = workdir / f"requests-{abs(hash((str(dump), route_config)))}.jsonl"
    code, stdout, stderr = run_explain(
        ["--config-dump", str(dump), "--route-config", route_config], requests, reqs,
        subprocess_cli)
    assert code == 0, f"explain failed on {dump} {route_config}:\n{stderr}"
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert len(lines) == len(requests), (len(lines), len(requests))
    return lines


def candidate_weights(candidates: Any) -> dict[str, int]:
    """Decision candidates (list of {cluster, weight} or a mapping) as {cluster: weight}."""
    if isinstance(candidates, dict):
        return {str(k): int(v) for k, v in candidates.items()}
    out: dict[str, int] = {}
    for c in candidates or []:
        if isinstance(c, dict):
            out[str(c.get("cluster", c.get("name")))] = int(c.get("weight", 0))
        else:
            out[str(c[0])] = int(c[1])
    return out


def disagreements(envoy: EnvoyDecision | None, ours: dict[str, Any]) -> list[str]:
    """What differs between Envoy's decision and ours (empty when they agree)."""
    if envoy is None:
        return ["no access log entry from Envoy"]
    problems = []
    action = ours.get("action")
    routed = action in ("cluster", "weighted_clusters")
    # a routed request reaches the 200 backend unless its cluster does not exist
    want_status = ours.get("status") or 200 if routed else ours.get("status")
    if envoy.status != want_status:
        problems.append(f"status envoy={envoy.status} ours={want_status}")
    if action == "cluster" and ours.get("status") is not None:
        if envoy.cluster is not None:  # cluster not found: Envoy has no upstream cluster
            problems.append(f"cluster envoy={envoy.cluster} ours=not found "
                            f"({ours.get('cluster')})")
    elif action == "cluster":
        if envoy.cluster != ours.get("cluster"):
            problems.append(f"cluster envoy={envoy.cluster} ours={ours.get('cluster')}")
    elif action == "weighted_clusters":
        cands = candidate_weights(ours.get("candidates"))
        if envoy.cluster not in cands:
            problems.append(f"cluster envoy={envoy.cluster} not in ours={sorted(cands)}")
    elif envoy.cluster is not None:
        problems.append(f"cluster envoy={envoy.cluster} ours=None ({action})")
    if action in ("redirect", "direct_response") and envoy.location != ours.get("location"):
        problems.append(f"location envoy={envoy.location} ours={ours.get('location')}")
    our_route = ours.get("route")
    want_route = our_route if isinstance(our_route, str) and our_route else None
    if envoy.route != want_route:
        problems.append(f"route envoy={envoy.route} ours={our_route!r}")
    return problems
