#!/bin/sh
# Container entrypoint of the sockmesh agent: make kernel headers visible to bcc, check the
# host mounts the datapath needs, then exec the command (by default `sockmesh run ...`).
#
# bcc compiles the datapath against /lib/modules/$(uname -r)/build (arch tree) and
# .../source (common tree).  In order of preference:
#   1. the node's own headers, from the read-only host mounts of /lib/modules and /usr/src
#      (SOCKMESH_HOST_MODULES, SOCKMESH_HOST_SRC): they match the running kernel exactly;
#   2. the linux-headers-*-amd64 tree installed in the image, the same fallback
#      scripts/setup.sh uses on machines without a headers package for their kernel.
# /lib/modules inside the container must be writable for the links (an emptyDir in the
# DaemonSet, so the image's root filesystem can stay read-only).
set -eu

HOST_MODULES="${SOCKMESH_HOST_MODULES:-/host/lib/modules}"
HOST_SRC="${SOCKMESH_HOST_SRC:-/host/usr/src}"
BPFFS="${SOCKMESH_BPFFS:-/sys/fs/bpf}"
KREL="$(uname -r)"

log() { printf 'sockmesh-entrypoint: %s\n' "$*" >&2; }

# A host symlink such as /lib/modules/X/build -> /usr/src/linux-headers-X is absolute in the
# host's namespace; map it onto where the host trees are mounted here.
host_path() {
    case "$1" in
        /usr/src/*) printf '%s%s\n' "$HOST_SRC" "${1#/usr/src}" ;;
        /lib/modules/*) printf '%s%s\n' "$HOST_MODULES" "${1#/lib/modules}" ;;
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$2" "$1" ;;
    esac
}

resolve_host_link() {  # path-in-host-mount -> resolved directory, or nothing
    link="$1"
    [ -L "$link" ] || { [ -d "$link" ] && printf '%s\n' "$link"; return 0; }
    target="$(readlink "$link")"
    dir="$(host_path "$target" "$(dirname "$link")")"
    [ -d "$dir" ] && printf '%s\n' "$dir"
    return 0
}

link_headers() {
    build="" source=""
    if [ -e "$HOST_MODULES/$KREL" ]; then
        build="$(resolve_host_link "$HOST_MODULES/$KREL/build")"
        source="$(resolve_host_link "$HOST_MODULES/$KREL/source")"
        # Debian's -amd64 tree has no "source" link of its own: it pairs with -common
        if [ -n "$build" ] && [ -z "$source" ] && [ -d "${build%-amd64}-common" ]; then
            source="${build%-amd64}-common"
        fi
        [ -n "$build" ] && [ -z "$source" ] && source="$build"
    fi
    if [ -n "$build" ] && [ -e "$build/include/generated" ]; then
        log "kernel headers: the node's ($build)"
    else
        build="$(printf '%s\n' /usr/src/linux-headers-*-amd64 | sort -V | tail -1)"
        [ -d "$build" ] || build=""  # the glob matched nothing
        source="${build%-amd64}-common"
        if [ -z "$build" ] || [ ! -d "$source" ]; then
            log "no kernel headers: mount the node's /lib/modules and /usr/src, or use an image" \
                "with linux-headers-amd64"
            exit 1
        fi
        log "kernel headers: the node has none for $KREL; using the image's $build" \
            "(bcc needs a consistent tree, not an exact match)"
    fi
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$build" "/lib/modules/$KREL/build"
    ln -sfn "$source" "/lib/modules/$KREL/source"
}

check_bpffs() {
    # pinned maps must live on the node's bpffs, or a restarted agent cannot adopt them
    if [ "$(stat -f -c %T "$BPFFS" 2>/dev/null)" != "bpf_fs" ]; then
        log "$BPFFS is not a bpffs mount: mount bpffs on the node (mount -t bpf bpf /sys/fs/bpf," \
            "or systemd's sys-fs-bpf.mount) and mount it into the pod"
        exit 1
    fi
}

if [ "${SOCKMESH_SKIP_HOST_CHECKS:-}" != "1" ]; then
    link_headers
    check_bpffs
fi
exec "$@"
