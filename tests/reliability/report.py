"""Write docs/reliability.md from the results the reliability tests and scripts leave in
.cache/reliability/ (never edit the document by hand; regenerate it)::

    CI=true .venv/bin/python -m pytest tests/reliability          # the CI figures
    .venv/bin/python scripts/fuzz_long.py --seconds 600            # long fuzz run
    .venv/bin/python scripts/soak.py --minutes 10                  # long soak
    .venv/bin/python -m tests.reliability.report                   # this document
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / ".cache" / "reliability"
DOC = ROOT / "docs" / "reliability.md"

OUTCOME_WORDS = {"reject": "400 and close", "route": "routed", "slow": "slow path",
                 "tunnel": "plain tunnel"}


def _load(name: str) -> Any:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else None


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def http_section(doc: dict[str, Any]) -> list[str]:
    out = ["## 1. Malformed HTTP corpus", ""]
    variants = doc["variants"]
    kernel, slow = variants["kernel"], variants["slow"]
    n_cases = len([r for r in kernel if r["family"] != "split_writes"])
    n_split = len([r for r in kernel if r["family"] == "split_writes"])
    total = sum(len(v) for v in variants.values())
    ok = sum(r["ok"] for v in variants.values() for r in v)
    out += [
        (f"{n_cases} cases (tests/support/http_corpus.py) plus the split-write sweep ({n_split} "
        "offsets: one request written in two pieces cut at every byte of its header section), "
        "each sent twice by a client inside the test cgroup to a service VIP: once on a route "
        "the kernel serves (`/fast`) and once on a regex route the kernel hands to the "
        "user-space slow path (`/slow`), and each also sent to a real Envoy one hop away "
        "with the same route configuration and the same backends (the oracle). After every "
        "case a good request on a new connection must be served."),
        "",
        (f"**Result of the last run: {ok} of {total} connections as documented, "
        f"{total - ok} not** ({doc.get('seconds', '?')} s)."),
        "",
        "| family | cases | expected outcomes | kernel path ok | slow path ok |",
        "|---|---|---|---|---|",
    ]
    fams: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for k, s in zip(kernel, slow, strict=True):
        fams[k["family"]].append((k, s))
    for fam, rows in fams.items():
        exp = Counter(OUTCOME_WORDS[k["expect"]] for k, _ in rows)
        out.append(f"| {fam} | {len(rows)} | "
                   f"{', '.join(f'{n}× {w}' for w, n in exp.items())} | "
                   f"{sum(k['ok'] for k, _ in rows)}/{len(rows)} | "
                   f"{sum(s['ok'] for _, s in rows)}/{len(rows)} |")
    out += ["", ("Every case (split-write offsets summarised in one row; \"hand-off\" is the "
            "kernel counter that moved for the `/fast` run):"), "",
            "| case | documented outcome | kernel path | hand-off | slow path | Envoy | note |",
            "|---|---|---|---|---|---|---|"]
    split_rows = fams.get("split_writes", [])
    for k, s in zip(kernel, slow, strict=True):
        if k["family"] == "split_writes":
            continue
        moved = ", ".join(sorted(set(k["counters"]) - {"resp_done", "resp_lost", "corked",
                                                          "body", "pool_fin"}))
        flag = "" if k["ok"] and s["ok"] else " **FAIL**"
        out.append(f"| {k['name']}{flag} | {OUTCOME_WORDS[k['expect']]} | {k['sockmesh']} | "
                   f"{moved} | {s['sockmesh']} | {k['envoy']} | "
                   f"{_md_escape(k.get('envoy_note') or '')} |")
    if split_rows:
        kr = Counter(k["sockmesh"] for k, _ in split_rows)
        sr = Counter(s["sockmesh"] for _, s in split_rows)
        er = Counter(k["envoy"] for k, _ in split_rows)
        out.append(f"| split_at_001 … split_at_{len(split_rows):03d} | routed | "
                   f"{dict(kr)} | | {dict(sr)} | {dict(er)} | every offset of the head |")
    problems = [p for v in variants.values() for r in v for p in r["problems"]]
    if problems:
        out += ["", "Problems in this run:", ""] + [f"- {_md_escape(p)}" for p in problems[:40]]
    out += ["", ("Outcome words: *routed* = a backend of the expected cluster answered; "
            "*rejected N* = a local reply with status N and no backend reached; *closed* = "
            "the connection was closed without a response; *no answer in 3 s* = the "
            "connection stayed open without a response (only accepted for a plain tunnel: "
            "the relayed peer, an HTTP backend, waits for the end of a request head that "
            "never comes, as it would on a direct connection; the h2 preface row shows a "
            "relayed peer answering). *400 and close* accepts any local 4xx/5xx reply (400, "
            "404 when nothing routes, 431, 501) or a close, as long as no backend was "
            "reached. The kernel counters say which hand-off reason moved (`not_http`, "
            "`parse_limit`, `chunked_req`, `pipelined`, `no_route`) or `fast` for the "
            "kernel path.")]
    return out


def xds_section(doc: dict[str, Any]) -> list[str]:
    cases = doc["cases"]
    ok = sum(c["ok"] for c in cases)
    fams = Counter(c["family"] for c in cases)
    out = ["## 2. Bad xDS corpus", "",
           (f"{len(cases)} bad responses (tests/support/xds_corpus.py) served one after the "
           "other by the embedded AdsServer to the real agent (SotW ADS), each followed by the "
           "good snapshot again. Checked: the agent NACKs, the `error_detail` the server "
           "received names the problem, and `sockmesh dump --json` shows the same services, "
           "clusters and endpoints in the kernel maps as before."), "",
           f"**Result of the last run: {ok} of {len(cases)} NACKed with a reason naming the "
           f"problem and the maps unchanged** ({doc.get('seconds', '?')} s). Families: "
           + ", ".join(f"{f} {n}" for f, n in fams.items()) + ".", "",
           "| case | type | error_detail received by the server | maps unchanged |",
           "|---|---|---|---|"]
    for c in cases:
        detail = c["detail"] if len(c["detail"]) < 150 else c["detail"][:147] + "..."
        out.append(f"| {c['name']} | {c['type']} | {_md_escape(detail)} | "
                   f"{'yes' if c['maps_unchanged'] else '**no**'} |")
    out += ["", ("Not NACKed, by design (Envoy accepts them too): a virtual host with more "
            "rules than the kernel walks, or any table over a kernel limit, is accepted and "
            "served by the slow path (section 4); a response larger than gRPC's 4 MB receive "
            "limit ends the stream before any resource can be decoded (no NACK is possible; "
            "the client reconnects and keeps its last good config).")]
    return out


def fuzz_section(long: dict[str, Any] | None) -> list[str]:
    out = ["## 3. Property and fuzz tests", "",
           ("CI (hypothesis, fixed `max_examples` and no deadline): "
           "tests/reliability/test_fuzz_properties.py, 300 examples per property:"), "",
           ("- random bytes, fed to the slow path's HTTP parser (`bpf.splice.read_request`) "
           "over a real socket in random pieces, only ever give a request, *not HTTP*, *bad "
           "request* or end of stream, and a parsed request is a prefix of the input;"),
           ("- valid requests parse the same however they are split, exactly one request is "
           "consumed (the pipelined rest stays buffered), and the model routes the parsed "
           "request exactly as it routes the request that was generated;"),
           ("- mutated valid requests (byte flips, inserted CR/LF/NUL/colons, a second "
           "Content-Length or Transfer-Encoding, duplicated lines) never crash the parser, "
           "and what it accepts has at most one Host, one Content-Length and never both "
           "framings;"),
           ("- random listeners, clusters and endpoints (the mesh as JSON with fields deleted "
           "or replaced by junk) never crash the translator: only ResourceError or "
           "TranslationError, and what translates routes."),
           "",
           ("Together with the existing translator properties (tests/unit/"
           "test_translator_properties.py: random route configs never crash, last-match on "
           "the reversed table equals a first-match reference, the model never crashes on "
           "arbitrary requests)."), ""]
    if long:
        out += [(f"Long run (`scripts/fuzz_long.py`): {long['seconds']} s, {long['rounds']} "
                f"rounds, up to {long['examples']} examples in all, "
                f"{'no failure' if not long['failed'] else 'FAILED: ' + long['failed']}."), "",
                "| property | examples (upper bound) |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in long["examples_per_property"].items()]
    return out


def faults_section(f: dict[str, Any] | None, soak_ci: dict[str, Any] | None,
                   soak_long: dict[str, Any] | None) -> list[str]:
    out = ["## 4. Faults under load", "",
           ("The real agent on a test cgroup, the demo client in it (keep-alive, 2–3 workers), "
           "a fault injected while it runs. Already in tests/e2e/test_agent_datapath.py and "
           "not repeated: control server down 10 s → zero failed requests and the next change "
           "applies after reconnecting; agent SIGKILLed → the pinned datapath keeps serving "
           "with zero failed requests and the new agent adopts it."), ""]
    if f:
        c = f.get("control_server_down")
        if c:
            out.append(f"- **Control server down** (tests/reliability/test_faults.py): "
                       f"{c['requests']} requests, {c['failed']} failed; "
                       f"{c['attempts_in_4s']} reconnect attempts in 4 s with gaps "
                       f"{c['gaps_s']} s (exponential, capped by `--backoff-max`, 0.5 s in "
                       "the test).")
        b = f.get("backend_killed")
        if b and "in_flight" in b:
            sp = b.get("slow_path", {})
            out.append(f"- **Backend SIGKILLed** (details-2 of 2): before the kill "
                       f"{b['before']} requests, {b['before_failed']} failed; in flight at the "
                       f"kill {b['in_flight']}, {b['in_flight_failed']} failed "
                       f"({b.get('failures_in_flight')}); started after the process was gone "
                       f"and before the control plane removed the endpoint ({b['window_s']} s) "
                       f"{b['between']}, {b['between_failed']} failed; after the removal "
                       f"{b['after']}, {b['after_failed']} failed. Polling the agent's metrics "
                       f"showed no idle pooled connection to the dead endpoint "
                       f"{b['detected_ms']} ms after its death (one scrape takes "
                       f"{b['scrape_ms']} ms: the kernel marks the slots dead on the FIN, "
                       "faster than this poll resolves). In that window the "
                       f"kernel served {b['fast_in_window']} requests and handed "
                       f"{b['pool_empty_in_window']} to the slow path (`pool_empty`: no idle "
                       f"connection to the picked endpoint), which proxied "
                       f"{sp.get('proxied', 0)}, met {sp.get('upstream_connect_error', 0)} "
                       f"refused connects and retried them under the route's retry policy "
                       f"({sp.get('retried', 0)} retries, {sp.get('upstream_connect_failed', 0)}"
                       " requests out of attempts). The mesh's routes carry istiod's default "
                       "policy (connect-failure, 2 retries, previous hosts skipped up to 5 "
                       "re-picks, then the last pick), as Envoy would run them: with two RANDOM "
                       "hosts a request fails only when all its picks hit the dead one (1 in "
                       "8192). Like Envoy without `outlier_detection`, the dead endpoint is not "
                       "ejected: each request picked for it costs one refused loopback connect "
                       "until EDS removes it.")
        rp = f.get("refused_connect_retry_policy")
        if rp:
            out.append("- **Retries follow the route's retry policy** (a refused connect: "
                       "productpage's only endpoint and details' second refuse; a real Envoy "
                       "with the same configuration answers the same, same 503 body): "
                       + "; ".join(
                           f"`/{p}` ({what}) {v['requests']} requests, answers {v['answers']}, "
                           f"slow path {v['slow_path']}" for p, what in (
                               ("plain", "productpage, no retry policy"),
                               ("istio", "productpage, istiod's default policy"),
                               ("other", "details, istiod's default policy"))
                           if (v := rp.get(p))) + ".")
        rr = f.get("reset_retry_policy")
        if rr:
            sp = rr["slow_path"]
            out.append(f"- **A reset before any response** (the only endpoint reads each "
                       f"request and closes; {rr['requests']} requests per route, slow path): "
                       f"no retry policy {sp.get('plain')}, istiod's default {sp.get('istio')} "
                       f"(connect-failure does not retry a reset), `retry_on: reset` with 2 "
                       f"retries {sp.get('reset')}; each a 503 as Envoy answers it.")
        k = f.get("keepalive_timeout")
        if k:
            out.append(f"- **Keep-alive timeout on the backend** (closes connections idle "
                       f"0.3 s): {k['closed_by_backend']} pooled connections closed by the "
                       f"backend and replaced, {k['requests']} requests, {k['failed']} failed.")
        r = f.get("rule_table_over_limit")
        if r:
            out.append(f"- **A table over its kernel limit** ({r['rules']} rules in one "
                       f"virtual host, limit SM_RULES_PER_VHOST): {r['requests']} requests, "
                       f"{r['failed']} failed, {r['slow_path_limit']} served by the slow "
                       "path (counter `limit`), routed as before.")
        h = f.get("cluster_over_host_limit")
        if h:
            out.append(f"- **A cluster over its kernel limit** ({h['endpoints']} endpoints, limit "
                       f"SM_HOSTS_PER_CLUSTER; the encoder flags it SM_CL_USER): "
                       f"{h['requests']} requests, {h['failed']} failed, "
                       f"{h['slow_path_limit']} handed to the slow path (`limit`, plus "
                       f"{h['slow_path_sticky']} `sticky`), spread over "
                       f"{h['distinct_endpoints']} distinct endpoints.")
        m = f.get("clients_map_full")
        if m:
            out.append(f"- **Client map full** (sm_clients_v2, an LRU of SM_MAX_CLIENTS "
                       f"entries): {m['entries_written']} entries of connections that do not "
                       f"exist written while a keep-alive connection was open; the LRU "
                       f"{'evicted' if m['evicted_by_fill'] else 'kept'} the open connection's "
                       "entry (the programs use it; the test then removes it as an eviction "
                       f"would). Its next {m['evicted_connection_requests']} requests: "
                       f"{m['evicted_connection_failed']} failed, {m['by_slow_path']} served by "
                       "the slow path with the state it read at accept; a new connection got an "
                       f"entry and {m['new_connection_fast']} request on the kernel path. "
                       "Pool slots cannot fill up (sm_slots_v1 has SM_POOL_PER_ENDPOINT slots "
                       "for every endpoint id); an endpoint whose pool is all busy sends the "
                       "request to the slow path (`pool_empty`, tests/kernel/test_slow_path.py).")
    for label, s in (("Soak, CI (60 s)", soak_ci), ("Soak, scripts/soak.py", soak_long)):
        if s:
            out.append(f"- **{label}**: {s['seconds']} s of mixed traffic (all four "
                       f"services, a header route, random, least-request and, every fourth "
                       f"push, weighted round-robin clusters) with "
                       f"{s['pushes']} configuration pushes ({s['applies']} applies): "
                       f"{s['requests']} requests, {s['failed']} failed; agent RSS "
                       f"{s['rss_kib_after_warmup'] // 1024} MiB after warm-up, max "
                       f"{s['rss_kib_max'] // 1024} MiB (growth {s['rss_growth_kib']} KiB, "
                       f"bound 40 MiB); pooled sockets max {s['pool_sockets_max']} (bound: "
                       "endpoints × SM_POOL_PER_ENDPOINT).")
    return out


SECURITY = ["## 5. Security", "",
            "tests/reliability/test_security.py, on the real agent:", "",
            ("- only the configured cgroup is intercepted: a process outside it that connects "
            "to a service VIP is refused (nothing is redirected) while the same connect from "
            "inside is routed; the agent and its socket keeper are not in the cgroup; none "
            "of the agent's programs is attached to the cgroup v2 root;"),
            "- everything pinned is root-only (pin directory 0700, objects 0600, owner root);",
            ("- every socket the agent (and its socket keeper) listens on is bound to "
            "loopback; the defaults of `sockmesh run --metrics-addr` and `sockmesh xds-server "
            "--host` are loopback;"),
            ("- no product code (xds_client, translator, bpf, integration) can run a shell: "
            "an AST scan fails on `shell=` other than False, `os.system`, `os.popen`, "
            "`asyncio.create_subprocess_shell`, `subprocess.getoutput`."),
            "",
            ("Privileges: the DaemonSet runs unprivileged with all capabilities dropped except "
            "CAP_SYS_ADMIN and CAP_SYSLOG (deploy/kubernetes/daemonset.yaml, each one "
            "explained in deploy/helm/sockmesh/values.yaml); tests/e2e/"
            "test_deploy_capabilities.py loads the real datapath with exactly that set and "
            "shows it fails without any one of them.")]

BUGS = ["## Bugs this suite found (fixed)", "",
        ("- Slow path forwarded malformed HTTP/1.1 to a backend: obs-fold, bad header names, "
        "NUL/CTL in values, HTTP/0.9 and bad versions, unknown methods were relayed opaquely "
        "to the catch-all endpoint; Content-Length with Transfer-Encoding and a second "
        "Content-Length were forwarded with ambiguous framing (a smuggling vector); negative "
        "or overflowing lengths hung the connection; two Host headers were routed by the "
        "last one (to another service). Now 400 (431 over the header limits, 501 for an "
        "unknown transfer coding) and close, as Envoy. Absolute-form targets were 404; now "
        "routed by the URL's authority and path, as Envoy."),
        ("- Kernel parser: a second Content-Length was accumulated into one number (1 and 2 "
        "became 12), control characters in header values and unknown methods were routed in "
        "kernel; now handed to the slow path, which refuses them."),
        ("- Slow path: a refused connect to an endpoint closed the application's connection "
        "without a response; now a 503 on that request, as Envoy."),
        ("- A killed backend failed requests until the control plane removed it (49 of 194 "
        "between the kill and the EDS removal in one run): the slow path answered 503 on a refused "
        "connect, and an upstream reset after sending closed the application's connection. "
        "Now a refused connect is retried as the route's retry policy says, and a reset is a "
        "503 on a connection that stays usable."),
        ("- The slow path retried refused connects on every route, with Istio's default "
        "policy; Envoy retries only under the route's (or its virtual host's) retry policy "
        "and answers 503 without one. Now the effective policy of the matched route is "
        "applied."),
        ("- A connection whose entry the full LRU client map evicted was answered 404 by the "
        "slow path (no route table); now routed with the state read at accept."),
        ("- Kernel path: a chunked request whose first chunk size was malformed was "
        "dispatched before the bad size was seen; now handed to the slow path, 400 as "
        "Envoy."), ""]

REPRO = ["## How to reproduce", "",
         "```",
         "CI=true .venv/bin/python -m pytest tests/reliability      # all of the above (root)",
         ".venv/bin/python scripts/fuzz_long.py --seconds 600 --examples 1000",
         ".venv/bin/python scripts/soak.py --minutes 10",
         ".venv/bin/python -m tests.reliability.report               # regenerates this file",
         "```", "",
         ("Each test writes its figures under .cache/reliability/; this document is generated "
         "from them by tests/reliability/report.py (do not edit it by hand).")]


def render() -> str:
    http, xds = _load("http_corpus.json"), _load("xds_corpus.json")
    runtime = _load("pytest_run.json")
    lines = ["# Reliability and security", "",
             ("<!-- generated by tests/reliability/report.py from .cache/reliability/*.json; "
             "do not edit -->"), "",
             ("What sockmesh does with bad input, faults and hostile bytes, checked against a "
             "real Envoy, a real kernel datapath and the real agent. Figures are from the "
             "last run on the development machine (kernel 6.18, 2 shared vCPUs).")]
    if runtime:
        lines += ["", (f"CI run of tests/reliability (`CI=true pytest tests/reliability`): "
                       f"{runtime['passed']} passed, {runtime['failed']} failed, "
                       f"{runtime['skipped']} skipped; {runtime['seconds']} s of test time."),
                  "", "| test | outcome | s |", "|---|---|---|"]
        lines += [f"| {k.split('::')[0].rsplit('/', 1)[-1]}::{k.split('::')[-1]} | "
                  f"{v['outcome']} | {v['seconds']} |" for k, v in runtime["tests"].items()]
    lines.append("")
    if http:
        lines += http_section(http) + [""]
    if xds:
        lines += xds_section(xds) + [""]
    lines += fuzz_section(_load("fuzz_long.json")) + [""]
    lines += faults_section(_load("faults.json"), _load("soak_ci.json"),
                            _load("soak.json")) + [""]
    lines += SECURITY + [""] + BUGS + REPRO
    return "\n".join(lines) + "\n"


def main() -> int:
    DOC.write_text(render())
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
