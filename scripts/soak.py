"""Soak the real agent: mixed traffic with a configuration push every second for N minutes.

    sudo .venv/bin/python scripts/soak.py --minutes 10

Needs root, BPF and cgroup v2 (a child cgroup is created and removed; traffic stays on
loopback).  Prints and writes the figures (.cache/reliability/soak.json); exits 1 when a
request failed, the agent's RSS grew past the bound after warm-up, or the pool held more
sockets than its limit.  tests/reliability/test_soak.py is the 60-second CI version.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability import soak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long (at most 6 h)")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "reliability" / "soak.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sockmesh-soak-") as tmp:
        fig = soak.run(args.minutes * 60.0, Path(tmp))
    problems = soak.check(fig)
    fig["problems"] = problems
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fig, indent=1))
    print(json.dumps({k: v for k, v in fig.items() if k != "samples"}, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
