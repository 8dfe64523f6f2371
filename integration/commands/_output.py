"""How the subcommands that report a document print it: JSON with ``--json``, else readable."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def print_doc(doc: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    """Print ``doc`` as indented JSON with sorted keys, or as ``render(doc)``."""
    if as_json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(render(doc))
