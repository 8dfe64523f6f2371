"""Istio bootstrap: the node identity, metadata, credentials and server istio-agent would use.

istio-agent builds the sidecar's Node from the pod environment the injector sets
(``POD_NAME``, ``POD_NAMESPACE``, ``INSTANCE_IP``, ``SERVICE_ACCOUNT``, ``ISTIO_META_*``) and
talks to istiod on 15012 over TLS, verifying istiod against the mesh root certificate and
presenting the projected service-account token as a bearer token; 15010 is istiod's
plaintext port.  This module reproduces that so ``sockmesh run --istio`` needs no flags in a
pod spec, and names exactly what is missing when it is run elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2

from xds_client import istio_node

# where istio-agent looks, in its order of preference
TOKEN_FILES = (
    "/var/run/secrets/tokens/istio-token",  # projected token, audience istio-ca
    "/var/run/secrets/kubernetes.io/serviceaccount/token",  # legacy service-account token
)
ROOT_CERT_FILES = (
    "/var/run/secrets/istio/root-cert.pem",  # istio-ca-root-cert ConfigMap mount
    "./etc/certs/root-cert.pem",
)
DEFAULT_ISTIOD_TLS = "istiod.istio-system.svc:15012"
DEFAULT_ISTIOD_PLAINTEXT = "istiod.istio-system.svc:15010"
ISTIOD_SAN = "istiod.istio-system.svc"

# environment variables whose presence means "this runs in an Istio pod"
ISTIO_ENV = ("POD_NAME", "POD_NAMESPACE", "INSTANCE_IP")


class IstioConfigError(ValueError):
    """The environment does not say enough to build an Istio identity."""


@dataclass(frozen=True)
class IstioBootstrap:
    """Everything ``sockmesh run`` needs to talk to istiod like istio-agent."""

    node: base_pb2.Node
    server: str
    ca_file: str | None
    token_file: str | None
    server_name: str | None


def istio_env_present(env: Mapping[str, str] | None = None) -> bool:
    """True when the pod environment istio's injector sets is there."""
    env = os.environ if env is None else env
    return any(k in env for k in ISTIO_ENV) or any(k.startswith("ISTIO_META_") for k in env)


def _first_existing(paths: tuple[str, ...]) -> str | None:
    for p in paths:
        if Path(p).is_file():
            return p
    return None


def _meta_value(raw: str) -> Any:
    # istio-agent passes ISTIO_META_* through as strings, except JSON-looking LABELS etc.
    if raw[:1] in "{[":
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def istio_bootstrap(
    env: Mapping[str, str] | None = None,
    *,
    server: str | None = None,
    plaintext: bool = False,
    ca_file: str | None = None,
    token_file: str | None = None,
) -> IstioBootstrap:
    """Build the Node and connection settings from the environment (or ``env``).

    Raises IstioConfigError naming the variable or file that is missing.
    """
    env = os.environ if env is None else env
    pod = env.get("POD_NAME") or socket.gethostname()
    namespace = env.get("POD_NAMESPACE")
    if not namespace:
        raise IstioConfigError("POD_NAMESPACE is not set (istio mode needs the pod's namespace)")
    ip = env.get("INSTANCE_IP")
    if not ip:
        raise IstioConfigError("INSTANCE_IP is not set (istio mode needs the pod's IP)")
    extra: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for key, raw in env.items():
        if not key.startswith("ISTIO_META_"):
            continue
        name = key[len("ISTIO_META_"):]
        value = _meta_value(raw)
        if name == "LABELS" and isinstance(value, dict):
            labels = {str(k): str(v) for k, v in value.items()}
        else:
            extra[name] = value
    kw: dict[str, Any] = {}
    if "CLUSTER_ID" in extra:
        kw["cluster_id"] = str(extra.pop("CLUSTER_ID"))
    if "MESH_ID" in extra:
        kw["mesh_id"] = str(extra.pop("MESH_ID"))
    if "ISTIO_VERSION" in extra:
        kw["istio_version"] = str(extra.pop("ISTIO_VERSION"))
    if "WORKLOAD_NAME" in extra:
        kw["workload_name"] = str(extra.pop("WORKLOAD_NAME"))
    node = istio_node(
        ip, pod, namespace, labels=labels,
        instance_ips=(env.get("INSTANCE_IPS") or ip).split(","),
        service_account=env.get("SERVICE_ACCOUNT"),
        extra_metadata=extra or None, **kw,
    )
    if plaintext:
        return IstioBootstrap(node, server or env.get("DISCOVERY_ADDRESS_PLAINTEXT")
                              or DEFAULT_ISTIOD_PLAINTEXT, None, token_file, None)
    ca = ca_file or _first_existing(ROOT_CERT_FILES)
    if ca is None:
        raise IstioConfigError(
            "no mesh root certificate (looked for " + ", ".join(ROOT_CERT_FILES)
            + "); give --ca-file, or --plaintext for istiod's port 15010")
    token = token_file or _first_existing(TOKEN_FILES)
    if token is None:
        raise IstioConfigError(
            "no service-account token (looked for " + ", ".join(TOKEN_FILES)
            + "); give --token-file")
    addr = server or env.get("DISCOVERY_ADDRESS") or DEFAULT_ISTIOD_TLS
    return IstioBootstrap(node, addr, ca, token, ISTIOD_SAN)
