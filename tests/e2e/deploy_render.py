"""Render deploy/ with the real engines: the Helm chart (helm template) and the kustomize base.

deploy/kubernetes/ holds the chart rendered with its default values, one file per template,
so kustomize users and Helm users deploy the same objects.  Regenerate it after changing
the chart (never edit those files by hand):

    .venv/bin/python -m tests.e2e.deploy_render --write

helm and kustomize are built at pinned versions by scripts/setup.sh into .cache/tools/.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "sockmesh"
TEST_VALUES = ROOT / "deploy" / "helm" / "values-test.yaml"
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
TOOLS = ROOT / ".cache" / "tools" / "bin"
SETUP = ROOT / "scripts" / "setup.sh"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# the release the kustomize base is rendered as
RELEASE = "sockmesh"
NAMESPACE = "sockmesh-system"
# files in deploy/kubernetes that are not rendered from the chart
HAND_WRITTEN = {"kustomization.yaml", "namespace.yaml"}
GENERATED_HEADER = (
    "# Generated from deploy/helm/sockmesh (default values, release {release}, namespace "
    "{namespace})\n# by `python -m tests.e2e.deploy_render --write`: edit the chart, not this "
    "file.\n"
)


class ToolMissing(RuntimeError):
    """helm or kustomize has not been built by scripts/setup.sh."""


def pinned_version(name: str) -> str:
    """The version scripts/setup.sh pins for ``name`` (HELM_VERSION=..., KUSTOMIZE_VERSION=...)."""
    m = re.search(rf'^{name.upper()}_VERSION="([^"]+)"', SETUP.read_text(), re.MULTILINE)
    if m is None:
        raise AssertionError(f"scripts/setup.sh pins no {name.upper()}_VERSION")
    return m.group(1)


def tool(name: str) -> Path:
    """The pinned build of ``name`` under .cache/tools (raises ToolMissing)."""
    path = TOOLS / name
    if not path.exists():
        raise ToolMissing(f"{path} does not exist: run scripts/setup.sh, which builds "
                          f"{name} {pinned_version(name)} from its Go module")
    return path


def run_tool(argv: list[str | Path], timeout: float = 120) -> str:
    """Run a tool; raise with its stderr when it fails."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                             f"{proc.stderr}{proc.stdout}")
    return proc.stdout


def helm_template(values: Path | None = None, *, release: str = RELEASE,
                  namespace: str = NAMESPACE, kube_version: str | None = None,
                  set_values: tuple[str, ...] = ()) -> str:
    """``helm template`` of the chart, as text (for the chart's minimum Kubernetes by default:
    helm built from its module assumes 1.20 otherwise)."""
    argv: list[str | Path] = [tool("helm"), "template", release, CHART, "--namespace", namespace,
                              "--kube-version", kube_version or min_kube_version()]
    if values is not None:
        argv += ["--values", values]
    for sv in set_values:
        argv += ["--set", sv]
    return run_tool(argv)


def kustomize_build(directory: Path = KUSTOMIZE_DIR) -> str:
    """``kustomize build`` of a directory, as text."""
    return run_tool([tool("kustomize"), "build", directory])


def load_objects(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document in ``text``."""
    return [d for d in yaml.safe_load_all(text) if d]


def split_by_source(text: str) -> dict[str, str]:
    """helm template output split into {template file name: its rendered YAML}."""
    out: dict[str, str] = {}
    for chunk in re.split(r"^---\n", text, flags=re.MULTILINE):
        m = re.match(r"# Source: [^\n]*/templates/([^\n/]+)\n", chunk)
        if m is None:
            if chunk.strip():
                raise AssertionError(f"helm output without a Source line: {chunk[:200]!r}")
            continue
        out[m.group(1)] = chunk[m.end():]
    return out


def expected_kustomize_files(kube_version: str | None = None) -> dict[str, str]:
    """What deploy/kubernetes/<template>.yaml must contain."""
    header = GENERATED_HEADER.format(release=RELEASE, namespace=NAMESPACE)
    rendered = split_by_source(helm_template(kube_version=kube_version))
    return {name: header + body for name, body in rendered.items()}


def generated_files_on_disk() -> dict[str, str]:
    """The rendered files currently in deploy/kubernetes."""
    return {p.name: p.read_text() for p in sorted(KUSTOMIZE_DIR.glob("*.yaml"))
            if p.name not in HAND_WRITTEN}


def min_kube_version() -> str:
    """The chart's minimum Kubernetes version (Chart.yaml kubeVersion ">=X.Y.Z-0")."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    m = re.match(r">=\s*(\d+\.\d+\.\d+)", chart["kubeVersion"])
    if m is None:
        raise AssertionError(f"Chart.yaml kubeVersion {chart['kubeVersion']!r} has no minimum")
    return m.group(1)


def write_kustomize_base() -> list[Path]:
    """Re-render deploy/kubernetes from the chart; returns the files written or removed."""
    expected = expected_kustomize_files()
    changed: list[Path] = []
    for name, text in generated_files_on_disk().items():
        if name not in expected:
            (KUSTOMIZE_DIR / name).unlink()
            changed.append(KUSTOMIZE_DIR / name)
    for name, text in expected.items():
        path = KUSTOMIZE_DIR / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


# ---- deploy/Dockerfile ----------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1].rstrip() + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    if buf:
        raise AssertionError(f"Dockerfile ends inside a continued line: {buf!r}")
    return out


def exec_form(args: str) -> list[str]:
    """An instruction's JSON (exec) form."""
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise AssertionError(f"not an exec-form (JSON list) instruction: {args}")
    return value


def entrypoint() -> list[str]:
    """deploy/Dockerfile's ENTRYPOINT."""
    entries = [exec_form(a) for w, a in instructions(DOCKERFILE.read_text()) if w == "ENTRYPOINT"]
    if len(entries) != 1:
        raise AssertionError(f"deploy/Dockerfile has {len(entries)} ENTRYPOINT instructions")
    return entries[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true",
                        help="re-render deploy/kubernetes from the chart")
    args = parser.parse_args(argv)
    if not args.write:
        parser.print_help()
        return 2
    for path in write_kustomize_base():
        print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def keep_repo_visible(stash: str) -> tuple[str, str]:
    """Shell commands that keep the checkout reachable across the pod-shaped tmpfs mounts.

    A checkout may live under a path the pod layout covers with an emptyDir (CI clones
    into a temporary folder, for example under /tmp).  The first command binds the checkout
    at ``stash`` before the tmpfs mounts; the second binds it back at its own path if a
    tmpfs hid it.  Both act only inside the test's private mount namespace.
    """
    root = shlex.quote(str(ROOT))
    before = f"mkdir -p {stash} && mount --bind {root} {stash}"
    after = (f"{{ [ -e {root}/pyproject.toml ] || "
             f"{{ mkdir -p {root} && mount --bind {stash} {root}; }}; }}")
    return before, after
