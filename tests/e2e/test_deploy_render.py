"""deploy/ rendered by the real engines and checked against the API and the agent.

- helm (pinned, built by scripts/setup.sh) renders the chart with its default values and with
  deploy/helm/values-test.yaml, for the chart's minimum Kubernetes version and the newest
  one the schema package knows; kustomize builds deploy/kubernetes.
- Every object is validated (strict: unknown fields fail) against the Kubernetes API schemas
  bundled in the kubernetes-validate package; nothing is downloaded.
- What a schema cannot see is checked across objects: mounts name volumes, env names
  ConfigMap keys that exist, probes name the metrics port, the scrape port is it.
- deploy/kubernetes is the chart rendered with defaults, and kustomize builds exactly that.
- The DaemonSet's command line is parsed by the agent's own parser (integration.cli) and turned
  into the agent's configuration by ``sockmesh run``'s own code, in a private mount namespace
  laid out like the pod (emptyDir at /sys/fs/cgroup, the node's cgroup tree under it), with
  the environment the kubelet would give it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from tests.e2e import deploy_render as dr
from tests.support.cgroup import test_cgroup as dedicated_cgroup

RENDERS = ("helm-default", "helm-test-values", "helm-revisioned-istiod", "kustomize")
# a revisioned istiod over TLS: the TLS branch with every istiod setting away from its default
REVISIONED = ("istiod.address=istiod-1-29.istio-system.svc:15012",
              "istiod.serverName=istiod-1-29.istio-system.svc",
              "istiod.rootCertConfigMap=istio-ca-root-cert-1-29",
              "istiod.tokenExpirationSeconds=3600")
KUBE_VERSIONS = (dr.min_kube_version(), latest_version())
# what the kubelet would put into fieldRef env: a documentation address for the pod's (with
# hostNetwork: the node's) IP and a generated pod name
POD_IP = "127.0.0.10"  # loopback: the pod-run test binds the splice listener on it
POD_SUFFIX = "x7k2q"
RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def render(name: str, kube_version: str | None = None) -> list[dict[str, Any]]:
    kv = kube_version or dr.min_kube_version()
    if name == "helm-default":
        return dr.load_objects(dr.helm_template(kube_version=kv))
    if name == "helm-test-values":
        return dr.load_objects(dr.helm_template(dr.TEST_VALUES, release="t",
                                                namespace="mesh-agents", kube_version=kv))
    if name == "helm-revisioned-istiod":
        return dr.load_objects(dr.helm_template(kube_version=kv, set_values=REVISIONED))
    if name == "kustomize":
        return dr.load_objects(dr.kustomize_build())
    raise ValueError(name)


_cache: dict[tuple[str, str | None], list[dict[str, Any]]] = {}


def rendered(name: str, kube_version: str | None = None) -> list[dict[str, Any]]:
    key = (name, kube_version)
    if key not in _cache:
        _cache[key] = render(name, kube_version)
    return _cache[key]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def by_name(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert found, f"no {kind} named {name}"
    return found[0]


# ---- the tools -----------------------------------------------------------------------------


def test_tools_are_the_pinned_builds() -> None:
    helm = dr.run_tool([dr.tool("helm"), "version", "--template", "{{.Version}}"]).strip()
    assert helm == dr.pinned_version("helm")
    kustomize = dr.run_tool([dr.tool("kustomize"), "version"]).strip()
    assert kustomize == dr.pinned_version("kustomize")


@pytest.mark.parametrize("values", [None, dr.TEST_VALUES], ids=["default", "test-values"])
def test_helm_lint_strict(values: Path | None) -> None:
    argv: list[str | Path] = [dr.tool("helm"), "lint", "--strict", dr.CHART,
                              "--kube-version", dr.min_kube_version()]
    if values is not None:
        argv += ["--values", values]
    out = dr.run_tool(argv)
    assert "0 chart(s) failed" in out, out


def test_chart_refuses_kubernetes_below_its_minimum() -> None:
    # kubeVersion is what makes the schema check at the minimum version meaningful
    major, minor, _ = dr.min_kube_version().split(".")
    with pytest.raises(AssertionError, match="kubeVersion"):
        dr.helm_template(kube_version=f"{major}.{int(minor) - 1}.0")


@pytest.mark.parametrize("bad", ["istiod.tsl=false", "metrics.port=http",
                                 "cgroup.attach=null", "pinDir=/tmp/sockmesh",
                                 "securityContext.seccompProfile=unconfined"])
def test_chart_rejects_misspelled_or_mistyped_values(bad: str) -> None:
    # values.schema.json: a setting helm would otherwise ignore or render wrongly fails
    with pytest.raises(AssertionError, match="schema"):
        dr.helm_template(set_values=(bad,))


# ---- schemas -------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", RENDERS)
def test_every_object_validates_against_the_api_schema(name: str, kube_version: str) -> None:
    objs = rendered(name, kube_version if name != "kustomize" else None)
    assert {o["kind"] for o in objs} >= {"ServiceAccount", "ConfigMap", "DaemonSet"}
    for obj in objs:
        what = f"{obj['kind']}/{obj['metadata']['name']} ({name}, Kubernetes {kube_version})"
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{what}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            pytest.fail(f"{what}: {exc.message}")


def test_schema_validation_can_fail() -> None:
    # the check above must reject what the API server would reject
    ds = json.loads(json.dumps(one(rendered("helm-default"), "DaemonSet")))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, KUBE_VERSIONS[0], strict=True)
    ds = json.loads(json.dumps(one(rendered("helm-default"), "DaemonSet")))
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "15090"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, KUBE_VERSIONS[0], strict=True)


# ---- kustomize base == chart defaults -------------------------------------------------------


def test_kustomize_base_is_the_chart_rendered_with_defaults() -> None:
    expected = dr.expected_kustomize_files(kube_version=dr.min_kube_version())
    on_disk = dr.generated_files_on_disk()
    stale = sorted(n for n in expected.keys() | on_disk.keys()
                   if expected.get(n) != on_disk.get(n))
    assert not stale, (f"deploy/kubernetes/{stale} differ from the chart's default rendering: "
                       "run `.venv/bin/python -m tests.e2e.deploy_render --write`")


def test_kustomize_build_is_the_helm_default_plus_the_namespace() -> None:
    helm = rendered("helm-default")
    kust = rendered("kustomize")
    ns = one(kust, "Namespace")
    assert ns["metadata"]["name"] == dr.NAMESPACE
    assert ns["metadata"]["labels"]["istio-injection"] == "disabled"

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    rest = sorted((o for o in kust if o["kind"] != "Namespace"), key=key)
    assert rest == sorted(helm, key=key)


# ---- what the schema cannot see -------------------------------------------------------------


def containers(ds: dict[str, Any]) -> list[dict[str, Any]]:
    return ds["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", RENDERS)
def test_references_between_objects_resolve(name: str) -> None:
    objs = rendered(name)
    ds = one(objs, "DaemonSet")
    ns = ds["metadata"]["namespace"]
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == ns, f"{o['kind']} in another namespace"
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    # the selector picks the template's own pods
    for k, v in ds["spec"]["selector"]["matchLabels"].items():
        assert pod["metadata"]["labels"].get(k) == v, k
    by_name(objs, "ServiceAccount", spec["serviceAccountName"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert len(volumes) == len(spec["volumes"]), "duplicate volume names"
    for c in containers(ds):
        mounts = [m["name"] for m in c.get("volumeMounts", [])]
        assert set(mounts) <= volumes.keys(), set(mounts) - volumes.keys()
        paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
        assert len(paths) == len(set(paths)), "two volumes at one mount path"
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                cm = by_name(objs, "ConfigMap", ref["name"])
                assert ref["key"] in cm["data"], f"ConfigMap {ref['name']} has no {ref['key']}"
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in c, f"{c['name']} has no {probe}"
            port = c[probe]["httpGet"]["port"]
            assert port in ports or port in ports.values(), f"{probe} port {port} is not exposed"
    # a volume nobody mounts is a mistake waiting to be copied
    mounted = {m["name"] for c in containers(ds) for m in c.get("volumeMounts", [])}
    assert mounted == volumes.keys(), volumes.keys() - mounted
    ann = pod["metadata"].get("annotations", {})
    assert ann.get("sidecar.istio.io/inject") == "false"
    if ann.get("prometheus.io/scrape") == "true":
        exposed = {p["containerPort"] for c in containers(ds) for p in c.get("ports", [])}
        assert int(ann["prometheus.io/port"]) in exposed


@pytest.mark.parametrize("name", RENDERS)
def test_least_privilege(name: str) -> None:
    objs = rendered(name)
    assert not RBAC_KINDS & {o["kind"] for o in objs}, "the agent calls no Kubernetes API"
    ds = one(objs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert by_name(objs, "ServiceAccount", spec["serviceAccountName"])[
        "automountServiceAccountToken"] is False
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    for c in containers(ds):
        sc = c["securityContext"]
        assert sc["privileged"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["allowPrivilegeEscalation"] is False  # the agent tests run with no_new_privs
        for m in c["volumeMounts"]:
            vol = next(v for v in spec["volumes"] if v["name"] == m["name"])
            if "hostPath" in vol and vol["hostPath"]["path"] != "/sys/fs/bpf":
                assert m.get("readOnly") is True, f"host {vol['hostPath']['path']} is writable"


# ---- the agent accepts the command line ------------------------------------------------------


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of command/args/env values ($$ is a literal $)."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i + 2:]:
            j = text.index(")", i + 2)
            out.append(env.get(text[i + 2:j], text[i:j + 1]))
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def pod_env(objs: list[dict[str, Any]], ds: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet gives container ``c`` of the DaemonSet's pod."""
    spec = ds["spec"]["template"]["spec"]
    fields = {
        "metadata.name": f"{ds['metadata']['name']}-{POD_SUFFIX}",
        "metadata.namespace": ds["metadata"]["namespace"],
        "status.podIP": POD_IP,
        "status.hostIP": POD_IP,
        "spec.serviceAccountName": spec["serviceAccountName"],
        "spec.nodeName": "node-1",
    }
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        env.update(by_name(objs, "ConfigMap", src["configMapRef"]["name"])["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
            continue
        ref = e["valueFrom"]
        if "fieldRef" in ref:
            env[e["name"]] = fields[ref["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in ref:
            k = ref["configMapKeyRef"]
            env[e["name"]] = by_name(objs, "ConfigMap", k["name"])["data"][k["key"]]
        else:
            raise AssertionError(f"env {e['name']}: unhandled source {ref}")
    return env


PROBE = r"""
import importlib, json, os, sys
spec = json.load(sys.stdin)
os.environ.clear()
os.environ.update(spec["env"])
try:
    importlib.import_module("integration.commands.run")
except ModuleNotFoundError as exc:
    sys.exit(f"`sockmesh run` does not exist in this build: {exc}")
from integration.cli import build_parser
from integration.commands.run import build_config
from google.protobuf.json_format import MessageToDict
args = build_parser().parse_args(spec["argv"])  # argparse exits 2 with its message
try:
    cfg = build_config(args)
except ValueError as exc:
    sys.exit(f"sockmesh run rejects its configuration: {exc}")
print(json.dumps({
    "command": args.command, "server": cfg.server, "ca_file": cfg.ca_file,
    "token_file": cfg.token_file, "server_name": cfg.server_name,
    "cgroups": [str(p) for p in cfg.cgroups],
    "pin_dir": str(cfg.pin_dir), "admin_addr": list(cfg.admin_addr or []),
    "delta": cfg.delta, "datapath": cfg.datapath, "node": MessageToDict(cfg.node),
}))
"""


def mount_script(ds: dict[str, Any], c: dict[str, Any], node_cgroup: Path, stage: Path) -> str:
    """Shell commands laying out the container's cgroup and bpffs mounts in this namespace.

    emptyDir -> tmpfs; the node's cgroup v2 hostPath -> ``node_cgroup`` (a test cgroup
    standing in for the node's tree, first bound at ``stage`` because a tmpfs over
    /sys/fs/cgroup hides its real path); bpffs -> this machine's.  Other mounts (headers,
    credentials) do not affect the command line and are checked statically.
    """
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    lines = [f"mount --bind {node_cgroup} {stage}"]
    for m in sorted(c["volumeMounts"], key=lambda m: len(PurePosixPath(m["mountPath"]).parts)):
        path, vol = m["mountPath"], volumes[m["name"]]
        if not (path.startswith("/sys/fs/cgroup") or path == "/sys/fs/bpf"):
            continue
        if "emptyDir" in vol:
            lines.append(f"mount -t tmpfs sockmesh-test {path}")
        elif vol["hostPath"]["path"].startswith("/sys/fs/cgroup"):
            lines.append(f"mkdir -p {path} && mount --bind {stage} {path}")
        else:
            lines.append(f"mount --bind {vol['hostPath']['path']} {path}")
        if m.get("readOnly"):
            lines.append(f"mount -o remount,bind,ro {path}")
    return " && ".join(lines) or "true"


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["helm-default", "helm-test-values", "helm-revisioned-istiod"])
def test_daemonset_command_line_is_accepted_by_the_agent(name: str, tmp_path: Path) -> None:
    objs = rendered(name)
    ds = one(objs, "DaemonSet")
    (c,) = containers(ds)
    env = pod_env(objs, ds, c)
    argv = [expand(a, env) for a in c["command"] + c.get("args", [])]
    unresolved = [a for a in argv if "$(" in a]
    assert not unresolved, f"the kubelet would pass these literally: {unresolved}"
    assert c["command"] == dr.entrypoint(), "the DaemonSet's command is not the image's"
    assert argv[1:3] == ["sockmesh", "run"], argv

    # the node's cgroup tree: a dedicated test cgroup holding the cgroups the agent is told
    # to attach to (the kubelet creates them on a real node)
    cg_mount = next(m["mountPath"] for m in c["volumeMounts"]
                    if m["mountPath"].startswith("/sys/fs/cgroup") and "hostPath" in next(
                        v for v in ds["spec"]["template"]["spec"]["volumes"]
                        if v["name"] == m["name"]))
    attach = [PurePosixPath(a.split("=", 1)[1]) for a in argv if a.startswith("--cgroup=")]
    assert attach, "the agent is attached to no cgroup"
    with dedicated_cgroup() as node:
        made: list[Path] = []
        try:
            for a in attach:
                rel = a.relative_to(cg_mount)  # raises if outside the node's cgroup mount
                for i in range(1, len(rel.parts) + 1):
                    p = node.joinpath(*rel.parts[:i])
                    if not p.exists():
                        p.mkdir()
                        made.append(p)
            proc = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 mount_script(ds, c, node, tmp_path) + ' && exec "$0" -c "$1"',
                 sys.executable, PROBE],
                input=json.dumps({"argv": argv[2:], "env": env}), capture_output=True,
                text=True, timeout=60, cwd=dr.ROOT, check=False)
        finally:
            for p in reversed(made):
                p.rmdir()
    assert proc.returncode == 0, (f"sockmesh rejects the DaemonSet's command line "
                                  f"{argv}:\n{proc.stderr}")
    cfg = json.loads(proc.stdout)
    cm = one(objs, "ConfigMap")["data"]
    spec = ds["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    assert cfg["command"] == "run" and cfg["datapath"] is True
    assert cfg["server"] == cm["SOCKMESH_XDS_SERVER"]
    # istiod identifies the agent like a sidecar of its own pod
    ns = ds["metadata"]["namespace"]
    pod = f"{ds['metadata']['name']}-{POD_SUFFIX}"
    assert cfg["node"]["id"] == f"sidecar~{POD_IP}~{pod}.{ns}~{ns}.svc.cluster.local"
    meta = cfg["node"]["metadata"]
    assert meta["NAMESPACE"] == ns and meta["SERVICE_ACCOUNT"] == spec["serviceAccountName"]
    assert meta["CLUSTER_ID"] == cm["ISTIO_META_CLUSTER_ID"]
    # every file the agent will read is provided by a volume
    for f in (cfg["ca_file"], cfg["token_file"]):
        if f is None:
            continue
        path = PurePosixPath(f)
        m = mounts.get(str(path.parent))
        assert m is not None, f"{f}: no volume is mounted at {path.parent}"
        vol = volumes[m["name"]]
        if "configMap" in vol:
            provided = {i["path"] for i in vol["configMap"]["items"]}
        else:
            provided = {s["serviceAccountToken"]["path"] for s in vol["projected"]["sources"]
                        if "serviceAccountToken" in s}
        assert path.name in provided, f"{f}: volume {m['name']} does not provide {path.name}"
    if cfg["token_file"]:
        tok = next(s["serviceAccountToken"] for v in spec["volumes"] if "projected" in v
                   for s in v["projected"]["sources"] if "serviceAccountToken" in s)
        assert tok["audience"] == "istio-ca", "istiod accepts tokens for audience istio-ca"
        assert cfg["server"].endswith(":15012"), "TLS with a token goes to istiod's 15012"
        # istiod's certificate names its service: the default one, or the one asked for
        named = [a.split("=", 1)[1] for a in argv if a.startswith("--server-name=")]
        assert cfg["server_name"] == (named[0] if named else "istiod.istio-system.svc")
    else:
        assert cfg["ca_file"] is None and cfg["server"].endswith(":15010")
    # the pinned maps live on the node's bpffs
    bpffs = next(m for m in c["volumeMounts"]
                 if volumes[m["name"]].get("hostPath", {}).get("path") == "/sys/fs/bpf")
    assert PurePosixPath(bpffs["mountPath"]) in PurePosixPath(cfg["pin_dir"]).parents
    # probes and scraping reach the admin endpoint
    host, port = cfg["admin_addr"]
    exposed = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert exposed.get(get["port"], get["port"]) == port
        assert host in ("0.0.0.0", "::", get.get("host")), f"{probe} cannot reach {host}"
    ann = ds["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") == "true":
        assert int(ann["prometheus.io/port"]) == port and host in ("0.0.0.0", "::")


def test_the_docs_kustomize_overlay_builds_and_names_the_image(tmp_path: Path) -> None:
    # docs/istio.md tells kustomize users to write this overlay; build it as written
    doc = (dr.ROOT / "docs" / "istio.md").read_text()
    m = re.search(r"cat > overlays/sockmesh/kustomization.yaml <<'YAML'\n(.*?)\nYAML\n", doc,
                  re.DOTALL)
    assert m is not None, "docs/istio.md no longer shows the kustomize overlay"
    overlay = tmp_path / "overlays" / "sockmesh"
    overlay.mkdir(parents=True)
    base = os.path.relpath(dr.KUSTOMIZE_DIR, overlay)
    (overlay / "kustomization.yaml").write_text(m.group(1).replace("../../deploy/kubernetes", base))
    objs = dr.load_objects(dr.kustomize_build(overlay))
    images = {c["image"] for c in containers(one(objs, "DaemonSet"))}
    wanted = yaml.safe_load(m.group(1))["images"][0]
    assert images == {f"{wanted['newName']}:{wanted['newTag']}"}
    assert len(objs) == len(rendered("kustomize"))


def doc_helm_commands() -> list[list[str]]:
    """`helm install|upgrade ...` argument lists in docs/istio.md's code blocks."""
    from tests.unit.test_deploy_docs import code_blocks, command_lines

    out = []
    for block in code_blocks((dr.ROOT / "docs" / "istio.md").read_text()):
        for line in command_lines(block):
            words = shlex.split(line, comments=True)
            if words[:1] == ["helm"] and words[1:2] in (["install"], ["upgrade"]):
                out.append(words[1:])
    return out


@pytest.mark.parametrize("cmd", doc_helm_commands(), ids=lambda c: " ".join(c[:2]))
def test_the_docs_helm_commands_render(cmd: list[str]) -> None:
    # the documented install/upgrade, rendered offline: same release, chart and flags
    # (--reuse-values and --create-namespace only matter against a cluster)
    verb, release, chart, *flags = cmd
    flags = [f for f in flags if f not in ("--reuse-values", "--create-namespace")]
    assert (dr.ROOT / chart).resolve() == dr.CHART, f"docs {verb} a chart at {chart}"
    out = dr.run_tool([dr.tool("helm"), "template", release, dr.CHART, *flags,
                       "--kube-version", dr.min_kube_version()])
    ds = one(dr.load_objects(out), "DaemonSet")
    sets = [flags[i + 1] for i, f in enumerate(flags) if f in ("--set", "--set-string")]
    pod = ds["spec"]["template"]["spec"]
    for s in sets:
        key, value = s.split("=", 1)
        if key == "image.repository":
            assert containers(ds)[0]["image"].startswith(value + ":")
        elif key.startswith("nodeSelector."):
            label = key[len("nodeSelector."):].replace("\\.", ".")
            assert pod["nodeSelector"].get(label) == value, pod["nodeSelector"]
