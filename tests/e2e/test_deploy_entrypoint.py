"""deploy/entrypoint.sh run for real, in a private mount namespace laid out like the pod.

The DaemonSet gives the container an emptyDir at /lib/modules and the node's /lib/modules
and /usr/src read-only under /host.  Each case builds such a node tree in a temporary
directory, mounts a tmpfs over /lib/modules (the emptyDir; the machine's own stays
untouched), runs the entrypoint with a command that prints where the kernel-header links
point, and checks the choice: the node's headers when it has them (Debian and Ubuntu
layouts, absolute host symlinks), else the image's linux-headers-amd64 tree, else a clear
error; and a clear error when bpffs is not mounted.  Needs root (unshare --mount).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
KREL = platform.release()
BPFFS = Path("/sys/fs/bpf")

pytestmark = pytest.mark.kernel

PRINT_LINKS = (f'readlink /lib/modules/{KREL}/build; readlink /lib/modules/{KREL}/source')


def run_entrypoint(host: Path, *, bpffs: Path = BPFFS, hide_usr_src: bool = False,
                   command: str = PRINT_LINKS) -> subprocess.CompletedProcess[str]:
    """Run the entrypoint in a private mount namespace with /lib/modules as an empty tmpfs."""
    setup = "mount -t tmpfs sockmesh-test /lib/modules"
    if hide_usr_src:  # an image without linux-headers-amd64
        setup += " && mount -t tmpfs sockmesh-test /usr/src"
    script = f'{setup} && exec sh "$0" sh -c "$1"'
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "SOCKMESH_HOST_MODULES": str(host / "lib" / "modules"),
           "SOCKMESH_HOST_SRC": str(host / "usr" / "src"),
           "SOCKMESH_BPFFS": str(bpffs)}
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
         str(ENTRYPOINT), command],
        capture_output=True, text=True, timeout=30, env=env, check=False)


def make_tree(host: Path, name: str, *, generated: bool = True) -> Path:
    tree = host / "usr" / "src" / name
    (tree / "include" / ("generated" if generated else "linux")).mkdir(parents=True)
    return tree


def test_node_headers_debian_layout_absolute_links(tmp_path: Path) -> None:
    # Debian: build -> /usr/src/linux-headers-K-amd64, source -> ...-common, absolute paths
    # in the node's namespace that only resolve under the /host mounts
    arch = make_tree(tmp_path, f"linux-headers-{KREL}-amd64")
    common = make_tree(tmp_path, f"linux-headers-{KREL}-common", generated=False)
    mods = tmp_path / "lib" / "modules" / KREL
    mods.mkdir(parents=True)
    (mods / "build").symlink_to(f"/usr/src/{arch.name}")
    (mods / "source").symlink_to(f"/usr/src/{common.name}")
    proc = run_entrypoint(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(arch), str(common)], proc.stdout + proc.stderr
    assert "the node's" in proc.stderr


def test_node_headers_single_tree_without_source_link(tmp_path: Path) -> None:
    # Ubuntu and most others: one tree, only a build link
    tree = make_tree(tmp_path, f"linux-headers-{KREL}")
    mods = tmp_path / "lib" / "modules" / KREL
    mods.mkdir(parents=True)
    (mods / "build").symlink_to(f"/usr/src/{tree.name}")
    proc = run_entrypoint(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tree), str(tree)], proc.stdout + proc.stderr


def test_falls_back_to_the_image_headers_like_setup(tmp_path: Path) -> None:
    # the node has no headers for its kernel: the installed linux-headers-*-amd64 tree
    # (here: the one scripts/setup.sh installed on this machine) is linked, as setup.sh does
    (tmp_path / "lib" / "modules").mkdir(parents=True)
    installed = sorted(Path("/usr/src").glob("linux-headers-*-amd64"))
    assert installed, "scripts/setup.sh installs linux-headers-amd64; none under /usr/src"
    newest = max(installed, key=lambda p: [int(x) if x.isdigit() else x
                                           for x in p.name.replace("-", ".").split(".")])
    common = Path(str(newest)[: -len("-amd64")] + "-common")
    proc = run_entrypoint(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(newest), str(common)], proc.stdout + proc.stderr
    assert "using the image's" in proc.stderr


def test_no_headers_anywhere_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "lib" / "modules").mkdir(parents=True)
    proc = run_entrypoint(tmp_path, hide_usr_src=True, command="echo started")
    assert proc.returncode == 1
    assert "started" not in proc.stdout
    assert "no kernel headers" in proc.stderr


def test_bpffs_not_mounted_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, f"linux-headers-{KREL}")
    mods = tmp_path / "lib" / "modules" / KREL
    mods.mkdir(parents=True)
    (mods / "build").symlink_to(f"/usr/src/linux-headers-{KREL}")
    not_bpffs = tmp_path / "bpf"
    not_bpffs.mkdir()
    proc = run_entrypoint(tmp_path, bpffs=not_bpffs, command="echo started")
    assert proc.returncode == 1
    assert "started" not in proc.stdout
    assert "not a bpffs mount" in proc.stderr
