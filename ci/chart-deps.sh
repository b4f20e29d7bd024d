#!/usr/bin/env bash
# Materialises the `kuberay-operator` dependency OFFLINE into the ignored charts/kuberay-operator/,
# assembled from the pinned ray-operator Go module (its own install manifests: config/crd/bases,
# config/rbac, config/manager), and checks Chart.lock with Helm's own resolver code.
#
#   ci/chart-deps.sh            assemble charts/kuberay-operator (skipped when already assembled)
#   ci/chart-deps.sh lock       (re)write Chart.lock from Chart.yaml with helm's resolver, offline
#
# With internet, the upstream chart is the better source:  helm dependency build   (uses Chart.lock).
# Nothing upstream is committed: charts/kuberay-operator/ and charts/*.tgz are git-ignored.
#
# KUBERAY_MODULE_VERSION (default: the Chart.yaml dependency version) picks the module. Some module proxy
# mirrors refuse some versions; then KUBERAY_MODULE_FALLBACK (default v1.6.2) is used with a loud
# warning, and the assembled chart carries the version it was really built from (helm matches
# dependencies by name, so rendering works; `helm dependency list` then shows "wrong version").
# Set KUBERAY_MODULE_FALLBACK= (empty) to forbid the fallback.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
OUT=$ROOT/charts/kuberay-operator
log() { echo "chart-deps: $*" >&2; }

# the version pinned in Chart.yaml (single source of truth)
PINNED=$(awk '/^dependencies:/{d=1} d&&/name: kuberay-operator/{n=1} n&&/version:/{gsub(/["'"'"' ]/,"",$2); print $2; exit}' \
  "$ROOT/Chart.yaml")
[[ -n $PINNED ]] || { log "no kuberay-operator dependency version in Chart.yaml"; exit 1; }
MODULE=github.com/ray-project/kuberay/ray-operator
WANT=${KUBERAY_MODULE_VERSION:-v$PINNED}
FALLBACK=${KUBERAY_MODULE_FALLBACK-v1.6.2}

if [[ ${1:-} == lock ]]; then
  PATH="$("$ROOT/ci/chart-tools.sh" path):$PATH"
  command -v manymodels-chartlock >/dev/null || "$ROOT/ci/chart-tools.sh" >/dev/null
  exec manymodels-chartlock "$ROOT"
fi

module_dir() {
  go mod download -json "$MODULE@$1" 2>/dev/null | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
}

if [[ -f $OUT/.assembled-from ]] && grep -qx "$MODULE@$WANT" "$OUT/.assembled-from"; then
  log "charts/kuberay-operator already assembled from $MODULE@$WANT"
  exit 0
fi
USED=$WANT
DIR=$(module_dir "$WANT" || true)
if [[ -z $DIR ]]; then
  if [[ -z $FALLBACK ]]; then
    log "the module proxy does not serve $MODULE@$WANT and KUBERAY_MODULE_FALLBACK is empty"; exit 1
  fi
  if [[ -f $OUT/.assembled-from ]] && grep -qx "$MODULE@$FALLBACK" "$OUT/.assembled-from"; then
    log "WARNING: $MODULE@$WANT unavailable; keeping charts/kuberay-operator assembled from $FALLBACK"
    exit 0
  fi
  log "WARNING: the module proxy does not serve $MODULE@$WANT; assembling from $FALLBACK instead."
  log "WARNING: use 'helm dependency build' (internet) for the real kuberay-operator $PINNED chart."
  USED=$FALLBACK
  DIR=$(module_dir "$FALLBACK")
  [[ -n $DIR ]] || { log "the module proxy does not serve $MODULE@$FALLBACK either"; exit 1; }
fi

STAGE=$(mktemp -d "$ROOT/charts/.kuberay-operator.XXXXXX" 2>/dev/null || { mkdir -p "$ROOT/charts"; mktemp -d "$ROOT/charts/.kuberay-operator.XXXXXX"; })
trap 'rm -rf "$STAGE"' EXIT
"$PYTHON" - "$DIR" "$MODULE" "$USED" "$STAGE" <<'PY'
"""Assemble a Helm chart from the ray-operator module's kustomize install manifests."""
import shutil
import sys
from pathlib import Path

import yaml

src, module, version, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
config = src / "config"


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomized(folder):
    """Resources of a kustomization folder, with its `labels` applied to metadata.labels."""
    k = docs(folder / "kustomization.yaml")[0]
    labels = {}
    for entry in k.get("labels", []) or []:
        labels.update(entry.get("pairs", {}))
    out_docs = []
    for name in k.get("resources", []):
        for d in docs(folder / name):
            d.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
            out_docs.append((name, d))
    return out_docs


image = {"repository": "quay.io/kuberay/operator", "tag": version}
for entry in docs(config / "default" / "kustomization.yaml")[0].get("images", []) or []:
    if entry.get("name") == "kuberay/operator":
        image = {"repository": entry.get("newName", image["repository"]), "tag": entry.get("newTag", version)}

