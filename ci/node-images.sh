#!/usr/bin/env bash
# The images the real-node e2e needs besides the serving image, built locally (nothing can be pulled):
#   manymodels.local/pause:1                     the pod sandbox (ci/e2e/pause, a static Go binary)
#   manymodels.local/kuberay-operator:<version>  the KubeRay operator binary ci/e2e-tools.sh built, at
#                                                /manager like the upstream image, user 65532
#   manymodels.local/curl:bookworm               Debian's curl on the stand-in base, for `helm test`
# Run under ci/image-env.sh (DOCKER_HOST, MM_STANDIN_BASE) with the e2e tools' env. Prints the names.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, log
DOCKER=${DOCKER:-docker}
: "${MANYMODELS_KUBERAY_VERSION:?run with the env of ci/e2e-tools.sh}" "${MM_STANDIN_BASE:?run under ci/image-env.sh}"
PAUSE=manymodels.local/pause:1
OPERATOR=manymodels.local/kuberay-operator:$MANYMODELS_KUBERAY_VERSION
CURL=manymodels.local/curl:bookworm

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# a single static binary as an image: `docker import` of a one-file tar (seconds; no Dockerfile)
binary_image() {  # IMAGE BINARY NAME_IN_IMAGE USER
  mkdir -p "$work/$1"
  cp "$2" "$work/$1/$3"
  tar -C "$work/$1" --owner 0 --group 0 -c "$3" | "$DOCKER" import -c "ENTRYPOINT [\"/$3\"]" -c "USER $4" - "$1" >/dev/null
}

(cd "$ROOT/ci/e2e/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/pause-bin" .)
binary_image "$PAUSE" "$work/pause-bin" pause 65535
binary_image "$OPERATOR" "$(command -v ray-operator)" manager 65532
if ! "$DOCKER" image inspect "$CURL" >/dev/null 2>&1; then
  log "building $CURL (Debian's curl on $MM_STANDIN_BASE)"
  "$DOCKER" build -q -t "$CURL" - >/dev/null <<DOCKERFILE
FROM $MM_STANDIN_BASE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null \
 && rm -rf /var/lib/apt/lists/*
USER 65534:65534
DOCKERFILE
fi
echo "$PAUSE $OPERATOR $CURL"
