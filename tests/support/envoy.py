"""Run a real Envoy with a given bootstrap on loopback: the product's ``integration.envoy``.

    with EnvoyProcess(bootstrap, workdir=tmp_path) as envoy:   # starts, waits for /ready
        envoy.config_dump()          # admin /config_dump (with EDS) as JSON

Re-exported here so the tests keep one import path; the logic lives in the product, which
``sockmesh ab`` and ``sockmesh bench`` use from an installed package.
"""

from __future__ import annotations

from integration.envoy import (
    LOOPBACK,
    START_TIMEOUT_S,
    EnvoyError,
    EnvoyProcess,
    ads_bootstrap,
)

__all__ = ["LOOPBACK", "START_TIMEOUT_S", "EnvoyError", "EnvoyProcess", "ads_bootstrap"]
