#!/usr/bin/env bash
# End-to-end proof of deployment (project issue 5); `make test-e2e` runs it. Two parts:
#   k8s  a real control plane (etcd, kube-apiserver, controller-manager, scheduler) with kwok's fake
#        nodes/pods and the real KubeRay operator on the host: server-side validation, the operator
#        dependency, helm install of every values file, upgrade (model rollout / worker change: the
#        zero-downtime pending cluster), rollback, uninstall; the kwok head pods' Ray dashboard is a
#        stand-in (tests/e2e/dashboard_stub.py, docs/e2e.md)   -> tests/e2e/lifecycle.py
#   ray  the chart's rendered serveConfigV2 on a real local Ray (dashboard REST API, token auth), model
#        rollout under load with zero failed requests         -> tests/e2e/ray_rollout.py
#
#   ci/e2e.sh [all|k8s|ray]      (default all)
#
# PYTHON: a python with the app, ray[serve], httpx and pyyaml (the project venv). Tools come from
# ci/e2e-tools.sh (cached outside the repo). Every process is started on loopback ports and stopped by
# pid, also on failure or Ctrl-C.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, log
use_python
WHAT=${1:-all}
cd "$ROOT"
export RAY_USAGE_STATS_ENABLED=0

t0=$SECONDS
k8s_tools() {
  eval "$(ci/e2e-tools.sh)"
  log "tools ready in $((SECONDS - t0)) s: $(kube-apiserver --version), etcd $(etcd --version | sed -n 's/^etcd Version: //p')," \
    "kwok $(kwok --version 2>/dev/null | head -1), ray-operator $MANYMODELS_KUBERAY_VERSION (Chart.yaml pins $MANYMODELS_KUBERAY_PINNED), $(helm version --short)"
}

k8s() {
  k8s_tools
  local t=$SECONDS work
  work=$(mktemp -d /tmp/mm-e2e-k8s.XXXXXX)
  # shellcheck disable=SC2064
  trap "rc=\$?; if ((rc)); then log 'FAILED; last log lines:'; for f in $work/logs/*.log; do echo \"== \$f\"; tail -15 \"\$f\"; done >&2; fi; ci/e2e-cluster.sh down $work" EXIT
  trap 'exit 130' INT TERM
  ci/e2e-cluster.sh up "$work"
  export KUBECONFIG=$work/kubeconfig
  "$PYTHON" tests/e2e/lifecycle.py --phase operator-chart
  ci/e2e-cluster.sh operator "$work"
  MANYMODELS_E2E_DASHBOARD_STUB=$(cat "$work/dashboard-stub.url")
  export MANYMODELS_E2E_DASHBOARD_STUB
  "$PYTHON" tests/e2e/lifecycle.py --phase lifecycle
  ci/e2e-cluster.sh down "$work"
  trap - EXIT INT TERM
  log "k8s part passed in $((SECONDS - t)) s"
}

ray() {
  local t=$SECONDS
  ci/chart-tools.sh >/dev/null   # helm only (cached)
  PATH="$(ci/chart-tools.sh path):$PATH"
  "$PYTHON" tests/e2e/ray_rollout.py --helm "$(command -v helm)"
  log "ray part passed in $((SECONDS - t)) s"
}

case $WHAT in
  all) k8s; ray ;;
  k8s) k8s ;;
  ray) ray ;;
  *) echo "usage: $0 [all|k8s|ray]" >&2; exit 2 ;;
esac
log "passed ($WHAT) in $((SECONDS - t0)) s"
