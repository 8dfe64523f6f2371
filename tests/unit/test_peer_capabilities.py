"""The istiod and gocp markers: a missing or stale peer binary is reported, and under CI=true
a test that needs it fails instead of skipping (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import gocp, istiod
from tests.support.capabilities import ROOT, missing_capability


@pytest.mark.parametrize("kind, env", [("istiod", "SOCKMESH_PILOT_DISCOVERY"),
                                       ("gocp", "SOCKMESH_GOCP")])
def test_missing_binary_is_reported(kind: str, env: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env, str(tmp_path / "absent"))
    reason = missing_capability(kind)
    assert reason is not None and "not built" in reason


def test_stale_builds_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin"
    fake.write_text("")
    for mod in (istiod, gocp):
        monkeypatch.setattr(mod, "BINARY", fake)
        fake.with_name("bin.version").write_text("some-other-version\n")
        assert "run tests/peers/" in (mod.missing() or "")
        fake.with_name("bin.version").write_text(
            (istiod.pinned_version() if mod is istiod else gocp.source_key()) + "\n")
        assert mod.missing() is None


def test_pinned_istio_is_a_1_29_release_pseudo_version() -> None:
    # Istio tags have no "v": the go.mod pins the release commit by pseudo-version
    assert istiod.pinned_version().startswith("v0.0.0-2026")


@pytest.mark.parametrize("marker, env", [("istiod", "SOCKMESH_PILOT_DISCOVERY"),
                                         ("gocp", "SOCKMESH_GOCP")])
def test_ci_fails_instead_of_skipping(marker: str, env: str, tmp_path: Path) -> None:
    test = tmp_path / f"test_needs_{marker}.py"
    test.write_text(f"import pytest\n\n@pytest.mark.{marker}\ndef test_x():\n    pass\n")
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
            f"--rootdir={ROOT}", "-c", str(ROOT / "pyproject.toml"), str(test)]
    env_vars = {"PATH": "/usr/bin:/bin", env: str(tmp_path / "absent"),
                "PYTHONPATH": str(ROOT)}
    ci = subprocess.run(base, cwd=ROOT, env={**env_vars, "CI": "true"}, capture_output=True,
                        text=True, timeout=120, check=False)
    # pytest.fail in setup: reported as an error, and the run fails
    assert ci.returncode == 1 and "1 error" in ci.stdout, ci.stdout + ci.stderr
    assert f"CI=true and {marker} capability missing" in ci.stdout
    local = subprocess.run(base, cwd=ROOT, env=env_vars, capture_output=True, text=True,
                           timeout=120, check=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout + local.stderr
