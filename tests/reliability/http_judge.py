"""Judge one corpus case: sockmesh's answers against the documented outcome and Envoy's.

A response's *verdict* is the cluster of the backend that answered (``x-backend``), or
``status:N`` for a local reply, or ``none`` when no response came.  The rules:

* no hang: the connection was answered in full or closed before the deadline;
* the service keeps serving: the good request after the case is routed (reviews-v1);
* REJECT: no backend answered anything (only 4xx/5xx local replies or a close);
* ROUTE / SLOW: every owed response was routed, to the cluster Envoy picked for it;
* SLOW on the kernel path: the kernel counted a hand-off to the slow path;
* TUNNEL: nothing reached a cluster other than the service's catch-all one (a peer that
  waits for more bytes is not a hang);
* ``kernel_streams_body`` cases on the kernel path may be routed (to Envoy's cluster for
  the head) before the body error is found;
* wherever Envoy did not route a response, sockmesh did not route it either (unless the
  case documents a deliberate difference in ``envoy_note``).
"""

from __future__ import annotations

from typing import Any

from tests.reliability.harness import CLUSTER_OF
from tests.support.http_corpus import REJECT, ROUTE, SLOW, TUNNEL, HttpCase

CATCH_ALL = "reviews-v1"
KERNEL_REASONS_NOT_SLOW = {"fast", "corked", "body", "resp_done", "resp_lost", "resp_unmapped",
                           "pool_fin", "l4", "scratch"}


def verdicts(result: dict[str, Any], owed: int) -> list[str]:
    """Per owed response: the cluster that answered, ``status:N``, or ``none``."""
    out = []
    for r in result["responses"][:owed]:
        backend = r.get("backend")
        out.append(CLUSTER_OF.get(backend, f"backend:{backend}") if backend
                   else f"status:{r['status']}")
    return out + ["none"] * (owed - len(out))


def routed(v: str) -> bool:
    return not (v == "none" or v.startswith("status:"))


def judge(case: HttpCase, got: dict[str, Any], envoy: dict[str, Any] | None,
          kernel_path: bool) -> list[str]:
    """Problems with ``got`` (sockmesh's result for ``case``); empty when it is right."""
    problems = []
    owed = case.responses
    mine = verdicts(got, owed)
    if got["end"] not in ("answered", "eof") and not (
            case.expect == TUNNEL and got["end"] == "timeout"):
        # a tunnel relays bytes: a peer that waits for more of them is not a hang of ours
        problems.append(f"hang or error: end={got['end']} after {got.get('ms')} ms")
    after = got.get("after", {})
    if verdicts(after, 1) != [CATCH_ALL]:
        problems.append(f"not serving afterwards: {after}")
    streamed = case.kernel_streams_body and kernel_path
    if case.expect == REJECT and any(routed(v) for v in mine) and not streamed:
        problems.append(f"expected 400-and-close, a backend answered: {mine}")
    if case.expect in (ROUTE, SLOW) and not all(routed(v) for v in mine):
        first_bad = case.name == "pipelined_second_bad" and routed(mine[0])
        if not first_bad:
            problems.append(f"expected routed, got {mine}")
    if case.expect == TUNNEL and any(routed(v) and v != CATCH_ALL for v in mine):
        problems.append(f"tunnel reached a non catch-all cluster: {mine}")
    if case.expect == SLOW and kernel_path:
        moved = set(got.get("counters", {})) - KERNEL_REASONS_NOT_SLOW
        if not moved:
            problems.append(f"expected a slow-path hand-off, counters: {got.get('counters')}")
    if envoy is not None and case.expect != TUNNEL:
        theirs = verdicts(envoy, owed)
        for i, (m, t) in enumerate(zip(mine, theirs, strict=True)):
            if routed(t) and routed(m) and m != t:
                problems.append(f"response {i}: sockmesh routed to {m}, Envoy to {t}")
            if not routed(t) and routed(m) and not case.envoy_note and not streamed:
                problems.append(f"response {i}: sockmesh routed to {m}, Envoy answered {t}")
    return problems


def outcome(got: dict[str, Any], owed: int) -> str:
    """A short label of what happened (for the report)."""
    v = verdicts(got, owed)
    if got["end"] not in ("answered", "eof"):
        return "no answer in 3 s" if not got["responses"] else "partial answer in 3 s"
    if all(routed(x) for x in v):
        return "routed"
    if not any(routed(x) for x in v):
        statuses = sorted({x for x in v if x.startswith("status:")})
        return "rejected " + ",".join(s[7:] for s in statuses) if statuses else "closed"
    return "mixed " + "/".join(v)
