"""The DaemonSet's agent started the way the kubelet would start it, short of a container.

The chart is rendered (plaintext istiod pointed at an embedded xDS server on loopback, admin
endpoint on a loopback port, pins in a test directory) and its container is run:

- in a private mount namespace shaped like the pod: an emptyDir at /sys/fs/cgroup with the
  "node's" cgroup tree (a dedicated test cgroup holding kubepods.slice) read-only at
  /sys/fs/cgroup/unified, the node's kernel headers read-only in a separate directory, an
  emptyDir at /lib/modules and /tmp, and the root filesystem read-only;
- as uid 0 with only the DaemonSet's capabilities (and no_new_privs, as
  allowPrivilegeEscalation: false gives it);
- with the environment the kubelet would give it, and the DaemonSet's command line (the
  entrypoint script, then `sockmesh run` with the rendered flags).

The kubelet's readiness probe must then succeed, the agent must be connected to the xDS
server with its datapath loaded on the cgroup the DaemonSet names, and SIGTERM must stop it
cleanly, detaching and unpinning.  Not covered: the image itself (Docker does not run here).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.e2e import deploy_render as dr
from tests.e2e.test_deploy_render import containers, expand, one, pod_env
from tests.support.cgroup import PREFIX, sweep_leftovers
from tests.support.cgroup import test_cgroup as dedicated_cgroup

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]

XDS_CONFIG = """\
- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: backend
  type: EDS
  connect_timeout: 1s
  eds_cluster_config: {eds_config: {ads: {}}}
- '@type': type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: backend
  endpoints:
    - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}
