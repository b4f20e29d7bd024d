#!/usr/bin/env bash
# Run a command against a private Docker daemon with the local stand-in base image present.
#
#   ci/image-env.sh <command> [args...]
#
# 1. installs Debian's docker.io + debootstrap when missing (apt-get update first);
# 2. starts a private dockerd in the background (data-root, exec-root, socket and pidfile under
#    $MM_DOCKER_DIR, default ${XDG_CACHE_HOME:-$HOME/.cache}/manymodels/docker, outside the repo) and
#    stops it by pid when the command ends (trap) -- unless one is already answering on that socket,
#    which is then reused and left running;
# 3. builds the stand-in base image ($MM_STANDIN_BASE) with debootstrap + docker import, skipped when
#    the image exists (re-importing makes a new image id and busts every build cache);
# 4. runs the command with DOCKER_HOST, DOCKER (the Debian client), DOCKER_BUILDKIT=1,
#    TESTCONTAINERS_RYUK_DISABLED=true and MM_STANDIN_BASE exported.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # log

MM_DOCKER_DIR=${MM_DOCKER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/manymodels/docker}
MM_STANDIN_BASE=${MM_STANDIN_BASE:-manymodels-standin-base:bookworm-py311}
# Debian's client: BuildKit works with it; a newer client on the PATH may lack buildx.
DOCKER=${DOCKER:-/usr/bin/docker}
SOCK=$MM_DOCKER_DIR/docker.sock
PIDFILE=$MM_DOCKER_DIR/dockerd.pid
export DOCKER_HOST=unix://$SOCK DOCKER DOCKER_BUILDKIT=1 TESTCONTAINERS_RYUK_DISABLED=true MM_STANDIN_BASE

ensure_tools() {
    apt_ensure /usr/bin/docker:docker.io dockerd:docker.io /usr/sbin/debootstrap:debootstrap
}

OWN_DAEMON=""
stop_daemon() {
    local rc=$?
    if [ -n "$OWN_DAEMON" ] && kill -0 "$OWN_DAEMON" 2>/dev/null; then
        log "stopping dockerd (pid $OWN_DAEMON)"
        kill -TERM "$OWN_DAEMON"
        for _ in $(seq 1 60); do kill -0 "$OWN_DAEMON" 2>/dev/null || break; sleep 0.5; done
    fi
    exit "$rc"
}

start_daemon() {
    mkdir -p "$MM_DOCKER_DIR"/{data,exec}
    if "$DOCKER" version >/dev/null 2>&1; then
        log "reusing the dockerd already answering on $SOCK"
        return
    fi
    log "starting dockerd (data-root $MM_DOCKER_DIR/data, log $MM_DOCKER_DIR/dockerd.log)"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    # Started directly (not through a shell function) so that $! is dockerd's own pid (or sudo's,
    # which relays the signal): the trap stops exactly this daemon, and containerd goes with it.
    # Build cache kept by BuildKit's GC (default: 10% of the disk): room for both variants + pip cache.
    printf '{"builder": {"gc": {"enabled": true, "defaultKeepStorage": "%s"}}}\n' \
        "${MM_BUILDER_KEEP_STORAGE:-30GB}" >"$MM_DOCKER_DIR/daemon.json"
    "${sudo[@]}" dockerd --config-file "$MM_DOCKER_DIR/daemon.json" --data-root "$MM_DOCKER_DIR/data" --exec-root "$MM_DOCKER_DIR/exec" \
        --pidfile "$PIDFILE" -H "unix://$SOCK" >"$MM_DOCKER_DIR/dockerd.log" 2>&1 &
    OWN_DAEMON=$!
    trap stop_daemon EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    for _ in $(seq 1 120); do
        "$DOCKER" version >/dev/null 2>&1 && return
        kill -0 "$OWN_DAEMON" 2>/dev/null || { tail -20 "$MM_DOCKER_DIR/dockerd.log" >&2; exit 1; }
        sleep 0.5
    done
    log "dockerd did not answer within 60 s"; tail -20 "$MM_DOCKER_DIR/dockerd.log" >&2; exit 1
}

# The Debian mirror apt uses on this machine (deb822 .sources first, then one-line lists).
debian_mirror() {
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)
    [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' | grep -v security | head -1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

ensure_base() {
    if "$DOCKER" image inspect "$MM_STANDIN_BASE" >/dev/null 2>&1; then
        log "stand-in base $MM_STANDIN_BASE present"
        return
    fi
    local mirror root started=$SECONDS
    mirror=$(debian_mirror)
    root=$(mktemp -d "${TMPDIR:-/tmp}/mm-rootfs.XXXXXX")
    log "debootstrap bookworm from $mirror into $root"
    as_root debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$root" "$mirror" >"$MM_DOCKER_DIR/debootstrap.log" 2>&1 \
        || { tail -20 "$MM_DOCKER_DIR/debootstrap.log" >&2; exit 1; }
    as_root chroot "$root" apt-get clean
    as_root rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    as_root tar -C "$root" -c . | "$DOCKER" import -c 'CMD ["/bin/bash"]' \
        -c 'ENV LANG=C.UTF-8' -m "manymodels stand-in for rayproject/ray (bookworm, python3.11)" - "$MM_STANDIN_BASE" >/dev/null
    as_root rm -rf "$root"
    log "imported $MM_STANDIN_BASE in $((SECONDS - started)) s"
}

[ $# -gt 0 ] || { echo "usage: $0 <command> [args...]" >&2; exit 2; }
ensure_tools
start_daemon
ensure_base
# Not exec: the EXIT trap must stop the daemon after the command.
"$@"
