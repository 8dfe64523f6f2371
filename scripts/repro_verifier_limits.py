"""Reproduce the two verifier/toolchain limits that shaped bpf/ (run as root).

1. bcc 0.26 cannot load a program that uses bpf_loop: the callback address is not
   relocated (scripts/repro/bpf_loop_callback.bpf.c -> "R2 type=scalar expected=func").
2. Without bpf_loop, one bounded loop over the whole request head (SM_REQ_BUF bytes) in a
   single program exceeds the verifier's 8192-entry branch stack ("The sequence of 8193
   jumps is too complex"): sk_msg.bpf.c compiled with SM_PARSE_STEP=SM_REQ_BUF.
The datapath therefore parses in passes of SM_PARSE_STEP bytes chained by tail calls; with
bpf_stats the whole sk_msg chain costs about 1.4 us per request (`sockmesh bench`, "where
the time goes").
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bcc import BPF

from bpf.limits import limit
from bpf.loader import HERE, cflags, expand_local_includes


def attempt(title: str, text: str, flags: list[str], func: str, prog_type: int) -> None:
    print(f"--- {title}", flush=True)
    try:
        BPF(text=text.encode(), cflags=flags).load_func(func.encode(), prog_type)
        print("loaded (the limit no longer applies)")
    except Exception as exc:  # noqa: BLE001 - the failure is the result
        print(f"failed as expected: {exc}")


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root")
    attempt("bpf_loop callback under bcc", (ROOT / "scripts/repro/bpf_loop_callback.bpf.c")
            .read_text(), [], "repro_loop", BPF.SK_SKB)
    pin = Path(f"/sys/fs/bpf/sockmesh-test-{os.getpid()}-repro")
    pin.mkdir()
    try:
        whole = limit("REQ_BUF")
        attempt(f"one parse pass over {whole} bytes",
                expand_local_includes(HERE / "sk_msg.bpf.c"),
                cflags(pin) + [f"-DSM_PARSE_STEP={whole}"], "sm_msg_parse", BPF.SK_MSG)
    finally:
        shutil.rmtree(pin, ignore_errors=True)


if __name__ == "__main__":
    main()
