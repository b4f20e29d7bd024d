#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine: the control plane of ci/e2e-cluster.sh (its
# apiserver on the node's address), plus containerd (Debian's, a private instance), the CNI bridge,
# kubelet, kube-proxy (iptables mode) and CoreDNS as cluster DNS. Pods really run. Every process is
# started in the background and stopped by pid; the host is restored on the way down.
#
#   ci/e2e-node.sh up DIR              start it all; DIR/kubeconfig, DIR/redis/env (a TLS Redis)
#   ci/e2e-node.sh load DIR IMAGE...   `docker save IMAGE | ctr import` into the node's containerd
#                                      (DOCKER_HOST from ci/image-env.sh); nothing is ever pulled
#   ci/e2e-node.sh down DIR            stop everything, restore the host, then verify that it is as found
#   ci/e2e-node.sh verify-clean        only the verification (exit 1 and a list when something is left)
#
# Root is needed (kubelet, containerd, iptables). What the node changes on the host and the teardown
# undoes: kernel sysctls kubelet and kube-proxy set (saved to $HOST_STATE before, written back after),
# iptables/ip6tables chains KUBE-* and CNI-* (and every rule using them), the bridge mm-cni0 and its
# network namespaces, the kubepods cgroups, mounts under DIR, folders kubelet creates at fixed paths.
# Tools come from ci/e2e-tools.sh (PATH from `ci/e2e-tools.sh env`); Debian's containerd, runc and the
# CNI plugins are installed when missing.
set -euo pipefail

cmd=${1:?usage: $0 up|load|down DIR | verify-clean}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, log, proc_*, apt_ensure, ...
use_python

NODE_NAME=e2e-node
BRIDGE=mm-cni0
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
CNI_BIN=/usr/lib/cni
# Survives a crash of this script, so that the next `down` can still restore what the last `up` saw.
HOST_STATE=${MANYMODELS_NODE_STATE:-/var/tmp/manymodels-e2e-node}
# The sysctls kubelet (vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops,
# kernel.keys.root_max*), kube-proxy (route_localnet, nf_conntrack_*, bridge-nf-call-*) and the CNI
# bridge (ip_forward) may set.
SYSCTLS='^(kernel\.(panic|panic_on_oops|keys\.root_max(keys|bytes))|vm\.(overcommit_memory|panic_on_oom)|net\.ipv4\.(ip_forward|conf\.(all|default)\.route_localnet)|net\.bridge\.bridge-nf-call-(iptables|ip6tables)|net\.netfilter\.nf_conntrack_(max|tcp_timeout_established|tcp_timeout_close_wait))$'
# Fixed paths kubelet, containerd or the CNI plugins create whatever their configured roots: removed
# on the way down when they were not there before.
FIXED_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /var/run/netns /run/containerd/s
  /etc/cni /opt/cni)

