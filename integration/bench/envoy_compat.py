"""Make Istio-generated config loadable by Envoy 1.40.

Configs written for (or by) older Envoys name some extensions by ``name`` alone; Envoy 1.40
wants their ``typed_config``.  The change adds the typed_config of that same extension, so
it never affects which route, cluster or endpoint is chosen.  It covers route configs and
clusters alike; ``sockmesh ab``, ``sockmesh bench`` and tests/diff all use this one.

:func:`referenced_clusters` lists the clusters a route config names, so the Envoy that
serves it can be given exactly those.
"""

from __future__ import annotations

from typing import Any

EXTENSION_TYPES = {
    "envoy.retry_host_predicates.previous_hosts":
        "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.transport_sockets.raw_buffer":
        "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
}


def envoy_loadable(obj: Any, changes: list[str] | None = None) -> Any:
    """A copy of ``obj`` (JSON) with a typed_config added to name-only known extensions."""
    if isinstance(obj, list):
        return [envoy_loadable(v, changes) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: envoy_loadable(v, changes) for k, v in obj.items()}
    name = out.get("name")
    if name in EXTENSION_TYPES and "typed_config" not in out and "typedConfig" not in out:
        out["typed_config"] = {"@type": EXTENSION_TYPES[name]}
        if changes is not None:
            changes.append(f"added typed_config to {name}")
    return out


def referenced_clusters(obj: Any) -> set[str]:
    """Every cluster a route config JSON names (route.cluster, weighted cluster names)."""
    found: set[str] = set()
    if isinstance(obj, dict):
        if isinstance(obj.get("cluster"), str):
            found.add(obj["cluster"])
        wc = obj.get("weighted_clusters")
        if isinstance(wc, dict):
            found.update(str(c["name"]) for c in wc.get("clusters", []))
        for v in obj.values():
            found |= referenced_clusters(v)
    elif isinstance(obj, list):
        for v in obj:
            found |= referenced_clusters(v)
    return found
