"""The image's install step, run without Docker: pip builds sockmesh from exactly what
deploy/Dockerfile copies into the image (its COPY sources, filtered by the
.dockerignore), and the installed package, away from the source tree, has the datapath's C
sources and answers `sockmesh run --help`.

Docker does not run on these machines; this is the part of `docker build` that can break
when a file the package needs is not copied (a new package, the BPF sources, the readme).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.e2e import deploy_render as dr
from tests.unit.test_deploy_image import copies

pytestmark = pytest.mark.timeout(600)


def stage_build_context(dest: Path) -> None:
    """Lay out what the Dockerfile's COPY instructions put in its source directory (Docker's
    rules: a file into a destination ending in / keeps its name; a directory's contents go
    into the destination)."""
    for sources, target in copies(dr.instructions(dr.DOCKERFILE.read_text())):
        if target.startswith("/"):
            continue  # outside the source directory (the entrypoint script)
        for src in sources:
            path = dr.ROOT / src
            if path.is_dir():
                shutil.copytree(path, dest / target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                out = dest / target / path.name if target.endswith("/") else dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)


def test_package_builds_from_the_image_context_and_runs(tmp_path: Path) -> None:
    ctx = tmp_path / "src"
    ctx.mkdir()
    stage_build_context(ctx)
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(wheels), str(ctx)],
                          capture_output=True, text=True, timeout=540, check=False)
    assert proc.returncode == 0, f"pip cannot build the image's context:\n{proc.stderr[-3000:]}"
    (wheel,) = wheels.glob("sockmesh-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # the loader compiles these at run time: they must be installed, not only in the tree
    c_sources = {p.name for p in (dr.ROOT / "bpf").glob("*.c")} | {
        p.name for p in (dr.ROOT / "bpf").glob("*.h")}
    installed = {Path(n).name for n in names if n.startswith("bpf/")}
    assert c_sources <= installed, f"not in the wheel: {sorted(c_sources - installed)}"

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, timeout=120, capture_output=True)
    # run from elsewhere with only the installed copy on the path (dependencies from the venv)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    probe = ("import integration, sys; from integration.cli import main; "
             f"assert integration.__file__.startswith({str(site)!r}), integration.__file__; "
             "sys.exit(main(['run', '--help']))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=env, check=False)
    assert run.returncode == 0, run.stderr
    assert "--xds-server" in run.stdout

    # `sockmesh ab` and `sockmesh bench` run Envoy and generate requests with the installed
    # code alone (tests/unit/test_packaging.py keeps the test tree out of every import); with
    # no Envoy anywhere, the error says how to give one
    probe = ("from integration import ab, envoy; from integration.bench import control; "
             "from integration.commands import bench; "
             "from integration.requestgen import boundary_requests; "
             "rc = {'virtual_hosts': [{'name': 'a', 'domains': ['a'], 'routes': ["
             "{'match': {'prefix': '/x'}, 'route': {'cluster': 'c'}}]}]}; "
             "assert boundary_requests(rc); "
             "assert envoy.envoy_binary() is None, envoy.envoy_binary(); "
             "envoy.find_envoy()")
    env = {k: v for k, v in env.items() if k != "SOCKMESH_ENVOY"}
    env["PATH"] = str(Path(sys.executable).parent)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=env, check=False)
    assert run.returncode == 1, run.stderr
    assert "EnvoyError: Envoy binary not found: pass --envoy PATH" in run.stderr, run.stderr
