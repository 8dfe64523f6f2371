"""Run the property/fuzz tests for a long time: N examples per round, new seed each round,
until T seconds have passed (both bounded).

    .venv/bin/python scripts/fuzz_long.py --seconds 600 --examples 2000 [--only NAME ...]

The properties are the CI ones (tests/reliability/test_fuzz_properties.py and
tests/unit/test_translator_properties.py) with a larger ``max_examples``; a failure prints
hypothesis' minimal example and the seed, and the script exits 1.  A JSON summary goes to
.cache/reliability/fuzz_long.json (docs/reliability.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, settings

from tests.reliability import test_fuzz_properties as fuzz
from tests.unit import test_translator_properties as tprops

PROPERTIES: dict[str, Callable[..., Any]] = {
    name: getattr(mod, name) for mod in (fuzz, tprops) for name in dir(mod)
    if name.startswith("test_") and hasattr(getattr(mod, name), "hypothesis")
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    ap.add_argument("--examples", type=int, default=2000, help="examples per property/round")
    ap.add_argument("--rounds", type=int, default=1000, help="at most this many rounds")
    ap.add_argument("--only", nargs="*", default=None, help="property names to run")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "reliability" /
                    "fuzz_long.json")
    args = ap.parse_args(argv)
    names = args.only or sorted(PROPERTIES)
    deadline = time.monotonic() + args.seconds
    runs: dict[str, int] = dict.fromkeys(names, 0)
    t0 = time.monotonic()
    failed: str | None = None
    rounds = 0
    while rounds < args.rounds and time.monotonic() < deadline and failed is None:
        rounds += 1
        for name in names:
            if time.monotonic() >= deadline:
                break
            s = random.randrange(2**32)
            fn = PROPERTIES[name]
            # the CI tests carry their own @settings; a long run swaps in larger ones (the
            # attributes hypothesis' settings() and seed() decorators set)
            fn._hypothesis_internal_use_settings = settings(  # type: ignore[attr-defined]
                max_examples=args.examples, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
            fn._hypothesis_internal_use_seed = s  # type: ignore[attr-defined]
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - reported with its seed
                failed = f"{name} seed {s}: {exc!r}"
                break
            runs[name] += args.examples
            print(f"round {rounds}: {name} x{args.examples} ok (seed {s})", flush=True)
    summary = {"seconds": round(time.monotonic() - t0, 1), "rounds": rounds,
               "examples_per_property": runs, "examples": sum(runs.values()),
               "failed": failed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
