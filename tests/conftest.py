"""Shared pytest fixtures and the CI rule for capability-dependent tests.

Tests marked ``kernel`` (root, BPF, cgroup v2), ``envoy``, ``node``, ``istiod`` or ``gocp``
(the Go control-plane peers scripts/setup.sh builds) skip with a reason on a developer
machine that lacks the capability; when ``CI=true`` a missing capability
fails the test instead, so CI can never pass by skipping the datapath.
"""

from __future__ import annotations

import os

import pytest

from tests.support.capabilities import missing_capability


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in ("kernel", "envoy", "node", "istiod", "gocp"):
        if item.get_closest_marker(marker) is None:
            continue
        reason = missing_capability(marker)
        if reason is None:
            continue
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {marker} capability missing: {reason}", pytrace=False)
        pytest.skip(f"{marker} capability missing: {reason}")
