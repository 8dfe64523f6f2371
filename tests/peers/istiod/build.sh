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
OUT_DIR="$ROOT/.cache/peers/istiod"
BIN="$OUT_DIR/pilot-discovery"
STAMP="$BIN.version"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

VERSION="$(awk '$1 == "istio.io/istio" {print $2}' "$HERE/go.mod")"
if [ -z "$VERSION" ]; then
    echo "istiod/build.sh: no istio.io/istio requirement in $HERE/go.mod" >&2
    exit 2
fi

if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    echo "$BIN"
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "istiod/build.sh: $BIN missing or not built from istio.io/istio $VERSION" >&2
    exit 1
fi

mkdir -p "$OUT_DIR"
echo "istiod/build.sh: building pilot-discovery from istio.io/istio $VERSION (cold: ~10-25 min on 2 cores)" >&2
start=$(date +%s)
# Modest parallelism: these machines have 2 cores shared with other work.
(cd "$HERE" && GOFLAGS=-buildvcs=false GOMAXPROCS="${GOMAXPROCS:-2}" \
    "$GO" build -p "${GO_BUILD_P:-2}" -trimpath -o "$BIN.tmp" istio.io/istio/pilot/cmd/pilot-discovery)
mv "$BIN.tmp" "$BIN"
echo "$VERSION" > "$STAMP"
echo "istiod/build.sh: built in $(( $(date +%s) - start )) s" >&2
echo "$BIN"
