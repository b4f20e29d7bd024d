#!/usr/bin/env bash
# `make test-cold`: CI's own run (`bash .ci/run` in a fresh clone of the committed HEAD, ../shared beside
# it, no standard input, CI=true) on a COLD machine: every cache the run can use -- the tool cache, pip's
# and npm's caches, Go's module and build caches, the private Docker daemon's data root, XDG_CACHE_HOME --
# is an empty folder under one temporary directory, deleted at the end. A warm cache hides missing install
# steps; this does not. Prints the wall time of each stage and the total; exits non-zero on any failure.
#
#   ci/test-cold.sh
#
# MM_COLD_DIR   where the temporary directory goes (default ${TMPDIR:-/tmp}; a cold run needs ~20 GB)
# MM_COLD_LIMIT_S  a run slower than this fails too (default 4500 = 75 min; CI allows 90)
# MM_COLD_KEEP  =1 keeps it (the clone, caches and ci.log) for a look after the run
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, log

if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no) ]]; then
  log "WARNING: uncommitted changes are not part of this run: it clones the committed HEAD, as CI does"
fi
base=$(mktemp -d "${MM_COLD_DIR:-${TMPDIR:-/tmp}}/mm-cold.XXXXXX")
cleanup() {
  local rc=$?
  if [[ ${MM_COLD_KEEP:-0} == 1 ]]; then
    log "kept $base (remove it with: chmod -R u+w $base && rm -rf $base)"
  else
    chmod -R u+w "$base" 2>/dev/null || true   # Go's module cache and the shared/ copy are read-only
    rm -rf "$base"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

git clone --quiet --no-hardlinks "$ROOT" "$base/work/main"
# the commit under test is the clone's (HEAD here may move while the run takes its time)
commit=$(git -C "$base/work/main" rev-parse --short HEAD)
log "cold run in $base (fresh clone of $commit, empty caches)"
if [[ -d $ROOT/../shared ]]; then
  cp -r "$ROOT/../shared" "$base/work/shared"
  chmod -R a-w "$base/work/shared"   # CI lays shared/ without write bits
fi
mkdir -p "$base/cache" "$base/go"
stages=$base/stages.tsv
: >"$stages"

start=$SECONDS
set +e
(
  cd "$base/work/main"
  exec env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS -u DOCKER_HOST -u KUBECONFIG -u PYTHON -u VIRTUAL_ENV \
    CI=true \
    XDG_CACHE_HOME="$base/cache" \
    MANYMODELS_TOOLS_DIR="$base/cache/manymodels/tools" \
    MM_DOCKER_DIR="$base/cache/manymodels/docker" \
    PIP_CACHE_DIR="$base/cache/pip" npm_config_cache="$base/cache/npm" \
    GOPATH="$base/go" GOMODCACHE="$base/go/pkg/mod" GOCACHE="$base/cache/go-build" \
    MANYMODELS_STAGE_LOG="$stages" \
    bash .ci/run </dev/null
) 2>&1 | tee "$base/ci.log"
rc=${PIPESTATUS[0]}
set -e
total=$((SECONDS - start))

mmss() { printf '%d:%02d' $(($1 / 60)) $(($1 % 60)); }
echo
echo "test-cold: $(date -u +%Y-%m-%d), $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB; commit $commit"
echo
echo "| stage | wall time | result |"
echo "|---|---:|---|"
while IFS=$'\t' read -r name took status; do
  echo "| $name | $(mmss "$took") | $( ((status)) && echo "FAILED (exit $status)" || echo passed) |"
done <"$stages"
echo "| **total (bash .ci/run)** | **$(mmss "$total")** | $( ((rc)) && echo "FAILED (exit $rc)" || echo passed) |"
if ((rc)); then log "FAILED (exit $rc); the run's output is above"; exit "$rc"; fi
limit=${MM_COLD_LIMIT_S:-4500}
if ((total > limit)); then log "FAILED: the cold run took $(mmss "$total"), over the $(mmss "$limit") limit"; exit 1; fi
log "passed in $(mmss "$total")"
