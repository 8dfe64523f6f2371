#!/usr/bin/env bash
# Build the go-control-plane test server into .cache/peers/gocp/ (ignored by git).
#
# Rebuilds only when go.mod, go.sum or main.go change: the stamp file next to the binary
# holds a hash of the three (tests/support/gocp.py computes the same hash).
#
#   tests/peers/gocp/build.sh            build if missing or stale, print the binary path
#   tests/peers/gocp/build.sh --check    exit 1 (and say why) if a build is needed
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
OUT_DIR="$ROOT/.cache/peers/gocp"
BIN="$OUT_DIR/gocp-server"
STAMP="$BIN.version"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

KEY="$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/main.go" | sha256sum | cut -c1-16)"
if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$KEY" ]; then
    echo "$BIN"
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "gocp/build.sh: $BIN missing or not built from the current sources ($KEY)" >&2
    exit 1
fi

mkdir -p "$OUT_DIR"
echo "gocp/build.sh: building gocp-server ($KEY)" >&2
start=$(date +%s)
(cd "$HERE" && GOFLAGS=-buildvcs=false GOMAXPROCS="${GOMAXPROCS:-2}" \
    "$GO" build -p "${GO_BUILD_P:-2}" -trimpath -o "$BIN.tmp" .)
mv "$BIN.tmp" "$BIN"
echo "$KEY" > "$STAMP"
echo "gocp/build.sh: built in $(( $(date +%s) - start )) s" >&2
echo "$BIN"
