"""Make Istio-generated config loadable by Envoy 1.40.

Configs written for (or by) older Envoys name some extensions by ``name`` alone; Envoy 1.40
wants their ``typed_config``.  The change adds the typed_config of that same extension, so
it never affects which route, cluster or endpoint is chosen.  (tests/diff's
``envoy_loadable`` does the same for route configs only; this covers clusters as well.)
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