# The node's address: the source address of the default route (pods reach it through the bridge's
# gateway; the apiserver and CoreDNS listen on it).
node_ip() {
  local ip
  ip=$(ip -4 -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
  [[ -n $ip ]] || ip=$(hostname -I 2>/dev/null | awk '{print $1}')
  [[ -n $ip ]] || { log "cannot tell this machine's IPv4 address (no default route)"; return 1; }
  echo "$ip"
}

ensure_packages() {
  # redis-tools: Debian ships the Redis server binary in it as redis-check-rdb (the server package adds
  # only a symlink and a system service, which we do not want started); openssl signs its TLS certificate
  apt_ensure containerd:containerd runc:runc ctr:containerd iptables:iptables \
    "$CNI_BIN/bridge:containernetworking-plugins" redis-check-rdb:redis-tools redis-cli:redis-tools openssl:openssl
  local tool
  for tool in kubelet kube-proxy coredns kubectl; do
    command -v "$tool" >/dev/null || { log "$tool not on PATH: eval \"\$(ci/e2e-tools.sh)\" first"; return 1; }
  done
}

# --- host state ----------------------------------------------------------------------------------------
save_host_state() {
  if [[ -f $HOST_STATE/sysctls ]]; then
    log "$HOST_STATE holds the host state of an earlier run that did not finish; keeping it"
    return 0
  fi
  mkdir -p "$HOST_STATE"
  sysctl -a -r "$SYSCTLS" 2>/dev/null >"$HOST_STATE/sysctls.tmp"
  local p
  for p in "${FIXED_PATHS[@]}"; do [[ -e $p ]] || echo "$p"; done >"$HOST_STATE/absent-paths"
  mv "$HOST_STATE/sysctls.tmp" "$HOST_STATE/sysctls"
}

restore_sysctls() {
  [[ -f $HOST_STATE/sysctls ]] || return 0
  local line key value now
  while read -r line; do
    key=${line%% = *}; value=${line#* = }
    [[ -n $key && -n $value && $line == *" = "* ]] || continue
    now=$(sysctl -n "$key" 2>/dev/null) || continue
    if [[ $now != "$value" ]]; then
      sysctl -q -w "$key=$value" >/dev/null || log "could not restore $key=$value (now $now)"
    fi
  done <"$HOST_STATE/sysctls"
}

# every iptables/ip6tables rule and chain whose text names KUBE-* or CNI-*
clean_iptables() {
  local fam table
  for fam in iptables ip6tables; do
    command -v "$fam-save" >/dev/null || continue
    for table in filter nat mangle raw; do
      if "$fam-save" -t "$table" 2>/dev/null | grep -qE 'KUBE-|CNI-'; then
        "$fam-save" -t "$table" | grep -vE 'KUBE-|CNI-' | "$fam-restore" -w 5 -T "$table" \
          || log "could not clean $fam table $table"
      fi
    done
  done
}

kill_cgroup_procs() {
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    [[ -d $d ]] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
}

remove_cgroups() {
  local d i
  for i in 1 2 3 4 5; do
    for d in /sys/fs/cgroup/*/kubepods; do
      [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null || return 0
    kill_cgroup_procs; sleep 1
  done
}

unmount_under() {  # DIR
  local m
  [[ -n $1 ]] || return 0
  for m in $(findmnt -rn -o TARGET | grep -F "$1/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
}

# --- up ------------------------------------------------------------------------------------------------
write_configs() {
  local d=$DIR/node
  mkdir -p "$d"/{containerd,cni/net.d,cni/ipam,kubelet,pod-logs}
  cat >"$d/containerd/config.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$d/containerd/containerd.sock"
[ttrpc]
  address = "$d/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # this machine's capability bounding set lacks CAP_SYS_RESOURCE: without this every sandbox fails
  # ("runc create failed: ... can't get final child's PID from pipe: EOF" / oom_score_adj: permission denied)
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$d/cni/net.d"
EOF
  # The firewall plugin admits the bridge's traffic in FORWARD (Docker sets FORWARD's policy to DROP).
  cat >"$d/cni/net.d/10-manymodels-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "manymodels-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$d/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall"}
  ]
}
EOF
  cat >"$d/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# this machine is cgroup v1 (hybrid), has swap accounting off and no systemd as PID 1
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$d/containerd/containerd.sock
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
podLogsDir: $d/pod-logs
staticPodPath: ""
# the images are imported, never pulled: never garbage-collect them, never evict for a full disk
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
rotateCertificates: false
EOF
  cat >"$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $DIR/kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $CLUSTER_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
nodePortAddresses: ["$NODE_IP/32"]
# leave the host's conntrack table settings alone, and no NodePorts on 127.0.0.1 (route_localnet)
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
  cat >"$d/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $DIR/kubeconfig e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 30
    loadbalance
}
EOF
}

node_ready() {
  [[ $(kubectl --kubeconfig "$DIR/kubeconfig" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

up() {
  if [[ $(id -u) -ne 0 ]]; then log "needs root (kubelet, containerd, iptables): run as root"; return 1; fi
  if pgrep -x kubelet >/dev/null; then log "a kubelet is already running on this machine: refusing to start a second node"; return 1; fi
  ensure_packages
  # leftovers of an earlier run that was killed before its teardown
  if ip link show "$BRIDGE" >/dev/null 2>&1 || compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null; then
    log "cleaning up what an earlier run left behind"; host_teardown ""
  fi
  save_host_state
  NODE_IP=$(node_ip)
  PAUSE_IMAGE=${PAUSE_IMAGE:-manymodels.local/pause:1}
  KUBELET_PORT=$(free_port); KUBELET_HEALTHZ_PORT=$(free_port)
  COREDNS_HEALTH_PORT=$(free_port); COREDNS_READY_PORT=$(free_port)
  E2E_NODE_IP=$NODE_IP "$ROOT/ci/e2e-cluster.sh" up "$DIR"
  local kc=$DIR/kubeconfig
  write_configs

  proc_start containerd containerd --config "$DIR/node/containerd/config.toml" --log-level warn
  wait_until "containerd" 30 ctr -a "$DIR/node/containerd/containerd.sock" version
  proc_start kubelet kubelet --config "$DIR/node/kubelet/config.yaml" --kubeconfig "$kc" \
    --root-dir "$DIR/node/kubelet" --cert-dir "$DIR/node/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
  proc_start kube-proxy kube-proxy --config "$DIR/node/kube-proxy.yaml"
  proc_start coredns coredns -conf "$DIR/node/Corefile"
  wait_until "node $NODE_NAME Ready" 90 node_ready || { proc_check kubelet; tail -20 "$DIR/logs/kubelet.log" >&2; return 1; }
  wait_until "CoreDNS ready" 60 curl -fsS "http://127.0.0.1:$COREDNS_READY_PORT/ready"
  start_redis
  proc_check containerd kubelet kube-proxy coredns redis
  log "node $NODE_NAME Ready at $NODE_IP ($(kubelet --version), containerd $(containerd --version | awk '{print $3}'), CoreDNS $COREDNS_VERSION)"
}

# A Redis for GCS fault tolerance the way managed offerings run it (Azure Cache for Redis, Memorystore
# with in-transit encryption): TLS only, on the node's address, a private CA, an ACL user with a password
# and the default user off. DIR/redis/env tells the tests the address, user, password and CA file.
start_redis() {
  local r=$DIR/redis port password
  mkdir -p "$r"
  port=$(free_port)
  password=$(openssl rand -hex 16)
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$r/ca.key" -out "$r/ca.crt" -days 2 -subj /CN=manymodels-e2e-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$r/server.key" -out "$r/server.csr" -subj /CN=redis 2>/dev/null
  openssl x509 -req -in "$r/server.csr" -CA "$r/ca.crt" -CAkey "$r/ca.key" -CAcreateserial -out "$r/server.crt" \
    -days 2 -extfile <(echo "subjectAltName=IP:$NODE_IP") 2>/dev/null
  cat >"$r/redis.conf" <<EOF
port 0
bind $NODE_IP
tls-port $port
tls-cert-file $r/server.crt
tls-key-file $r/server.key
tls-ca-cert-file $r/ca.crt
tls-auth-clients no
user default off
user ray on >$password ~* &* +@all
dir $r
save ""
appendonly no
EOF
  chmod 600 "$r/redis.conf" "$r"/*.key
  proc_start redis bash -c "exec -a redis-server redis-check-rdb $r/redis.conf"
  printf 'REDIS_ADDRESS=rediss://%s:%s\nREDIS_USER=ray\nREDIS_PASSWORD=%s\nREDIS_CA=%s\n' \
    "$NODE_IP" "$port" "$password" "$r/ca.crt" >"$r/env"
  wait_until "Redis (TLS) on $NODE_IP:$port" 30 \
    redis-cli --tls --cacert "$r/ca.crt" -h "$NODE_IP" -p "$port" --user ray --pass "$password" --no-auth-warning ping
  log "Redis $(redis-cli --version | awk '{print $2}') for GCS fault tolerance: rediss://$NODE_IP:$port (user ray, private CA)"
}

load() {
  local img have sock=$DIR/node/containerd/containerd.sock t=$SECONDS
  for img in "$@"; do
    docker save "$img" | ctr -a "$sock" -n k8s.io images import - >/dev/null
    # the list first: `grep -q` closing the pipe early would fail the pipeline under pipefail
    have=$(ctr -a "$sock" -n k8s.io images ls -q)
    grep -qxF "$img" <<<"$have" || { log "$img: not in containerd after import"; return 1; }
  done
  log "imported $* in $((SECONDS - t)) s"
}

# --- down ----------------------------------------------------------------------------------------------
# host_teardown DIR : everything the node put on the host (DIR may be empty: leftovers of a killed run)
host_teardown() {
  local d=$1 sock ns
  if [[ -n $d ]]; then
    sock=$d/node/containerd/containerd.sock
    if [[ -S $sock ]] && proc_alive containerd; then
      # containers the kubelet did not stop: kill their tasks so that containerd can go
      for ns in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
        ctr -a "$sock" -n k8s.io tasks kill -a -s SIGKILL "$ns" 2>/dev/null || true
      done
    fi
    proc_stop containerd
    pkill -KILL -f "containerd-shim-runc-v2 .*-address $d/" 2>/dev/null || true
  fi
  kill_cgroup_procs
  if [[ -d /var/run/netns ]]; then
    for ns in /var/run/netns/cni-*; do [[ -e $ns ]] && ip netns delete "$(basename "$ns")" 2>/dev/null; done
  fi
  [[ -n $d ]] && unmount_under "$d"
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  clean_iptables
  remove_cgroups
  restore_sysctls
  if [[ -f $HOST_STATE/absent-paths ]]; then
    local p
    while read -r p; do [[ -n $p && -e $p ]] && { unmount_under "$p"; rm -rf "$p"; }; done <"$HOST_STATE/absent-paths"
  fi
  rm -rf "$HOST_STATE"
}

down() {
  local kc=$DIR/kubeconfig
  PROCS=$DIR
  if proc_alive kubelet && proc_alive kube-apiserver; then
    # let the kubelet stop every pod the CRI way (CNI DEL releases addresses and rules)
    kubectl --kubeconfig "$kc" delete pods --all -A --force --grace-period=0 --wait=false >/dev/null 2>&1 || true
    local sock=$DIR/node/containerd/containerd.sock i
    for i in $(seq 1 60); do
      [[ -z $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null) ]] && break
      sleep 0.5
    done
  fi
  proc_stop coredns; proc_stop kube-proxy; proc_stop kubelet; proc_stop redis
  SYSCTLS_BEFORE=$(cat "$HOST_STATE/sysctls" 2>/dev/null || true)
  host_teardown "$DIR"
  "$ROOT/ci/e2e-cluster.sh" down "$DIR"
  verify_clean
}

# What must not be left on the host after `down`; prints each leftover, fails when there is one.
verify_clean() {
  local left=() fam p
  pgrep -f "containerd-shim-runc-v2 .*-address ${DIR:-/nonexistent}/" >/dev/null && left+=("containerd shims")
  for p in kubelet kube-proxy coredns; do
    pgrep -x "$p" >/dev/null && left+=("a $p process")
  done
  # start_redis's server calls itself "redis-server <node address>:<port>" (a system Redis would be on
  # 127.0.0.1)
  pgrep -f "^redis-server $(node_ip 2>/dev/null || echo none):" >/dev/null && left+=("the e2e Redis")
  for fam in iptables ip6tables; do
    command -v "$fam-save" >/dev/null || continue
    "$fam-save" 2>/dev/null | grep -qE 'KUBE-|CNI-' && left+=("$fam rules/chains KUBE-*/CNI-*")
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
  compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null && left+=("kubepods cgroups")
  compgen -G '/var/run/netns/cni-*' >/dev/null && left+=("network namespaces /var/run/netns/cni-*")
  [[ -n ${DIR:-} ]] && findmnt -rn -o TARGET | grep -qF "$DIR/" && left+=("mounts under $DIR")
  [[ -e $HOST_STATE ]] && left+=("$HOST_STATE (sysctls not restored)")
  if [[ -n ${SYSCTLS_BEFORE:-} ]]; then
    local changed
    changed=$(diff <(echo "$SYSCTLS_BEFORE") <(sysctl -a -r "$SYSCTLS" 2>/dev/null) | grep '^>' || true)
    [[ -z $changed ]] || left+=("sysctls differ from before: ${changed//$'\n'/; }")
  fi
  if ((${#left[@]})); then
    log "the host is NOT as it was; left behind:"; printf '  - %s\n' "${left[@]}" >&2
    return 1
  fi
  log "host clean: no node process, iptables chain, bridge, cgroup, netns or mount left; sysctls restored"
}

case $cmd in
  up)
    DIR=${2:?usage: $0 up DIR}; PROCS=$DIR
    mkdir -p "$DIR"
    trap 'rc=$?; if ((rc)); then log "startup failed; tearing down"; down || true; fi' EXIT
    up
    trap - EXIT ;;
  load) DIR=${2:?usage: $0 load DIR IMAGE...}; shift 2; load "$@" ;;
  down) DIR=${2:?usage: $0 down DIR}; down ;;
  verify-clean) DIR=${2:-}; verify_clean ;;
  *) echo "usage: $0 up|load|down DIR | verify-clean" >&2; exit 2 ;;
esac
