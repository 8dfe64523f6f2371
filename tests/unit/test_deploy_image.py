"""deploy/Dockerfile checked statically (Docker does not run on these machines).

The image must install what scripts/setup.sh installs for the agent, copy every Python
package the project ships, exist in its build context, and start `sockmesh run` through an
entrypoint script that is there and executable.  Facts are read from the files themselves
(setup.sh's DEBS, pyproject's package list), never restated here.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.e2e.deploy_render import entrypoint as exec_form_entrypoint
from tests.e2e.deploy_render import exec_form, instructions

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
SETUP = ROOT / "scripts" / "setup.sh"
PYPROJECT = ROOT / "pyproject.toml"


def copies(instrs: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context."""
    out = []
    for word, args in instrs:
        if word != "COPY":
            continue
        parts = shlex.split(args)
        assert not any(p.startswith("--from") for p in parts), "multi-stage COPY not expected"
        parts = [p for p in parts if not p.startswith("--")]
        out.append((parts[:-1], parts[-1]))
    return out


def apt_installed(instrs: list[tuple[str, str]]) -> set[str]:
    """Packages named by `apt-get install` in RUN instructions."""
    pkgs: set[str] = set()
    for word, args in instrs:
        if word != "RUN":
            continue
        for cmd in re.split(r"&&|;", args):
            tokens = shlex.split(cmd)
            if "apt-get" in tokens and "install" in tokens:
                after = tokens[tokens.index("install") + 1:]
                pkgs |= {t for t in after if not t.startswith("-")}
    return pkgs


def setup_debs() -> set[str]:
    """Every Debian package scripts/setup.sh installs: its DEBS array and the ones it adds."""
    text = SETUP.read_text()
    m = re.search(r"^DEBS=\(([^)]*)\)", text, re.MULTILINE | re.DOTALL)
    assert m is not None, "scripts/setup.sh has no DEBS=(...) array"
    debs = set(m.group(1).split())
    debs |= set(re.findall(r"missing\+=\(([\w.+-]+)\)", text))
    return debs


def setup_only(text: str) -> set[str]:
    """The Dockerfile's declared list of setup.sh packages the image leaves out."""
    m = re.search(r"^# SETUP_ONLY:(.*)$", text, re.MULTILINE)
    assert m is not None, "deploy/Dockerfile declares no '# SETUP_ONLY:' list"
    return set(m.group(1).split())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def instrs(dockerfile: str) -> list[tuple[str, str]]:
    return instructions(dockerfile)


def test_base_is_debian_bookworm(instrs: list[tuple[str, str]]) -> None:
    # python3-bpfcc is built for Debian's own python3; the image must be the Debian release
    # the project's Python requirement is met by (bookworm: 3.11)
    froms = [args for word, args in instrs if word == "FROM"]
    assert len(froms) == 1 and re.fullmatch(r"debian:bookworm(-slim)?", froms[0]), froms
    requires = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    assert requires == ">=3.11", f"bookworm ships Python 3.11; pyproject now wants {requires}"


def test_installs_the_agent_packages_setup_installs(dockerfile: str,
                                                    instrs: list[tuple[str, str]]) -> None:
    image = apt_installed(instrs)
    left_out = setup_only(dockerfile)
    setup = setup_debs()
    assert image, "the Dockerfile installs no Debian packages"
    assert not image & left_out, f"both installed and declared setup-only: {image & left_out}"
    missing = setup - image - left_out
    assert not missing, (f"scripts/setup.sh installs {sorted(missing)} but the image neither "
                         "installs them nor lists them under SETUP_ONLY")
    extra = image - setup
    assert not extra, f"the image installs {sorted(extra)}, which scripts/setup.sh does not"
    stale = left_out - setup
    assert not stale, f"SETUP_ONLY names {sorted(stale)}, which scripts/setup.sh no longer installs"
    # what the agent cannot run without
    assert {"python3-bpfcc", "clang", "llvm", "bpftool", "linux-headers-amd64"} <= image


def test_every_copy_source_exists_and_is_in_the_build_context(
        instrs: list[tuple[str, str]]) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def sent(rel: str) -> bool:  # .dockerignore semantics: the last matching pattern wins
        keep = True
        for pat in patterns:
            negate = pat.startswith("!")
            pat = pat.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/"):
                keep = negate
        return keep

    cps = copies(instrs)
    assert cps, "no COPY instructions"
    for sources, _dest in cps:
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"COPY source {src} does not exist"
            assert sent(src.rstrip("/")), f"COPY source {src} is excluded by {DOCKERIGNORE.name}"


def test_copies_every_package_pyproject_ships(instrs: list[tuple[str, str]]) -> None:
    project = tomllib.loads(PYPROJECT.read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = {Path(s).name for sources, _ in copies(instrs) for s in sources}
    assert packages <= copied, f"pyproject ships {sorted(packages - copied)} but the image " \
                               "does not copy them"
    readme = project["project"].get("readme")
    assert readme is None or readme in copied, f"pyproject's readme {readme} is not copied"
    assert "pyproject.toml" in copied


def test_venv_like_setup_sees_debian_bcc(instrs: list[tuple[str, str]]) -> None:
    runs = " ".join(args for word, args in instrs if word == "RUN")
    assert re.search(r"/usr/bin/python3 -m venv --system-site-packages", runs), \
        "the venv must be made from Debian's python3 with system site-packages (bcc)"
    assert "--system-site-packages" in SETUP.read_text()
    assert re.search(r"pip install [^&]*\.", runs), "the project is not pip-installed"


def test_entrypoint_script_is_copied_executable_and_runs_sockmesh_run(
        instrs: list[tuple[str, str]]) -> None:
    entry = [exec_form(args) for word, args in instrs if word == "ENTRYPOINT"]
    assert len(entry) == 1, entry
    script, *command = entry[0]
    assert command == ["sockmesh", "run"], entry[0]
    sources = {dest: srcs for srcs, dest in copies(instrs)}
    assert script in sources, f"ENTRYPOINT {script} is not COPY'd into the image"
    (src,) = sources[script]
    path = ROOT / src
    assert path.is_file() and os.access(path, os.X_OK), f"{src} is not an executable file"
    assert path.read_text().startswith("#!/bin/sh"), f"{src} has no /bin/sh shebang"
    subprocess.run(["sh", "-n", str(path)], check=True)
    assert 'exec "$@"' in path.read_text(), f"{src} does not exec its arguments"
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert "sockmesh" in scripts, "pyproject installs no `sockmesh` console script"


def test_instruction_parser_sees_continuations() -> None:
    # the checks above are only as good as this parser
    parsed = instructions("FROM a\n# c\nRUN apt-get install -y \\\n  x \\\n  # note\n  y\n")
    assert parsed == [("FROM", "a"), ("RUN", "apt-get install -y x y")]
    assert apt_installed(parsed) == {"x", "y"}


def linter(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{path} missing: install the test extra (pip install -e '.[test]')"
    return str(path)


def test_dockerfile_passes_hadolint() -> None:
    # hadolint parses the Dockerfile as Docker does and runs ShellCheck on every RUN
    proc = subprocess.run([linter("hadolint"), "--no-color", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_entrypoint_passes_shellcheck() -> None:
    (src,) = [s for srcs, dest in copies(instructions(DOCKERFILE.read_text()))
              for s in srcs if dest == exec_form_entrypoint()[0]]
    proc = subprocess.run([linter("shellcheck"), "--shell=sh", str(ROOT / src)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
