#!/usr/bin/env bash
# Builds the pinned end-to-end toolchain from the Go module proxy into a per-user cache OUTSIDE the repo
# (keyed on each tool's version), so that CI in a fresh clone reuses it. Idempotent; instant when cached.
#
#   ci/e2e-tools.sh           build whatever is missing, then print `export` lines for the tools
#   ci/e2e-tools.sh env       print the `export` lines only (builds nothing)
#
# Tools (all built with CGO_ENABLED=0):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  k8s.io/kubernetes $KUBE_VERSION via the
#       wrapper module ci/e2e/k8s (its staging modules replaced by their published v0.<minor>.<patch>)
#   etcd        go.etcd.io/etcd/server/v3 $ETCD_VERSION via the wrapper module ci/e2e/etcd
#   kwok        sigs.k8s.io/kwok/cmd/kwok $KWOK_VERSION (fake nodes and pods)
#   ray-operator + its CRDs   github.com/ray-project/kuberay/ray-operator at the version Chart.yaml pins for
#       the kuberay-operator dependency -- with the SAME fallback as ci/chart-deps.sh: when the module proxy
#       refuses it (v1.7.0 today) KUBERAY_MODULE_FALLBACK (default v1.6.2) is used, loudly.
#   helm        reused from ci/chart-tools.sh's cache (built there if missing)
#
# Overrides: MANYMODELS_TOOLS_DIR (cache root), KUBERAY_MODULE_VERSION, KUBERAY_MODULE_FALLBACK, GOPROXY.
set -euo pipefail

KUBE_VERSION=1.35.0       # same Kubernetes as ci/chart-tools.sh validates against; ci/e2e/k8s/go.mod pins it
ETCD_VERSION=v3.6.8       # ci/e2e/etcd/go.mod pins it; kube-apiserver 1.35 needs etcd >= 3.5.13
KWOK_VERSION=v0.8.0
# PodMonitor/ServiceMonitor CRDs for the server-side dry-run of ci/full-values.yaml: the same module and
# version ci/chart-tools.sh takes the monitors' kubeconform schemas from
PROMETHEUS_OPERATOR_VERSION=$(sed -n 's/^PROMETHEUS_OPERATOR_VERSION=\([^ ]*\).*/\1/p' "$(dirname "${BASH_SOURCE[0]}")/chart-tools.sh")

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${MANYMODELS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/manymodels/tools}
export CGO_ENABLED=0
log() { echo "e2e-tools: $*" >&2; }

# the kuberay-operator version pinned in Chart.yaml (same parsing as ci/chart-deps.sh)
PINNED=$(awk '/^dependencies:/{d=1} d&&/name: kuberay-operator/{n=1} n&&/version:/{gsub(/["'"'"' ]/,"",$2); print $2; exit}' \
  "$ROOT/Chart.yaml")
KUBERAY_MODULE=github.com/ray-project/kuberay/ray-operator
KUBERAY_WANT=${KUBERAY_MODULE_VERSION:-v$PINNED}
KUBERAY_FALLBACK=${KUBERAY_MODULE_FALLBACK-v1.6.2}

# wrapper modules are keyed on their go.mod + go.sum too, so a dependency edit rebuilds
key() { grep -hv "^[[:space:]]*//" "$@" | sha256sum | cut -c1-12; }   # comments do not count
KUBE_DIR=$TOOLS/kubernetes-v$KUBE_VERSION-$(key "$ROOT"/ci/e2e/k8s/go.{mod,sum})
ETCD_DIR=$TOOLS/etcd-$ETCD_VERSION-$(key "$ROOT"/ci/e2e/etcd/go.{mod,sum})
KWOK_DIR=$TOOLS/kwok-$KWOK_VERSION
MONITORING_DIR=$TOOLS/monitoring-crds-$PROMETHEUS_OPERATOR_VERSION

module_dir() {
  go mod download -json "$1" 2>/dev/null | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
}

# resolve the operator version: the pinned one if the proxy has it (or it is cached), else the fallback
kuberay_version() {
  local v
  for v in "$KUBERAY_WANT" ${KUBERAY_FALLBACK:+"$KUBERAY_FALLBACK"}; do
    if [[ -f $TOOLS/kuberay-operator-$v/.ok ]] || [[ -n $(module_dir "$KUBERAY_MODULE@$v") ]]; then
      if [[ $v != "$KUBERAY_WANT" ]]; then
        log "WARNING: the module proxy does not serve $KUBERAY_MODULE@$KUBERAY_WANT (Chart.yaml pins $PINNED);" \
          "using $v like ci/chart-deps.sh. Set KUBERAY_MODULE_FALLBACK= to forbid this."
      fi
      echo "$v"; return 0
    fi
  done
  log "the module proxy serves neither $KUBERAY_MODULE@$KUBERAY_WANT nor the fallback '$KUBERAY_FALLBACK'"
  return 1
}

