# Shell logic shared by every CI script; sourced, never run:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sets ROOT (the repository, absolute), TOOLS (the tool cache outside the repo), every pinned version
# from ci/versions.env, and defines the helpers below. Nothing here assumes a warm cache, a venv made by
# an earlier target, or a particular working directory: every path it hands out is absolute.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=versions.env
source "$ROOT/ci/versions.env"
TOOLS=${MANYMODELS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/manymodels/tools}
KUBERAY_MODULE=github.com/ray-project/kuberay/ray-operator
LOG_NAME=${LOG_NAME:-$(basename "$0" .sh)}

log() { echo "$LOG_NAME: $*" >&2; }

# abs_cmd CMD : the absolute path of an executable. A path with a slash is made absolute against the
# current directory but NOT resolved through symlinks (a venv's python must stay the venv's); a bare
# name is looked up on PATH. Fails loudly when there is no such executable.
abs_cmd() {
  local cmd=$1
  if [[ $cmd == */* ]]; then
    [[ $cmd == /* ]] || cmd=$PWD/$cmd
  else
    cmd=$(command -v "$cmd") || { log "$1: not found on PATH"; return 1; }
  fi
  [[ -x $cmd ]] || { log "$cmd: no such executable"; return 1; }
  echo "$cmd"
}

# use_python : PYTHON (default python3) made absolute and exported, so that it still works after a `cd`
# and in child scripts.
use_python() {
  PYTHON=$(abs_cmd "${PYTHON:-python3}") || return 1
  export PYTHON
}

# timed NAME COMMAND... : runs the command and reports its wall time as a stage ("[stage] NAME ...");
# with MANYMODELS_STAGE_LOG set, also appends "NAME<TAB>seconds<TAB>exit status" to that file
# (`make test-cold` builds its timing table from it). Returns the command's status.
timed() {
  local name=$1 start=$SECONDS rc=0
  shift
  "$@" || rc=$?
  local took=$((SECONDS - start))
  if ((rc)); then
    echo "[stage] $name: FAILED (exit $rc) after $took s" >&2
  else
    echo "[stage] $name: passed in $took s" >&2
  fi
  if [[ -n ${MANYMODELS_STAGE_LOG:-} ]]; then
    printf '%s\t%s\t%s\n' "$name" "$took" "$rc" >>"$MANYMODELS_STAGE_LOG"
  fi
  return "$rc"
}

# module_dir MODULE@VERSION : downloads the module (if needed) and prints its read-only directory in
# Go's module cache. Go's own error is shown when that fails.
module_dir() {
  local json dir err
  if ! json=$(go mod download -json "$1" 2>&1); then
    err=$(sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
    log "go mod download $1 failed: ${err:-$json}"
    return 1
  fi
  dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
  [[ -n $dir ]] || { log "go mod download $1 named no directory: $json"; return 1; }
  echo "$dir"
}

# build_from_copy MODULE@VERSION PKG OUT [MAIN.go] : builds PKG (relative to the module root; "." for
# the root) from a writable copy of the module, for modules that `go install` refuses (replace
# directives, a go.mod naming another path, a proxy that refuses the version list). With MAIN.go, that
# file is added as PKG/main.go first (to compile a tool inside a module, e.g. against internal packages).
# LDFLAGS, when set, are passed to the linker.
build_from_copy() {
  local mod=$1 pkg=$2 out=$3 extra=${4:-} src work rc=0
  src=$(module_dir "$mod") || return 1
  work=$(mktemp -d "${TMPDIR:-/tmp}/mm-build.XXXXXX")
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  if [[ -n $extra ]]; then mkdir -p "$work/$pkg"; cp "$extra" "$work/$pkg/main.go"; fi
  (cd "$work" && go build -trimpath -ldflags "${LDFLAGS:-}" -o "$out" "./$pkg") || rc=$?
  rm -rf "$work"
  return "$rc"
}

# gomod_requires DIR MODULE VERSION : fails unless the wrapper module DIR (relative to ROOT) requires
# MODULE at VERSION. Wrapper modules pin what is built in their go.mod; ci/versions.env names the version.
gomod_requires() {
  grep -Eq "^[[:space:]]*(require[[:space:]]+)?$2[[:space:]]+$3([[:space:]]|$)" "$ROOT/$1/go.mod" || {
    log "$1/go.mod does not require $2 $3 (ci/versions.env): change one to match the other"; return 1; }
}

# npm_requires DIR PACKAGE VERSION : the same for a wrapper npm package (DIR/package.json, whose
# package-lock.json pins the rest; `npm ci` refuses a lock that disagrees with package.json).
npm_requires() {
  grep -Eq "^[[:space:]]*\"$2\":[[:space:]]*\"$3\",?[[:space:]]*$" "$ROOT/$1/package.json" || {
    log "$1/package.json does not depend on $2 $3 (ci/versions.env): change one to match the other"; return 1; }
}

# files_key FILE... : 12 hex digits of the files' content, lines starting with // left out (comments do
# not count). Wrapper modules' tool directories are keyed on it, so a dependency edit rebuilds.
files_key() { grep -hv "^[[:space:]]*//" "$@" | sha256sum | cut -c1-12; }

# install_once DIR DESCRIPTION COMMAND... : runs the command with $STAGE set to an empty staging
# directory (under $TOOLS, with set -e in force), marks it complete (.ok) and renames it to DIR, so a
# half-built tool is never taken for a built one. Skipped when DIR/.ok exists. A failure removes the
# staging directory and returns non-zero.
install_once() {
  local dir=$1 what=$2 start=$SECONDS rc errexit=$-
  shift 2
  [[ -f $dir/.ok ]] && return 0
  log "installing $what into $dir (first time; cached afterwards)"
  mkdir -p "$TOOLS" "$(dirname "$dir")"
  STAGE=$(mktemp -d "$TOOLS/.stage.XXXXXX")
  export STAGE
  # a subshell outside any `if`/`||`, so that set -e really holds inside the command
  set +e
  (set -e; "$@")
  rc=$?
  [[ $errexit != *e* ]] || set -e
  if ((rc)); then
    rm -rf "$STAGE"
    log "installing $what failed (exit $rc)"
    return "$rc"
  fi
  touch "$STAGE/.ok"
  rm -rf "$dir"
  mv "$STAGE" "$dir"
  log "$what ready in $((SECONDS - start)) s"
}

# chart_field KEY : a top-level scalar of Chart.yaml (e.g. appVersion), quotes removed
chart_field() {
  sed -n "s/^$1:[[:space:]]*[\"']\{0,1\}\([^\"' #]*\)[\"']\{0,1\}[[:space:]]*\(#.*\)\{0,1\}$/\1/p" "$ROOT/Chart.yaml"
}

# chart_dependency_version NAME : the version Chart.yaml's `dependencies:` pins for NAME
chart_dependency_version() {
  awk -v want="$1" '
    function flush() {
      if (name == want && version != "") { print version; found = 1; exit }
      name = ""; version = ""
    }
    /^[^[:space:]#]/ { if (deps) flush(); deps = ($0 ~ /^dependencies:/); next }
    !deps { next }
    /^[[:space:]]*-[[:space:]]/ { flush(); sub(/-/, " ") }
    {
      line = $0; gsub(/["\047]/, "", line); sub(/[[:space:]]+#.*$/, "", line)
      if (line ~ /^[[:space:]]*name:/) { sub(/^[[:space:]]*name:[[:space:]]*/, "", line); name = line }
      else if (line ~ /^[[:space:]]*version:/) { sub(/^[[:space:]]*version:[[:space:]]*/, "", line); version = line }
    }
    END { if (!found) flush() }
  ' "$ROOT/Chart.yaml"
}

# kuberay_pinned : the kuberay-operator version Chart.yaml pins, with a leading v (the module's tag)
kuberay_pinned() {
  local v
  v=$(chart_dependency_version kuberay-operator)
  [[ -n $v ]] || { log "Chart.yaml has no kuberay-operator dependency version"; return 1; }
  echo "v${v#v}"
}

# kuberay_version [CACHED_FN] : the ray-operator module version to build from. The pinned one
# (KUBERAY_MODULE_VERSION overrides it) when `CACHED_FN VERSION` says it is already built here or the
# module proxy serves it; else the fallback (KUBERAY_MODULE_FALLBACK, default KUBERAY_FALLBACK_VERSION;
# empty forbids it), with a loud warning. Some module proxy mirrors refuse some versions.
kuberay_version() {
  local cached=${1:-} want fallback v
  want=${KUBERAY_MODULE_VERSION:-$(kuberay_pinned)} || return 1
  fallback=${KUBERAY_MODULE_FALLBACK-$KUBERAY_FALLBACK_VERSION}
  for v in "$want" ${fallback:+"$fallback"}; do
    if [[ -n $cached ]] && "$cached" "$v"; then
      :
    elif ! module_dir "$KUBERAY_MODULE@$v" >/dev/null; then   # says why
      continue
    fi
    if [[ $v != "$want" ]]; then
      log "WARNING: using $KUBERAY_MODULE@$v instead of $want (Chart.yaml pins $(kuberay_pinned))." \
        "With internet, 'helm dependency build' gives the real chart; KUBERAY_MODULE_FALLBACK= forbids this."
    fi
    echo "$v"
    return 0
  done
  log "the module proxy serves neither $KUBERAY_MODULE@$want nor the fallback '${fallback}'"
  return 1
}

# as_root COMMAND... : runs it as root (directly when we are root, else through sudo).
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# apt_ensure PATH:PACKAGE... : installs (one `apt-get update`, then one install) the Debian packages whose
# PATH is not there yet; PATH is an absolute file or a command name looked up on PATH.
apt_ensure() {
  local pair path missing=()
  for pair in "$@"; do
    path=${pair%%:*}
    if [[ $path == /* ]]; then [[ -e $path ]] && continue; else command -v "$path" >/dev/null && continue; fi
    missing+=("${pair#*:}")
  done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Background processes of a test cluster, stopped by pid (ci/e2e-cluster.sh, ci/e2e-node.sh). PROCS is
# the folder that holds pids/ and logs/; every name started is recorded in pids/order.
free_port() {
  "${PYTHON:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# proc_start NAME COMMAND... : background process, pid in $PROCS/pids/NAME, output in $PROCS/logs/NAME.log
proc_start() {
  local name=$1; shift
  mkdir -p "$PROCS/pids" "$PROCS/logs"
  "$@" >"$PROCS/logs/$name.log" 2>&1 &
  echo $! >"$PROCS/pids/$name"
  echo "$name" >>"$PROCS/pids/order"
}

proc_alive() { [[ -f $PROCS/pids/$1 ]] && kill -0 "$(cat "$PROCS/pids/$1")" 2>/dev/null; }

# proc_check NAME... : fails, showing the log's tail, when one of them has exited
proc_check() {
  local name
  for name in "$@"; do
    proc_alive "$name" || { log "$name exited; see $PROCS/logs/$name.log"; tail -20 "$PROCS/logs/$name.log" >&2; return 1; }
  done
}

# wait_until WHAT TIMEOUT_S COMMAND... : polls the command every 0.5 s until it succeeds
wait_until() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then log "timed out after $timeout s waiting for $what"; return 1; fi
    sleep 0.5
  done
}

# proc_stop NAME : SIGTERM, up to 10 s, then SIGKILL
proc_stop() {
  local name=$1 pid i
  pid=$(cat "$PROCS/pids/$name" 2>/dev/null) || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "$name (pid $pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$PROCS/pids/$name"
  if [[ -f $PROCS/pids/order ]]; then sed -i "/^$name\$/d" "$PROCS/pids/order"; fi
}

# proc_stop_all : every process started in $PROCS, in reverse order
proc_stop_all() {
  [[ -f $PROCS/pids/order ]] || return 0
  local name
  for name in $(tac "$PROCS/pids/order"); do proc_stop "$name"; done
  rm -f "$PROCS/pids/order"
}
