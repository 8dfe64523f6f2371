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
# shellcheck source=tests/peers/go_build.sh
. "$HERE/../go_build.sh"

KEY="$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/main.go" | sha256sum | cut -c1-16)"
go_peer_build gocp "$ROOT/.cache/peers/gocp/gocp-server" "$KEY" "the current sources ($KEY)" \
    . "${1:-}"
