"""Where the shared Istio config dumps live (``shared/testdata/istio`` next to the repository).

    istio_testdata()                  # the directory, or None when it is not there
    require_istio_testdata()          # the directory; skips the test, or fails it under CI=true
    istio_dump(BOOKINFO_DUMP)         # one dump by file name, required as above
    istio_dumps()                     # every dump, [] when the directory is not there
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

BOOKINFO_DUMP = "istio_bookinfo_gateway_rds_cds.json"
PATH_SEPARATED_PREFIX_DUMP = "istio_k8s_gateway_path_separated_prefix_rds.json"
GATEWAY_PREFIX_DUMP = "istio_gateway_prefix_rds.json"


def istio_testdata() -> Path | None:
    """The real Istio dumps (``shared/testdata/istio`` next to the repository), if present.

    ``SOCKMESH_ISTIO_TESTDATA`` overrides the search.
    """
    env = os.environ.get("SOCKMESH_ISTIO_TESTDATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "testdata" / "istio"
        if candidate.is_dir():
            return candidate
    return None


def istio_dumps() -> list[Path]:
    """Every Istio dump (``*.json``), sorted; empty when the directory is not there."""
    found = istio_testdata()
    return sorted(found.glob("*.json")) if found is not None else []


def require_istio_testdata() -> Path:
    """The Istio dumps directory; a test without it skips, or fails when ``CI=true``."""
    found = istio_testdata()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and shared/testdata/istio is missing")
        pytest.skip("shared/testdata/istio not found next to the repository")
    return found


def istio_dump(name: str) -> Path:
    """One Istio dump by file name (required as :func:`require_istio_testdata` says)."""
    return require_istio_testdata() / name
