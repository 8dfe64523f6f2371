"""Named limits and enums of the datapath, read from sockmesh.h so Python never retypes one."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = Path(__file__).with_name("sockmesh.h")
_DEFINE = re.compile(r"^#define\s+(SM_[A-Z0-9_]+)\s+(.+?)\s*(?:/\*.*)?$")


def _parse(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        m = _DEFINE.match(line.strip())
        if not m:
            continue
        name, expr = m.groups()
        expr = expr.split("/*")[0].strip().replace("ULL", "").replace("<<", " << ")
        expr = re.sub(r"\b(SM_[A-Z0-9_]+)\b", lambda g: str(values.get(g.group(1), "None")), expr)
        try:
            # only integer arithmetic over already-known SM_* names reaches eval
            if re.fullmatch(r"[0-9xa-fA-F()+\-*<> ]+", expr):
                values[name] = int(eval(expr, {"__builtins__": {}}))
        except (SyntaxError, TypeError, ValueError):
            continue
    return values


LIMITS: dict[str, int] = _parse(HEADER.read_text())


def limit(name: str) -> int:
    """The value of ``SM_<name>`` (or ``name`` when it already starts with SM_)."""
    key = name if name.startswith("SM_") else f"SM_{name}"
    return LIMITS[key]


# reasons, in counter-map order: SM_R_FAST -> "fast", ...
REASONS: dict[int, str] = {
    v: k[len("SM_R_"):].lower() for k, v in LIMITS.items() if k.startswith("SM_R_") and k != "SM_R_MAX"
}
