"""The DaemonSet's capabilities are enough to load the datapath, and each one is needed.

The container runs as uid 0 with every capability dropped except the DaemonSet's
``capabilities.add``, on a read-only root filesystem; ``setpriv --bounding-set`` gives a
process exactly that set, a private mount namespace the read-only root.  The real datapath
(bcc compile, load, attach to a dedicated test cgroup, pin in bpffs, then detach) must load
so and fail without any one of the capabilities.  Not emulated here: the runtime's seccomp
and AppArmor profiles (see deploy/helm/sockmesh/values.yaml).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import deploy_render as dr
from tests.support.cgroup import pin_dir_for, sweep_leftovers
from tests.support.cgroup import test_cgroup as dedicated_cgroup

pytestmark = pytest.mark.kernel

LOAD = r"""
import errno, sys
from pathlib import Path
from bpf.datapath import Datapath
try:
    open("/sockmesh-read-only-probe", "w")
except OSError as exc:
    assert exc.errno == errno.EROFS, exc
else:
    sys.exit("the root filesystem is writable: the read-only root was not set up")
dp = Datapath(Path(sys.argv[1]), Path(sys.argv[2]))
try:
    dp.load()
finally:
    dp.close(detach=True)
print("datapath loaded")
"""


def daemonset_capabilities() -> list[str]:
    ds = next(o for o in dr.load_objects(dr.helm_template()) if o["kind"] == "DaemonSet")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    return list(caps["add"])


def load_with(caps: list[str]) -> subprocess.CompletedProcess[str]:
    """Load and unload the datapath as the container would: uid 0 with only ``caps`` and
    no_new_privs (allowPrivilegeEscalation: false), the root filesystem read-only
    (readOnlyRootFilesystem) and an empty tmpfs at /tmp (the emptyDir), in a private mount
    namespace; bpffs and cgroup v2 are their own mounts."""
    bounding = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    keep, restore = dr.keep_repo_visible("/mnt")
    pod = (f"{keep} && mount -t tmpfs sockmesh-test /tmp && {restore} && "
           "mount -o remount,bind,ro / && "
           'exec setpriv --no-new-privs --bounding-set="$0" --inh-caps=-all '
           '"$1" -c "$2" "$3" "$4"')
    with dedicated_cgroup() as cg:
        pin = pin_dir_for(cg)
        try:
            return subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", pod,
                 bounding, sys.executable, LOAD, str(cg), str(pin)],
                capture_output=True, text=True, timeout=300, cwd=dr.ROOT, check=False)
        finally:
            assert not pin.exists() or not any(pin.iterdir()), f"{pin} left behind"
            if pin.exists():
                pin.rmdir()


@pytest.fixture(scope="module")
def caps() -> list[str]:
    sweep_leftovers()
    return daemonset_capabilities()


def test_datapath_loads_with_the_daemonsets_capabilities(caps: list[str]) -> None:
    proc = load_with(caps)
    assert proc.returncode == 0 and "datapath loaded" in proc.stdout, (
        f"the datapath does not load with capabilities {caps}:\n{proc.stderr[-3000:]}")


def test_each_capability_is_needed(caps: list[str]) -> None:
    unneeded = []
    for cap in caps:
        proc = load_with([c for c in caps if c != cap])
        if proc.returncode == 0:
            unneeded.append(cap)
    assert not unneeded, f"the datapath loads without {unneeded}: drop them from the DaemonSet"


def test_bounding_set_really_limits(tmp_path: Path) -> None:
    # the two tests above mean something only if setpriv takes capabilities away from root
    proc = subprocess.run(["setpriv", "--bounding-set=-all,+syslog", "--inh-caps=-all",
                           "grep", "^CapEff", "/proc/self/status"],
                          capture_output=True, text=True, timeout=10, check=True)
    assert int(proc.stdout.split()[1], 16) == 1 << 34  # CAP_SYSLOG is bit 34
