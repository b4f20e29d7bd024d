#!/usr/bin/env bash
# Installs the pinned chart toolchain from the Go module proxy (and one PyPI wheel for schemas) into a
# per-user cache OUTSIDE the repo, so that CI in a fresh clone reuses it. Idempotent; fast when cached.
#
#   ci/chart-tools.sh            build/install whatever is missing, then print the tool paths
#   ci/chart-tools.sh path       print the PATH fragment (bin dirs), nothing else (installs nothing)
#   ci/chart-tools.sh env        print shell `export` lines for the tool and schema locations
#
# Overrides: MANYMODELS_TOOLS_DIR (cache root), PYTHON (python with pip + pyyaml), GOPROXY/GOFLAGS as usual.
# Versions: ci/versions.env. Cold build on 2 cores: ~3 min (docs/testing.md; helm, helm-unittest and the
# lock tool share most of Go's build cache), plus up to ~1.5 min for promtool (measured alone, below).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, TOOLS, versions, install_once, module_dir, ...
use_python
export CGO_ENABLED=0
# golang.stackrox.io is not served by every module proxy mirror; the same module is published under its
# GitHub path too, so we download it by that path and build it from a copy (its go.mod says golang.stackrox.io).
KUBE_LINTER_MODULE=github.com/stackrox/kube-linter

HELM_DIR=$TOOLS/helm-$HELM_VERSION
UNITTEST_DIR=$TOOLS/helm-unittest-$HELM_UNITTEST_VERSION
KUBECONFORM_DIR=$TOOLS/kubeconform-$KUBECONFORM_VERSION
KUBE_LINTER_DIR=$TOOLS/kube-linter-$KUBE_LINTER_VERSION
PROMTOOL_DIR=$TOOLS/promtool-$PROMETHEUS_VERSION
# the lock tool is keyed on helm's version and on its own source, so an edit rebuilds it
CHARTLOCK_SRC=$ROOT/ci/chartlock/main.go
CHARTLOCK_KEY=$(sha256sum "$CHARTLOCK_SRC" | cut -c1-12)
CHARTLOCK_DIR=$TOOLS/chartlock-$HELM_VERSION-$CHARTLOCK_KEY
K8S_SCHEMA_DIR=$TOOLS/schemas/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION-v$KUBE_VERSION
# the prometheus-operator CRDs converted to schemas; the directory names them, so adding one rebuilds
MONITORING_CRDS=(podmonitors prometheusrules servicemonitors)
MONITORING_SCHEMA_DIR=$TOOLS/schemas/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION-$(IFS=-; echo "${MONITORING_CRDS[*]}")

print_path() {
  echo "$HELM_DIR/bin:$UNITTEST_DIR/bin:$KUBECONFORM_DIR/bin:$KUBE_LINTER_DIR/bin:$CHARTLOCK_DIR/bin:$PROMTOOL_DIR/bin"
}

print_env() {
  cat <<EOF
export PATH="$(print_path):\$PATH"
export HELM_PLUGINS="$UNITTEST_DIR/plugins"
export MANYMODELS_KUBE_VERSION="$KUBE_VERSION"
export MANYMODELS_K8S_SCHEMAS="$K8S_SCHEMA_DIR"
export MANYMODELS_MONITORING_SCHEMAS="$MONITORING_SCHEMA_DIR"
export MANYMODELS_TOOLS_DIR="$TOOLS"
EOF
}

# crd_schemas OUT_DIR CRD.yaml... : kubeconform's own openapi2jsonschema.py (pinned with kubeconform),
# files named <group>-<kind>_<version>.json for -schema-location '{{.Group}}-{{.ResourceKind}}_{{.ResourceAPIVersion}}.json'
crd_schemas() {
  local out=$1 script; shift
  script=$(module_dir "github.com/yannh/kubeconform@$KUBECONFORM_VERSION") || return 1
  script=$script/scripts/openapi2jsonschema.py
  mkdir -p "$out"
  local files=() f
  for f in "$@"; do files+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"); done
  (cd "$out" && FILENAME_FORMAT='{fullgroup}-{kind}_{version}' DENY_ROOT_ADDITIONAL_PROPERTIES=1 \
    "$PYTHON" "$script" "${files[@]}" >/dev/null)
}

case "${1:-install}" in
  path) print_path; exit 0 ;;
  env) print_env; exit 0 ;;
  crd-schemas) shift; crd_schemas "$@"; exit 0 ;;
  install) ;;
  *) echo "usage: $0 [install|path|env|crd-schemas OUT_DIR CRD.yaml...]" >&2; exit 2 ;;
esac

mkdir -p "$TOOLS"

install_helm() {
  GOBIN=$STAGE/bin go install -trimpath -ldflags "\
-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${KUBE_VERSION%%.*} \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(cut -d. -f2 <<<"$KUBE_VERSION")" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}
install_once "$HELM_DIR" "helm $HELM_VERSION" install_helm

