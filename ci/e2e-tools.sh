#!/usr/bin/env bash
# Builds the pinned end-to-end toolchain from the Go module proxy into a per-user cache OUTSIDE the repo
# (keyed on each tool's version), so that CI in a fresh clone reuses it. Idempotent; instant when cached.
#
#   ci/e2e-tools.sh           build whatever is missing, then print `export` lines for the tools
#   ci/e2e-tools.sh env       print the `export` lines only (builds nothing)
#
# Tools (all built with CGO_ENABLED=0):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy
#               k8s.io/kubernetes $KUBE_VERSION via the
#       wrapper module ci/e2e/k8s (its staging modules replaced by their published v0.<minor>.<patch>)
#   coredns     github.com/coredns/coredns $COREDNS_VERSION via the wrapper module ci/e2e/coredns (a plugin
#               subset: cluster DNS for the real node)
#   etcd        go.etcd.io/etcd/server/v3 $ETCD_VERSION via the wrapper module ci/e2e/etcd
#   kwok        sigs.k8s.io/kwok/cmd/kwok $KWOK_VERSION (fake nodes and pods)
#   ray-operator + its CRDs   github.com/ray-project/kuberay/ray-operator at the version Chart.yaml pins for
#       the kuberay-operator dependency -- with the SAME fallback as ci/chart-deps.sh (ci/lib.sh
#       kuberay_version): when the module proxy refuses it, KUBERAY_MODULE_FALLBACK (default
#       KUBERAY_FALLBACK_VERSION in ci/versions.env) is used, loudly.
#   helm        reused from ci/chart-tools.sh's cache (built there if missing)
#
# Overrides: MANYMODELS_TOOLS_DIR (cache root), KUBERAY_MODULE_VERSION, KUBERAY_MODULE_FALLBACK, GOPROXY.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, TOOLS, versions, install_once, kuberay_version, ...
export CGO_ENABLED=0

# The wrapper modules pin the versions in their go.mod; they must be the ones ci/versions.env names.
gomod_requires ci/e2e/k8s k8s.io/kubernetes "v$KUBE_VERSION"
gomod_requires ci/e2e/etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
gomod_requires ci/e2e/coredns github.com/coredns/coredns "$COREDNS_VERSION"

# wrapper modules are keyed on their go.mod + go.sum too (files_key), so a dependency edit rebuilds
KUBE_DIR=$TOOLS/kubernetes-v$KUBE_VERSION-$(files_key "$ROOT"/ci/e2e/k8s/go.{mod,sum})
ETCD_DIR=$TOOLS/etcd-$ETCD_VERSION-$(files_key "$ROOT"/ci/e2e/etcd/go.{mod,sum})
COREDNS_DIR=$TOOLS/coredns-$COREDNS_VERSION-$(files_key "$ROOT"/ci/e2e/coredns/{go.mod,go.sum,main.go})
KWOK_DIR=$TOOLS/kwok-$KWOK_VERSION
# the CRDs of what ci/full-values.yaml renders; the directory names them, so adding one refetches
MONITORING_CRDS=(podmonitors prometheusrules servicemonitors)
MONITORING_DIR=$TOOLS/monitoring-crds-$PROMETHEUS_OPERATOR_VERSION-$(IFS=-; echo "${MONITORING_CRDS[*]}")

print_env() {
  local helm_path kuberay_dir
  helm_path=$("$ROOT/ci/chart-tools.sh" path | cut -d: -f1)   # helm's bin dir
  kuberay_dir=$TOOLS/kuberay-operator-$KUBERAY_VERSION
  cat <<EOF
export PATH="$KUBE_DIR/bin:$ETCD_DIR/bin:$COREDNS_DIR/bin:$KWOK_DIR/bin:$kuberay_dir/bin:$helm_path:\$PATH"
export MANYMODELS_KUBE_VERSION="$KUBE_VERSION"
export MANYMODELS_KUBERAY_VERSION="$KUBERAY_VERSION"
export MANYMODELS_KUBERAY_PINNED="$(kuberay_pinned)"
export MANYMODELS_KUBERAY_CRDS="$kuberay_dir/crds"
export MANYMODELS_KWOK_STAGES="$KWOK_DIR/kwok-stages.yaml"
export MANYMODELS_MONITORING_CRDS="$MONITORING_DIR"
EOF
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
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
}

build_coredns() {
  mkdir -p "$STAGE/bin"
  (cd "$ROOT/ci/e2e/coredns" && go build -trimpath -ldflags "-s -w" -o "$STAGE/bin/coredns" .)
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
  # built from a copy of the module: `go install MODULE@VERSION` also asks the proxy for the module's
  # version list (deprecation check), which this proxy answers with 403 for ray-operator
  local dir
  dir=$(module_dir "$KUBERAY_MODULE@$KUBERAY_VERSION")
  mkdir -p "$STAGE/bin" "$STAGE/crds"
  LDFLAGS="-s -w" build_from_copy "$KUBERAY_MODULE@$KUBERAY_VERSION" . "$STAGE/bin/ray-operator"
  cp "$dir"/config/crd/bases/*.yaml "$STAGE/crds/"
  chmod -R u+w "$STAGE/crds"
}

copy_monitoring_crds() {
  local dir crd
  dir=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
  for crd in "${MONITORING_CRDS[@]}"; do cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" "$STAGE/"; done
  chmod u+w "$STAGE"/*.yaml
}

kuberay_built() { [[ -f $TOOLS/kuberay-operator-$1/.ok ]]; }

case "${1:-install}" in
  env) KUBERAY_VERSION=$(kuberay_version kuberay_built); print_env; exit 0 ;;
  install) ;;
  *) echo "usage: $0 [install|env]" >&2; exit 2 ;;
esac

KUBERAY_VERSION=$(kuberay_version kuberay_built)
"$ROOT/ci/chart-tools.sh" >/dev/null   # helm (cached)
install_once "$TOOLS/kuberay-operator-$KUBERAY_VERSION" "KubeRay operator $KUBERAY_VERSION + CRDs" build_kuberay
install_once "$KWOK_DIR" "kwok $KWOK_VERSION" build_kwok
install_once "$MONITORING_DIR" "${MONITORING_CRDS[*]} CRDs (prometheus-operator $PROMETHEUS_OPERATOR_VERSION)" \
  copy_monitoring_crds
install_once "$ETCD_DIR" "etcd $ETCD_VERSION" build_etcd
install_once "$KUBE_DIR" "kube-apiserver/controller-manager/scheduler/kubectl/kubelet/kube-proxy v$KUBE_VERSION" build_kube
install_once "$COREDNS_DIR" "CoreDNS $COREDNS_VERSION" build_coredns
print_env
