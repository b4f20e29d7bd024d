#!/usr/bin/env bash
# End-to-end proof of deployment; `make test-e2e` runs all three parts:
#   k8s  a real control plane (etcd, kube-apiserver, controller-manager, scheduler) with kwok's fake
#        nodes/pods and the real KubeRay operator on the host: server-side validation, the operator
#        dependency, helm install of the default values and every cloud file onto matching (fake)
#        nodes, uninstall                                      -> tests/e2e/lifecycle.py
#        the training RayJob, its CronJob, submitter and RBAC  -> tests/e2e/training.py
#   ray  the chart's rendered serveConfigV2 on a real local Ray (dashboard REST API, token auth), model
#        rollout under load with zero failed requests         -> tests/e2e/ray_rollout.py
#   node a real one-node cluster (ci/e2e-node.sh: kubelet, containerd, kube-proxy, CoreDNS) running the
#        CPU image and the KubeRay operator as pods: the README's user path, rollout, cluster change,
#        replica kill, rollback, the training RayJob (GPU image), uninstall -> tests/e2e/node_path.py
#        (needs root and the private dockerd: run it under ci/image-env.sh, after `make image`)
#
#   ci/e2e.sh [all|k8s|ray|node]      (default all: k8s and ray)
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
  "$PYTHON" tests/e2e/lifecycle.py --phase install-matrix
  "$PYTHON" tests/e2e/training.py
  "$PYTHON" tests/e2e/lifecycle.py --phase value-changes
  "$PYTHON" tests/e2e/lifecycle.py --phase node-shapes
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

node() {
  k8s_tools
  local t=$SECONDS work serving training images
  serving=${MM_IMAGE_REPOSITORY:-ghcr.io/manymodels/manymodels}:$(chart_field appVersion)-cpu
  docker image inspect "$serving" >/dev/null 2>&1 || { log "$serving is not built: make image"; return 1; }
  # the training RayJob's pods run the GPU variant (torch); on CPU-only nodes too
  training=${serving%-cpu}
  docker image inspect "$training" >/dev/null 2>&1 || { log "$training is not built: make image-gpu-build"; return 1; }
  images=$(ci/node-images.sh)
  work=$(mktemp -d /tmp/mm-e2e-node.XXXXXX)
  chmod 755 "$work"   # the catalog under it is read by the pods' user
  # shellcheck disable=SC2064
  trap "rc=\$?; ci/e2e-node.sh down $work/cluster || rc=1; rm -rf $work; exit \$rc" EXIT
  trap 'exit 130' INT TERM
  ci/e2e-node.sh up "$work/cluster"
  # shellcheck disable=SC2086
  ci/e2e-node.sh load "$work/cluster" $images "$serving" "$training"
  KUBECONFIG=$work/cluster/kubeconfig "$PYTHON" tests/e2e/node_path.py --work "$work" \
    --operator-tag "$MANYMODELS_KUBERAY_VERSION"
  log "node part passed in $((SECONDS - t)) s (teardown follows)"
}

case $WHAT in
  all) k8s; ray ;;
  k8s) k8s ;;
  ray) ray ;;
  node) node ;;
  *) echo "usage: $0 [all|k8s|ray|node]" >&2; exit 2 ;;
esac
log "passed ($WHAT) in $((SECONDS - t0)) s"