"""


# capability numbers (linux/capability.h) of the names a DaemonSet may add
CAP_BITS = {"NET_ADMIN": 12, "SYS_ADMIN": 21, "SYSLOG": 34, "PERFMON": 38, "BPF": 39}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_xds_server(config_dir: Path, log: Path) -> tuple[subprocess.Popen[str], int]:
    with log.open("w") as err:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "sockmesh"), "xds-server", "--config",
             str(config_dir), "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if m is None:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"xds-server did not start: {line}{log.read_text()}")
    return proc, int(m.group(1))


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read()


def pod_script(ds: dict[str, Any], c: dict[str, Any]) -> str:
    """Mount commands that give this namespace the pod's filesystem layout.

    The node's trees are first bound under a tmpfs at /mnt (the tmpfs mounts below hide
    their real paths); the entrypoint is told where they are with its SOCKMESH_HOST_*
    variables (the pod has them at /host/...).
    """
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    cmds = ["mount -t tmpfs sockmesh-test /mnt",
            "mkdir /mnt/cg /mnt/lib-modules /mnt/usr-src",
            'mount --bind "$NODE_CGROUP" /mnt/cg',
            "mount --bind /lib/modules /mnt/lib-modules",
            "mount -o remount,bind,ro /mnt/lib-modules",
            "mount --bind /usr/src /mnt/usr-src",
            "mount -o remount,bind,ro /mnt/usr-src"]
    keep, restore = dr.keep_repo_visible("/mnt/repo")
    cmds.append(keep)
    for m in sorted(c["volumeMounts"], key=lambda m: len(PurePosixPath(m["mountPath"]).parts)):
        path, vol = m["mountPath"], volumes[m["name"]]
        if "emptyDir" in vol:
            cmds.append(f"mkdir -p {path} && mount -t tmpfs sockmesh-test {path}")
        elif vol.get("hostPath", {}).get("path", "").startswith("/sys/fs/cgroup"):
            cmds.append(f"mkdir -p {path} && mount --bind /mnt/cg {path}")
        else:
            continue  # bpffs is this machine's; headers come from /mnt; no credentials (plaintext)
        if m.get("readOnly"):
            cmds.append(f"mount -o remount,bind,ro {path}")
    cmds.append(restore)
    cmds.append("mount -o remount,bind,ro /")
    return " && ".join(cmds)


def test_the_daemonsets_agent_starts_becomes_ready_and_stops_cleanly(tmp_path: Path) -> None:
    sweep_leftovers()
    config = tmp_path / "xds"
    config.mkdir()
    (config / "cluster.yaml").write_text(XDS_CONFIG)
    xds, xds_port = start_xds_server(config, tmp_path / "xds-server.log")
    agent_log = tmp_path / "agent.log"
    admin_port = free_port()
    pin_name = f"{PREFIX}{os.getpid()}-pod"
    objs = dr.load_objects(dr.helm_template(set_values=(
        "istiod.tls=false", f"istiod.address=127.0.0.1:{xds_port}",
        "metrics.bindAddress=127.0.0.1", f"metrics.port={admin_port}",
        f"pinDir=/sys/fs/bpf/{pin_name}")))
    ds = one(objs, "DaemonSet")
    (c,) = containers(ds)
    env = pod_env(objs, ds, c)
    argv = [expand(a, env) for a in c["command"] + c.get("args", [])]
    assert argv[0] == dr.entrypoint()[0]
    # the image has the entrypoint at argv[0]; here it is run from the source tree
    argv[0] = str(dr.ROOT / "deploy" / "entrypoint.sh")
    caps = c["securityContext"]["capabilities"]["add"]
    bounding = ",".join(["-all"] + [f"+{x.lower()}" for x in caps])
    attach = [PurePosixPath(a.split("=", 1)[1]) for a in argv if a.startswith("--cgroup=")]
    run_env = {**env, "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
               "SOCKMESH_HOST_MODULES": "/mnt/lib-modules", "SOCKMESH_HOST_SRC": "/mnt/usr-src"}
    pin = Path("/sys/fs/bpf") / pin_name
    agent = None
    try:
        with dedicated_cgroup() as node:
            made = []
            for a in attach:  # the kubelet's cgroups on the "node"
                p = node / a.relative_to("/sys/fs/cgroup/unified")
                p.mkdir(parents=True)
                made.append(p)
            nnp = "--no-new-privs " if c["securityContext"]["allowPrivilegeEscalation"] is False \
                else ""
            script = (pod_script(ds, c) + f' && exec setpriv {nnp}--bounding-set="$0" '
                      '--inh-caps=-all "$@"')
            with agent_log.open("w") as out:
                agent = subprocess.Popen(
                    ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                     bounding, *argv],
                    env={**run_env, "NODE_CGROUP": str(node)}, cwd="/",
                    stdout=out, stderr=subprocess.STDOUT, text=True)
            try:
                probe = c["readinessProbe"]["httpGet"]
                url = f"http://{probe.get('host', '127.0.0.1')}:{admin_port}{probe['path']}"
                deadline = time.monotonic() + 120
                status: dict[str, Any] = {}
                while time.monotonic() < deadline:
                    if agent.poll() is not None:
                        break
                    try:
                        code, _ = http_get(url)
                        _, body = http_get(f"http://127.0.0.1:{admin_port}/status")
                        status = json.loads(body)
                        if code == 200 and status["xds"]["connected"] and status["xds"]["acks"]:
                            break
                    except OSError:
                        pass
                    time.sleep(0.5)
                assert agent.poll() is None, f"the agent exited {agent.returncode}"
                # the process serving is the agent itself, with the pod's privileges
                proc_status = Path(f"/proc/{agent.pid}/status").read_text()
                fields = dict(line.split(":\t", 1) for line in proc_status.splitlines()
                              if ":\t" in line)
                assert "sockmesh" in Path(f"/proc/{agent.pid}/cmdline").read_text()
                assert int(fields["CapEff"], 16) == sum(1 << CAP_BITS[x] for x in caps)
                assert fields["NoNewPrivs"].strip() == ("1" if nnp else "0")
                assert status, "the readiness probe never answered"
                assert status["xds"]["connected"], status["xds"]
                assert status["xds"]["server"] == f"127.0.0.1:{xds_port}"
                dp = status["datapath"]
                assert dp["loaded"], f"datapath not loaded in the pod: {dp['error']}"
                assert dp["cgroups"] == [str(a) for a in attach]
                assert dp["pin_dir"] == str(pin) and pin.is_dir()
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=30)
                assert agent.returncode == 0
                assert not pin.exists(), f"{pin} still pinned after SIGTERM"
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait(10)
                for p in reversed(made):
                    for _ in range(100):
                        try:
                            p.rmdir()
                            break
                        except OSError:
                            time.sleep(0.05)
    except AssertionError as exc:
        log = agent_log.read_text() if agent_log.exists() else ""
        raise AssertionError(f"{exc}\nagent output:\n{log[-4000:]}") from exc
    finally:
        xds.terminate()
        xds.wait(10)
        if pin.exists():
            subprocess.run(["rm", "-rf", str(pin)], check=False)
