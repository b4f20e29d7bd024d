#!/usr/bin/env bash
# Build one variant of the serving image against the daemon in DOCKER_HOST (run under ci/image-env.sh).
#
#   ci/image-build.sh cpu|gpu
#
# Tags: manymodels:<appVersion>[-cpu] and ghcr.io/manymodels/manymodels:<appVersion>[-cpu] (docs/image.md).
# BASE_IMAGE defaults to $MM_STANDIN_BASE (the local stand-in); set MM_BASE_IMAGE to override it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, log, chart_field
cd "$ROOT"

variant=${1:-cpu}
case "$variant" in cpu) suffix=-cpu ;; gpu) suffix="" ;; *) echo "usage: $0 cpu|gpu" >&2; exit 2 ;; esac
DOCKER=${DOCKER:-/usr/bin/docker}
REPO=${MM_IMAGE_REPOSITORY:-ghcr.io/manymodels/manymodels}
version=$(chart_field appVersion)
app_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' app/pyproject.toml)
if [ "$version" != "$app_version" ]; then
    log "Chart.yaml appVersion ($version) != app/pyproject.toml version ($app_version)"
    exit 1
fi
tag=$version$suffix
# The Ray the app pins is the Ray of the base image (rayproject/ray:<version>-...) and of the label.
ray_version=$(sed -n 's/^[[:space:]]*"ray\[serve\]==\([^"]*\)".*/\1/p' app/pyproject.toml)
[ -n "$ray_version" ] || { log "no ray[serve]==VERSION pin in app/pyproject.toml"; exit 1; }

# The commit, read without running git (.git/HEAD, loose ref or packed-refs).
revision=unknown
if [ -f .git/HEAD ]; then
    head=$(cat .git/HEAD)
    if [ "${head#ref: }" != "$head" ]; then
        ref=${head#ref: }
        revision=$(cat ".git/$ref" 2>/dev/null || awk -v r="$ref" '$2 == r {print $1}' .git/packed-refs 2>/dev/null || true)
    else
        revision=$head
    fi
fi

ca=${MM_CA_BUNDLE:-}
for f in "$ca" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    [ -n "$f" ] && [ -s "$f" ] && { ca=$f; break; }
done

args=(--build-arg "VARIANT=$variant" --build-arg "VERSION=$version" --build-arg "RAY_VERSION=$ray_version"
      --build-arg "REVISION=${revision:-unknown}"
      --build-arg "CREATED=${MM_IMAGE_CREATED:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}")
base=${MM_BASE_IMAGE:-${MM_STANDIN_BASE:-}}
[ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
[ -n "$ca" ] && args+=(--secret "id=ca,src=$ca")

log "$REPO:$tag (variant $variant, base ${base:-official rayproject/ray})"
started=$SECONDS
DOCKER_BUILDKIT=1 "$DOCKER" build -f images/Dockerfile "${args[@]}" --progress="${MM_BUILD_PROGRESS:-plain}" \
    -t "manymodels:$tag" -t "$REPO:$tag" .
# The previous build of this tag is now dangling: drop it (its layers stay in the build cache).
"$DOCKER" image prune -f >/dev/null
log "built $REPO:$tag in $((SECONDS - started)) s;" \
    "size $("$DOCKER" image inspect -f '{{.Size}}' "$REPO:$tag" | awk '{printf "%.0f MB", $1 / 1e6}')"
