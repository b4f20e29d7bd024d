#!/usr/bin/env bash
# Installs the object-store emulators the app's store tests run (tests/app/store/store_servers.py) into
# the per-user tool cache OUTSIDE the repo, keyed on each one's version and lock file, so that CI in a
# fresh clone reuses them. Idempotent; instant when cached.
#
#   ci/store-servers.sh               install whatever is missing, then print `export` lines
#   ci/store-servers.sh env           print the `export` lines only (installs nothing)
#   ci/store-servers.sh exec CMD...   run CMD with those variables exported (installs nothing)
#
# Servers:
#   azurite-blob     Azurite $AZURITE_VERSION (Azure Blob emulator) from the npm registry, through the wrapper
#                    package ci/store/azurite (its package-lock.json pins every package it pulls in), run by
#                    the machine's Node.js. Azurite 3.36+ declares Node >= 21; the machine has Node 20.
#   fake-gcs-server  github.com/fsouza/fake-gcs-server $FAKE_GCS_SERVER_VERSION (GCS emulator) from the Go
#                    module proxy, through the wrapper module ci/store/fake-gcs-server (built CGO_ENABLED=0)
#   (S3 is moto's server, `python -m moto.server`: a Python package pinned in requirements-dev.txt.)
#
# Exports MANYMODELS_AZURITE and MANYMODELS_FAKE_GCS, the executables' absolute paths.
# Overrides: MANYMODELS_TOOLS_DIR (cache root), npm_config_cache, GOPROXY/GOMODCACHE/GOCACHE as usual.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, TOOLS, versions, install_once, gomod_requires, ...
export CGO_ENABLED=0

AZURITE_PKG=ci/store/azurite
FAKE_GCS_MOD=ci/store/fake-gcs-server
AZURITE_DIR=$TOOLS/azurite-$AZURITE_VERSION-$(files_key "$ROOT/$AZURITE_PKG"/package{,-lock}.json)
FAKE_GCS_DIR=$TOOLS/fake-gcs-server-$FAKE_GCS_SERVER_VERSION-$(files_key "$ROOT/$FAKE_GCS_MOD"/{go.mod,go.sum})

print_env() {
  cat <<EOF
export MANYMODELS_AZURITE="$AZURITE_DIR/node_modules/.bin/azurite-blob"
export MANYMODELS_FAKE_GCS="$FAKE_GCS_DIR/bin/fake-gcs-server"
EOF
}

case "${1:-install}" in
  env) print_env; exit 0 ;;
  exec)
    shift
    [[ $# -ge 1 ]] || { echo "usage: $0 exec COMMAND..." >&2; exit 2; }
    eval "$(print_env)"
    exec "$@" ;;
  install) ;;
  *) echo "usage: $0 [install|env|exec COMMAND...]" >&2; exit 2 ;;
esac

npm_requires "$AZURITE_PKG" azurite "$AZURITE_VERSION"
gomod_requires "$FAKE_GCS_MOD" github.com/fsouza/fake-gcs-server "$FAKE_GCS_SERVER_VERSION"

install_azurite() {
  command -v npm >/dev/null || { log "npm (Node.js) is needed to install Azurite"; return 1; }
  cp "$ROOT/$AZURITE_PKG"/package{,-lock}.json "$STAGE/"
  # exactly the lock's versions; Azurite and its dependencies have no install scripts to run
  (cd "$STAGE" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  "$STAGE/node_modules/.bin/azurite-blob" --version >/dev/null
}
install_once "$AZURITE_DIR" "Azurite $AZURITE_VERSION (node $(node --version 2>/dev/null || echo missing))" \
  install_azurite

build_fake_gcs() {
  mkdir -p "$STAGE/bin"
  (cd "$ROOT/$FAKE_GCS_MOD" && go build -trimpath -ldflags "-s -w" -o "$STAGE/bin/fake-gcs-server" \
    github.com/fsouza/fake-gcs-server)
}
install_once "$FAKE_GCS_DIR" "fake-gcs-server $FAKE_GCS_SERVER_VERSION" build_fake_gcs

print_env