print_env() {
  local helm_path kuberay_dir
  helm_path=$("$ROOT/ci/chart-tools.sh" path | cut -d: -f1)   # helm's bin dir
  kuberay_dir=$TOOLS/kuberay-operator-$KUBERAY_VERSION
  cat <<EOF
export PATH="$KUBE_DIR/bin:$ETCD_DIR/bin:$KWOK_DIR/bin:$kuberay_dir/bin:$helm_path:\$PATH"
export MANYMODELS_KUBE_VERSION="$KUBE_VERSION"
export MANYMODELS_KUBERAY_VERSION="$KUBERAY_VERSION"
export MANYMODELS_KUBERAY_PINNED="v$PINNED"
export MANYMODELS_KUBERAY_CRDS="$kuberay_dir/crds"
export MANYMODELS_KWOK_STAGES="$KWOK_DIR/kwok-stages.yaml"
export MANYMODELS_MONITORING_CRDS="$MONITORING_DIR"
EOF
}

install_once() {  # DIR description command... ; the command fills $STAGE, which then becomes DIR
  local dir=$1 what=$2; shift 2
  if [[ -f $dir/.ok ]]; then return 0; fi
  log "building $what into $dir (first time; cached afterwards)"
  local start=$SECONDS
  mkdir -p "$TOOLS"
  STAGE=$(mktemp -d "$TOOLS/.stage.XXXXXX")
  export STAGE
  "$@"
  touch "$STAGE/.ok"
  rm -rf "$dir"
  mv "$STAGE" "$dir"
  log "$what ready in $((SECONDS - start)) s"
}

build_kube() {
  local v=v$KUBE_VERSION minor
  minor=$(cut -d. -f2 <<<"$KUBE_VERSION")
  local ld="-s -w"
  local p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  mkdir -p "$STAGE/bin"
  (cd "$ROOT/ci/e2e/k8s" && go build -trimpath -ldflags "$ld" -o "$STAGE/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}

build_etcd() {
  mkdir -p "$STAGE/bin"
  (cd "$ROOT/ci/e2e/etcd" && go build -trimpath -ldflags "-s -w" -o "$STAGE/bin/etcd" go.etcd.io/etcd/server/v3)
}

build_kwok() {
  GOBIN=$STAGE/bin go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  kwok_stages "$STAGE"
}

# kwok needs Stage configs (how fake nodes and pods change state): the "fast" node and pod stages and
# the node heartbeat shipped in the same module (kustomize/stage), concatenated into one config file
kwok_stages() {
  local dir f
  dir=$(module_dir "sigs.k8s.io/kwok@$KWOK_VERSION")/kustomize/stage
  for f in "$dir"/node/fast/node-initialize.yaml "$dir"/node/heartbeat/node-heartbeat.yaml "$dir"/pod/fast/pod-*.yaml; do
    echo "---"; cat "$f"
  done >"$1/kwok-stages.yaml"
}

build_kuberay() {
  local dir
  dir=$(module_dir "$KUBERAY_MODULE@$KUBERAY_VERSION")
  # built from a copy of the module: `go install MODULE@VERSION` also asks the proxy for the module's
  # version list (deprecation check), which this proxy answers with 403 for ray-operator
  local work
  work=$(mktemp -d)
  cp -r "$dir/." "$work/"
  chmod -R u+w "$work"
  mkdir -p "$STAGE/bin"
  (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$STAGE/bin/ray-operator" .)
  rm -rf "$work"
  mkdir -p "$STAGE/crds"
  cp "$dir"/config/crd/bases/*.yaml "$STAGE/crds/"
  chmod -R u+w "$STAGE/crds"
}

copy_monitoring_crds() {
  local dir
  dir=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
  cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_{podmonitors,servicemonitors}.yaml "$STAGE/"
  chmod u+w "$STAGE"/*.yaml
}

case "${1:-install}" in
  env) KUBERAY_VERSION=$(kuberay_version); print_env; exit 0 ;;
  install) ;;
  *) echo "usage: $0 [install|env]" >&2; exit 2 ;;
esac

KUBERAY_VERSION=$(kuberay_version)
"$ROOT/ci/chart-tools.sh" >/dev/null   # helm (cached)
install_once "$TOOLS/kuberay-operator-$KUBERAY_VERSION" "KubeRay operator $KUBERAY_VERSION + CRDs" build_kuberay
install_once "$KWOK_DIR" "kwok $KWOK_VERSION" build_kwok
install_once "$MONITORING_DIR" "PodMonitor/ServiceMonitor CRDs (prometheus-operator $PROMETHEUS_OPERATOR_VERSION)" \
  copy_monitoring_crds
install_once "$ETCD_DIR" "etcd $ETCD_VERSION" build_etcd
install_once "$KUBE_DIR" "kube-apiserver/controller-manager/scheduler/kubectl v$KUBE_VERSION" build_kube
print_env