install_unittest() {
  mkdir -p "$STAGE/bin" "$STAGE/plugins/unittest"
  LDFLAGS="-X github.com/helm-unittest/helm-unittest/internal/build.version=$HELM_UNITTEST_VERSION" \
    build_from_copy "github.com/helm-unittest/helm-unittest@$HELM_UNITTEST_VERSION" cmd/helm-unittest \
    "$STAGE/plugins/unittest/untt-linux-amd64"
  cp "$(module_dir "github.com/helm-unittest/helm-unittest@$HELM_UNITTEST_VERSION")/plugin.yaml" \
    "$STAGE/plugins/unittest/plugin.yaml"
  chmod u+w "$STAGE/plugins/unittest/plugin.yaml"
  # standalone entry point (the binary runs without helm; HELM_PLUGINS also makes `helm unittest` work)
  ln -s ../plugins/unittest/untt-linux-amd64 "$STAGE/bin/helm-unittest"
}
install_once "$UNITTEST_DIR" "helm-unittest $HELM_UNITTEST_VERSION" install_unittest

install_kubeconform() {
  GOBIN=$STAGE/bin go install -trimpath -ldflags "-X main.version=$KUBECONFORM_VERSION" \
    "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
}
install_once "$KUBECONFORM_DIR" "kubeconform $KUBECONFORM_VERSION" install_kubeconform

install_kube_linter() {
  mkdir -p "$STAGE/bin"
  LDFLAGS="-X golang.stackrox.io/kube-linter/internal/version.version=${KUBE_LINTER_VERSION#v}" \
    build_from_copy "$KUBE_LINTER_MODULE@$KUBE_LINTER_VERSION" cmd/kube-linter "$STAGE/bin/kube-linter"
}
install_once "$KUBE_LINTER_DIR" "kube-linter $KUBE_LINTER_VERSION" install_kube_linter

# promtool, for the chart's PrometheusRule (ci/test-chart.sh). Build tag remove_all_sd drops Prometheus'
# service discoveries (plugins/plugin_*.go: cloud SDKs promtool's rule checks and tests never use; the
# kubernetes one stays, promtool imports it directly). Cold on 2 cores with an empty Go build cache
# (module cache warm): ~95 s with the tag (3 min of CPU), ~4.5 min without (7.5 min of CPU).
install_promtool() {
  local src
  src=$(module_dir "github.com/prometheus/prometheus@$PROMETHEUS_VERSION")
  GOBIN=$STAGE/bin go install -tags remove_all_sd -trimpath -ldflags "\
-X github.com/prometheus/common/version.Version=$(cat "$src/VERSION") \
-X github.com/prometheus/common/version.Revision=$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
}
install_once "$PROMTOOL_DIR" "promtool $PROMETHEUS_VERSION" install_promtool

# The Chart.lock tool: ci/chartlock/main.go compiled INSIDE a copy of helm's module, because helm's
# dependency resolver (helm.sh/helm/v3/internal/resolver) is an internal package.
install_chartlock() {
  mkdir -p "$STAGE/bin"
  build_from_copy "helm.sh/helm/v3@$HELM_VERSION" cmd/manymodels-chartlock "$STAGE/bin/manymodels-chartlock" \
    "$CHARTLOCK_SRC"
}
install_once "$CHARTLOCK_DIR" "chartlock (helm $HELM_VERSION resolver)" install_chartlock

# Built-in kinds' JSON schemas for kubeconform, from the kubernetes-validate wheel (data only: the wheel
# is unzipped, not installed). Its schemas are standalone-strict already; we lay them out the way
# kubeconform's -schema-location template expects: <dir>/<kind>-<group>-<version>.json.
install_k8s_schemas() {
  local wheels
  wheels=$(mktemp -d)
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  "$PYTHON" "$ROOT/ci/k8s_schemas.py" "$wheels"/kubernetes_validate-*.whl "v$KUBE_VERSION" "$STAGE" >&2
  rm -rf "$wheels"
}
install_once "$K8S_SCHEMA_DIR" "Kubernetes v$KUBE_VERSION schemas (kubernetes-validate $KUBERNETES_VALIDATE_VERSION)" \
  install_k8s_schemas

install_monitoring_schemas() {
  local dir crd files=()
  dir=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
  for crd in "${MONITORING_CRDS[@]}"; do files+=("$dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml"); done
  crd_schemas "$STAGE" "${files[@]}"
}
install_once "$MONITORING_SCHEMA_DIR" "${MONITORING_CRDS[*]} schemas (prometheus-operator $PROMETHEUS_OPERATOR_VERSION)" \
  install_monitoring_schemas

log "helm $("$HELM_DIR/bin/helm" version --template '{{.Version}}'), helm-unittest $HELM_UNITTEST_VERSION," \
  "kubeconform $("$KUBECONFORM_DIR/bin/kubeconform" -v), kube-linter $("$KUBE_LINTER_DIR/bin/kube-linter" version)," \
  "$("$PROMTOOL_DIR/bin/promtool" --version | head -1), schemas: Kubernetes v$KUBE_VERSION"
print_path
