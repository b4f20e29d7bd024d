#!/usr/bin/env bash
# A real Kubernetes control plane on loopback ports, with kwok's fake nodes and pods: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kwok -- and, on request, the KubeRay operator
# on the host. Every process is started in the background and stopped by the pid recorded in DIR/pids/.
#
#   ci/e2e-cluster.sh up DIR         start the control plane; writes DIR/kubeconfig
#   ci/e2e-cluster.sh operator DIR   install the KubeRay CRDs (server-side apply) and start the operator,
#                                    with a stand-in for the head pods' dashboards (DIR/dashboard-stub.url)
#   ci/e2e-cluster.sh down DIR       stop everything started in DIR (reverse order), remove DIR
#
# Tools come from ci/e2e-tools.sh (PATH and MANYMODELS_KUBERAY_CRDS from `ci/e2e-tools.sh env`).
# Auth: a static admin token (group system:masters) over TLS with the apiserver's self-signed
# certificate (kubeconfig: insecure-skip-tls-verify, loopback only); RBAC authorization is on, so the
# chart's Roles/ClusterRoles are really evaluated by the apiserver.
set -euo pipefail

cmd=${1:?usage: $0 up|operator|down DIR}
DIR=${2:?usage: $0 up|operator|down DIR}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, log
use_python

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start NAME command... : background process, pid in DIR/pids/NAME, output in DIR/logs/NAME.log
start() {
  local name=$1; shift
  "$@" >"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/pids/$name"
  echo "$name" >>"$DIR/pids/order"
}

alive() { kill -0 "$(cat "$DIR/pids/$1")" 2>/dev/null; }

wait_until() {  # what timeout_s command...
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then log "timed out waiting for $what"; return 1; fi
    sleep 0.5
  done
}

stop_all() {
  [[ -f $DIR/pids/order ]] || return 0
  local name pid i
  for name in $(tac "$DIR/pids/order"); do
    pid=$(cat "$DIR/pids/$name" 2>/dev/null) || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      if kill -0 "$pid" 2>/dev/null; then log "$name (pid $pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$DIR/pids/$name"
  done
  rm -f "$DIR/pids/order"
}

up() {
  mkdir -p "$DIR"/{pids,logs,pki,etcd}
  local etcd_port peer_port api_port kcm_port sched_port kwok_port token
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  kcm_port=$(free_port); sched_port=$(free_port); kwok_port=$(free_port)
  token=$(openssl rand -hex 24)
  openssl genrsa -out "$DIR/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$DIR/pki/sa.key" -pubout -out "$DIR/pki/sa.pub" 2>/dev/null
  echo "$token,e2e-admin,e2e-admin,system:masters" >"$DIR/pki/tokens.csv"
  cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:$api_port", insecure-skip-tls-verify: true}
users:
- name: e2e-admin
  user: {token: "$token"}
contexts:
- name: e2e
  context: {cluster: e2e, user: e2e-admin, namespace: default}
current-context: e2e
EOF
  chmod 600 "$DIR/kubeconfig" "$DIR/pki/tokens.csv"
  local kc=$DIR/kubeconfig

  start etcd etcd --name e2e --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "e2e=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync --snapshot-count 10000 --log-level warn
  wait_until "etcd" 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

  start kube-apiserver kube-apiserver --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" --cert-dir "$DIR/pki" \
    --token-auth-file "$DIR/pki/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true --endpoint-reconciler-type none
  wait_until "kube-apiserver /readyz" 120 kubectl --kubeconfig "$kc" get --raw /readyz

  start kube-controller-manager kube-controller-manager --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
    --service-account-private-key-file "$DIR/pki/sa.key" --use-service-account-credentials=false \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route'
  start kube-scheduler kube-scheduler --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false
  start kwok kwok --kubeconfig "$kc" --server-address "127.0.0.1:$kwok_port" \
    --config "${MANYMODELS_KWOK_STAGES:?run via ci/e2e-tools.sh env}" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr 10.244.0.0/16 --node-ip 10.0.0.1
  wait_until "the default ServiceAccount" 60 kubectl --kubeconfig "$kc" -n default get serviceaccount default
  local name
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
    alive "$name" || { log "$name exited; see $DIR/logs/$name.log"; tail -20 "$DIR/logs/$name.log" >&2; return 1; }
  done
  log "control plane up: https://127.0.0.1:$api_port (kubeconfig $kc; $(kube-apiserver --version))"
}

operator() {
  local kc=$DIR/kubeconfig crds=${MANYMODELS_KUBERAY_CRDS:?run via ci/e2e-tools.sh env}
  # the CRDs are too big for client-side apply's last-applied annotation: server-side apply
  kubectl --kubeconfig "$kc" apply --server-side --force-conflicts -f "$crds" >&2
  kubectl --kubeconfig "$kc" wait --for condition=Established --timeout 60s \
    crd/rayclusters.ray.io crd/rayservices.ray.io crd/rayjobs.ray.io >&2
  # kwok's head pods run no Ray: the operator's plain-HTTP calls to a head (Serve status/config on the
  # dashboard, the Serve proxy's health) go through HTTP_PROXY to a stand-in that answers as that head
  # would (tests/e2e/dashboard_stub.py; docs/e2e.md). HTTPS to the API server on 127.0.0.1 is not proxied.
  start dashboard-stub "$PYTHON" "$ROOT/tests/e2e/dashboard_stub.py" --url-file "$DIR/dashboard-stub.url"
  wait_until "the dashboard stub" 20 test -s "$DIR/dashboard-stub.url"
  local stub
  stub=$(cat "$DIR/dashboard-stub.url")
  start ray-operator env KUBECONFIG="$kc" HTTP_PROXY="$stub" http_proxy="$stub" NO_PROXY= no_proxy= \
    ray-operator -enable-leader-election=false \
    -metrics-addr "127.0.0.1:$(free_port)" -health-probe-bind-address "127.0.0.1:$(free_port)" \
    -log-stdout-encoder console
  sleep 2
  alive ray-operator || { log "ray-operator exited"; tail -20 "$DIR/logs/ray-operator.log" >&2; return 1; }
  log "KubeRay operator ${MANYMODELS_KUBERAY_VERSION:-?} running (pid $(cat "$DIR/pids/ray-operator"));" \
    "head dashboards stubbed at $stub"
}

case $cmd in
  up)
    if [[ -s $DIR/pids/order ]]; then log "$DIR already has a control plane (ci/e2e-cluster.sh down $DIR)"; exit 1; fi
    trap 'rc=$?; if ((rc)); then log "startup failed; stopping"; stop_all; fi' EXIT; up; trap - EXIT ;;
  operator) operator ;;
  down) stop_all; rm -rf "$DIR"; log "stopped" ;;
  *) echo "usage: $0 up|operator|down DIR" >&2; exit 2 ;;
esac