(out / "crds").mkdir(parents=True)
(out / "templates").mkdir()
for crd in sorted((config / "crd" / "bases").glob("*.yaml")):
    shutil.copyfile(crd, out / "crds" / crd.name)

manifests = kustomized(config / "rbac") + kustomized(config / "manager")
defines, files = [], []
for index, (name, doc) in enumerate(manifests):
    key = f"{Path(name).stem}-{doc['kind'].lower()}-{index}"
    body = yaml.safe_dump(doc, sort_keys=False)
    if "{{" in body:
        raise SystemExit(f"{name}: unexpected template delimiters in upstream manifest")
    defines.append(f'{{{{- define "kuberay-operator.upstream.{key}" }}}}\n{body}{{{{- end }}}}\n')
    files.append((key, doc["kind"]))

(out / "templates" / "_upstream.tpl").write_text(
    f"{{{{/* Verbatim from {module}@{version} config/rbac + config/manager (generated by ci/chart-deps.sh) */}}}}\n"
    + "".join(defines)
)
(out / "templates" / "_helpers.tpl").write_text('''{{/* Render one upstream manifest with namespace, image and values applied. */}}
{{- define "kuberay-operator.render" -}}
{{- $root := index . 0 -}}
{{- $obj := include (printf "kuberay-operator.upstream.%s" (index . 1)) $root | fromYaml -}}
{{- $v := $root.Values -}}
{{- $meta := $obj.metadata -}}
{{- $_ := set $meta "labels" (merge (dict "app.kubernetes.io/instance" $root.Release.Name "app.kubernetes.io/managed-by" $root.Release.Service "helm.sh/chart" (printf "%s-%s" $root.Chart.Name $root.Chart.Version)) $meta.labels) -}}
{{- if not (has $obj.kind (list "ClusterRole" "ClusterRoleBinding")) -}}
{{- $_ := set $meta "namespace" $root.Release.Namespace -}}
{{- end -}}
{{- range $obj.subjects -}}
{{- if eq .kind "ServiceAccount" }}{{ $_ := set . "namespace" $root.Release.Namespace }}{{ end -}}
{{- end -}}
{{- if eq $obj.kind "Deployment" -}}
{{- $pod := $obj.spec.template.spec -}}
{{- $c := index $pod.containers 0 -}}
{{- $_ := set $c "image" (printf "%s:%s" $v.image.repository $v.image.tag) -}}
{{- $_ := set $c "imagePullPolicy" $v.image.pullPolicy -}}
{{- if $v.resources }}{{ $_ := set $c "resources" $v.resources }}{{ end -}}
{{- if $v.env }}{{ $_ := set $c "env" $v.env }}{{ end -}}
{{- if $v.watchNamespace }}{{ $_ := set $c "args" (append $c.args (printf "--watch-namespace=%s" (join "," $v.watchNamespace))) }}{{ end -}}
{{- with $v.nodeSelector }}{{ $_ := set $pod "nodeSelector" . }}{{ end -}}
{{- with $v.tolerations }}{{ $_ := set $pod "tolerations" . }}{{ end -}}
{{- with $v.affinity }}{{ $_ := set $pod "affinity" . }}{{ end -}}
{{- with $v.imagePullSecrets }}{{ $_ := set $pod "imagePullSecrets" . }}{{ end -}}
{{- end -}}
{{ toYaml $obj }}
{{- end -}}
''')
for key, kind in files:
    (out / "templates" / f"{key}.yaml").write_text(f'{{{{ include "kuberay-operator.render" (list . "{key}") }}}}\n')

(out / "Chart.yaml").write_text(yaml.safe_dump({
    "apiVersion": "v2",
    "name": "kuberay-operator",
    "version": version.lstrip("v"),
    "appVersion": version,
    "description": f"KubeRay operator assembled offline from {module}@{version} (config/crd/bases, "
                   "config/rbac, config/manager) by manymodels ci/chart-deps.sh",
    "type": "application",
    "annotations": {"manymodels.io/assembled-from": f"{module}@{version}"},
}, sort_keys=False))
(out / "values.yaml").write_text(yaml.safe_dump({
    "image": {**image, "pullPolicy": "IfNotPresent"},
    "resources": {},
    "env": [],
    "watchNamespace": [],
    "nodeSelector": {},
    "tolerations": [],
    "affinity": {},
    "imagePullSecrets": [],
}, sort_keys=False))
(out / ".assembled-from").write_text(f"{module}@{version}\n")
print(f"assembled kuberay-operator {version} with {len(files)} templates and "
      f"{len(list((out / 'crds').iterdir()))} CRDs", file=sys.stderr)
PY
rm -rf "$OUT"
mv "$STAGE" "$OUT"
trap - EXIT
log "charts/kuberay-operator assembled from $MODULE@$USED (Chart.yaml pins $PINNED)"
