#!/usr/bin/env bash
# Build istiod's pilot-discovery for the tests into .cache/peers/istiod/ (ignored by git).
#
# The Istio release is pinned in go.mod next to this script (Istio tags have no "v", so the
# release commit's pseudo-version).  Rebuilds only when that version changes: the binary's
# stamp file holds the version it was built from.  Go is a test-only tool here.
#
# Why 1.29.x and not 1.30+: from 1.30.0 (checked up to 1.30.3 and 1.31.0-rc.0)
# serviceentry.NewController calls multiclusterController.ConfigCluster().Namespaces(),
# but initMulticluster leaves that controller nil when there is no Kubernetes client, so
# the standalone `discovery --registries= --configDir DIR` mode panics at start-up.
#
#   tests/peers/istiod/build.sh            build if missing or stale, print the binary path
#   tests/peers/istiod/build.sh --check    exit 1 (and say why) if a build is needed
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=tests/peers/go_build.sh
. "$HERE/../go_build.sh"

VERSION="$(awk '$1 == "istio.io/istio" {print $2}' "$HERE/go.mod")"
if [ -z "$VERSION" ]; then
    echo "istiod/build.sh: no istio.io/istio requirement in $HERE/go.mod" >&2
    exit 2
fi

BUILD_NOTE=" (cold: ~10-25 min on 2 cores)" \
    go_peer_build istiod "$ROOT/.cache/peers/istiod/pilot-discovery" "$VERSION" \
    "istio.io/istio $VERSION" istio.io/istio/pilot/cmd/pilot-discovery "${1:-}"
