#!/usr/bin/env bash
# A real Kubernetes control plane on loopback ports, with kwok's fake nodes and pods: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kwok -- and, on request, the KubeRay operator
# on the host. Every process is started in the background and stopped by the pid recorded in DIR/pids/.
#
#   ci/e2e-cluster.sh up DIR         start the control plane; writes DIR/kubeconfig
#   ci/e2e-cluster.sh operator DIR   install the KubeRay CRDs (server-side apply) and start the operator
#                                    on the host
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

PROCS=$DIR   # pids/ and logs/ of the processes started here (ci/lib.sh proc_*)

# pki ADDRESS : a throw-away CA, the apiserver's serving certificate (valid for ADDRESS, loopback and the
# `kubernetes` Service's names and ClusterIP, so pods verify it too) and the client certificate the
# apiserver presents to kubelets (group system:masters).
pki() {
  local p=$DIR/pki ip=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 -subj /CN=manymodels-e2e-ca \
    -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  cert() {  # NAME SUBJECT EXTENSIONS
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
      -keyout "$p/$1.key" -out "$p/$1.csr" 2>/dev/null
    openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 7 \
      -extfile <(printf '%b\n' "$3") -out "$p/$1.crt" 2>/dev/null
  }
  local san="IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
  san+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  [[ $ip == 127.0.0.1 ]] || san+=",IP:$ip"
  cert apiserver /CN=kube-apiserver "subjectAltName=$san\nextendedKeyUsage=serverAuth"
  cert kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
}

up() {
  mkdir -p "$DIR"/{pids,logs,pki,etcd}
  # E2E_NODE_IP (set by ci/e2e-node.sh): the apiserver listens on that address, so that pods reach it
  # through the `kubernetes` Service (whose endpoint it keeps there), and kwok is not started: a real
  # node joins instead.
  local ip=${E2E_NODE_IP:-127.0.0.1}
  local etcd_port peer_port api_port kcm_port sched_port kwok_port token
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  kcm_port=$(free_port); sched_port=$(free_port); kwok_port=$(free_port)
  token=$(openssl rand -hex 24)
  openssl genrsa -out "$DIR/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$DIR/pki/sa.key" -pubout -out "$DIR/pki/sa.pub" 2>/dev/null
  pki "$ip"
  echo "$token,e2e-admin,e2e-admin,system:masters" >"$DIR/pki/tokens.csv"
  cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://$ip:$api_port", certificate-authority: "$DIR/pki/ca.crt"}
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
  local node_flags=(--endpoint-reconciler-type none)
  if [[ -n ${E2E_NODE_IP:-} ]]; then
    node_flags=(--endpoint-reconciler-type lease --kubelet-preferred-address-types InternalIP,Hostname
      --kubelet-client-certificate "$DIR/pki/kubelet-client.crt" --kubelet-client-key "$DIR/pki/kubelet-client.key")
  fi

  proc_start etcd etcd --name e2e --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "e2e=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync --snapshot-count 10000 --log-level warn
  wait_until "etcd" 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

  proc_start kube-apiserver kube-apiserver --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$ip" --advertise-address "$ip" --secure-port "$api_port" \
    --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
    --client-ca-file "$DIR/pki/ca.crt" --token-auth-file "$DIR/pki/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true "${node_flags[@]}"
  wait_until "kube-apiserver /readyz" 120 kubectl --kubeconfig "$kc" get --raw /readyz

  proc_start kube-controller-manager kube-controller-manager --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
    --service-account-private-key-file "$DIR/pki/sa.key" --use-service-account-credentials=false \
    --root-ca-file "$DIR/pki/ca.crt" \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route'
  proc_start kube-scheduler kube-scheduler --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false
  local procs=(etcd kube-apiserver kube-controller-manager kube-scheduler)
  if [[ -z ${E2E_NODE_IP:-} ]]; then
    proc_start kwok kwok --kubeconfig "$kc" --server-address "127.0.0.1:$kwok_port" \
      --config "${MANYMODELS_KWOK_STAGES:?run via ci/e2e-tools.sh env}" \
      --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
      --cidr 10.244.0.0/16 --node-ip 10.0.0.1
    procs+=(kwok)
  fi
  wait_until "the default ServiceAccount" 60 kubectl --kubeconfig "$kc" -n default get serviceaccount default
  proc_check "${procs[@]}"
  log "control plane up: https://$ip:$api_port (kubeconfig $kc; $(kube-apiserver --version))"
}

operator() {
  local kc=$DIR/kubeconfig crds=${MANYMODELS_KUBERAY_CRDS:?run via ci/e2e-tools.sh env}
  # the CRDs are too big for client-side apply's last-applied annotation: server-side apply
  kubectl --kubeconfig "$kc" apply --server-side --force-conflicts -f "$crds" >&2
  kubectl --kubeconfig "$kc" wait --for condition=Established --timeout 60s \
    crd/rayclusters.ray.io crd/rayservices.ray.io crd/rayjobs.ray.io >&2
  # kwok's head pods run no Ray: the operator's calls to their dashboards fail and it keeps retrying;
  # what is checked here is what it builds (RayClusters, pods, Services). Real heads: ci/e2e-node.sh.
  proc_start ray-operator env KUBECONFIG="$kc" ray-operator -enable-leader-election=false \
    -metrics-addr "127.0.0.1:$(free_port)" -health-probe-bind-address "127.0.0.1:$(free_port)" \
    -log-stdout-encoder console
  sleep 2
  proc_check ray-operator
  log "KubeRay operator ${MANYMODELS_KUBERAY_VERSION:-?} running (pid $(cat "$DIR/pids/ray-operator"))"
}

case $cmd in
  up)
    if [[ -s $DIR/pids/order ]]; then log "$DIR already has a control plane (ci/e2e-cluster.sh down $DIR)"; exit 1; fi
    trap 'rc=$?; if ((rc)); then log "startup failed; stopping"; proc_stop_all; fi' EXIT; up; trap - EXIT ;;
  operator) operator ;;
  down) proc_stop_all; rm -rf "$DIR"; log "stopped" ;;
  *) echo "usage: $0 up|operator|down DIR" >&2; exit 2 ;;
esac
