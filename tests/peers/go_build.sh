# Sourced by tests/peers/<peer>/build.sh: build a Go test peer unless its stamp is current.
#
#   go_peer_build NAME BIN KEY WHAT PACKAGE [--check]
#
# The binary BIN counts as built when it is executable and its stamp file (BIN.version)
# holds KEY; then its path is printed.  Otherwise, with --check, say so and exit 1; without,
# `go build PACKAGE` in the peer's directory (HERE), write the stamp, print the path.
# NAME and WHAT (what KEY stands for) only go into messages.  GO, GOMAXPROCS and GO_BUILD_P
# override the toolchain and its parallelism (these machines have 2 shared cores).

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

go_peer_build() {
    local name="$1" bin="$2" key="$3" what="$4" package="$5" mode="${6:-}"
    local stamp="$bin.version" start
    if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
        echo "$bin"
        exit 0
    fi
    if [ "$mode" = "--check" ]; then
        echo "$name/build.sh: $bin missing or not built from $what" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$bin")"
    echo "$name/build.sh: building $(basename "$bin") from $what${BUILD_NOTE:-}" >&2
    start=$(date +%s)
    (cd "$HERE" && GOFLAGS=-buildvcs=false GOMAXPROCS="${GOMAXPROCS:-2}" \
        "$GO" build -p "${GO_BUILD_P:-2}" -trimpath -o "$bin.tmp" "$package")
    mv "$bin.tmp" "$bin"
    echo "$key" > "$stamp"
    echo "$name/build.sh: built in $(( $(date +%s) - start )) s" >&2
    echo "$bin"
}
