#!/usr/bin/env bash
# The chart's test tier (`make test-chart`): runs everything, reports each step, exits non-zero if any
# step failed. Tools come from ci/chart-tools.sh (cached outside the repo), the KubeRay dependency from
# ci/chart-deps.sh (offline). PYTHON must have pytest, pyyaml and the app (manymodels) importable.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # ROOT, PYTHON made absolute
use_python || exit 1
cd "$ROOT"
FAILED=()
step() { echo; echo "=== $*"; }
fail() { echo "FAIL: $*" >&2; FAILED+=("$*"); }

step "tools (ci/chart-tools.sh)"
"$ROOT/ci/chart-tools.sh" >/dev/null || { echo "tool install failed" >&2; exit 1; }
eval "$("$ROOT/ci/chart-tools.sh" env)"
KV=$MANYMODELS_KUBE_VERSION
helm version --template 'helm {{.Version}}'; echo
echo "helm-unittest $(sed -n 's/^version: //p' "$HELM_PLUGINS/unittest/plugin.yaml" | tr -d '"')"
echo "kubeconform $(kubeconform -v)"; echo "kube-linter $(kube-linter version)"; promtool --version | head -1

step "dependency (ci/chart-deps.sh) + Chart.lock in sync (helm's resolver)"
"$ROOT/ci/chart-deps.sh" || { echo "dependency assembly failed" >&2; exit 1; }
manymodels-chartlock -check "$ROOT" || fail "Chart.lock out of sync with Chart.yaml (run: ci/chart-deps.sh lock)"

# The bare defaults do not render by design (no model catalog: object storage or a PVC must be chosen);
# ci/minimal-values.yaml is the defaults plus only that, and stands for them in every check below.
VALUES=()
for f in values/*.yaml ci/*-values.yaml; do VALUES+=("$f"); done
label() { echo "$1"; }
# -f arguments for one entry: a values/ file comes with what a user adds to it (ci/sites/<name>.yaml: the
# identity and bucket a cloud file leaves empty, the catalog values/cpu.yaml leaves open, without which
# it does not render by design)
fargs() {
  echo "-f $1"
  local site=ci/sites/$(basename "$1")
  [[ $1 != values/* || ! -f $site ]] || echo "-f $site"
}

step "the bare defaults fail, naming the catalog values (helm template without -f)"
if out=$(helm template mm "$ROOT" --kube-version "$KV" 2>&1); then
  fail "helm template rendered the bare defaults: it must refuse to guess where the catalog is"
elif grep -q 'no model catalog: set modelServer.userConfig.store.uri .* or set modelStore.pvc.enabled=true' <<<"$out"; then
  echo "ok   $(grep -o 'no model catalog: [^(]*' <<<"$out" | head -1)..."
else
  echo "$out"; fail "the bare defaults failed without the 'no model catalog' message"
fi

step "helm lint --strict (values/*.yaml, ci/*-values.yaml; ci/minimal-values.yaml = the defaults + a catalog)"
for f in "${VALUES[@]}"; do
  # shellcheck disable=SC2046
  if out=$(helm lint --strict "$ROOT" --kube-version "$KV" $(fargs "$f") 2>&1); then
    echo "ok   $(label "$f")"
  else
    echo "$out"; fail "helm lint $(label "$f")"
  fi
done

step "helm-unittest (tests/chart mirrors templates/)"
missing=0
while IFS= read -r t; do
  base=$(basename "$t"); base=${base%.*}
  [[ $base == NOTES ]] && base=notes
  if [[ ! -f tests/chart/${base}_test.yaml ]]; then echo "no tests/chart/${base}_test.yaml for $t"; missing=1; fi
done < <(find templates -type f \( -name '*.yaml' -o -name '*.txt' \) | sort)
[[ $missing == 0 ]] || fail "templates without a helm-unittest suite"
helm-unittest --strict -f 'tests/chart/*_test.yaml' "$ROOT" || fail "helm-unittest"

step "helm template | kubeconform -strict (offline schemas, Kubernetes $KV)"
RENDER=$(mktemp -d)
trap 'rm -rf "$RENDER"' EXIT
DEP_VERSION=$(sed -n 's/^version: //p' charts/kuberay-operator/Chart.yaml)
RAY_SCHEMAS=$MANYMODELS_TOOLS_DIR/schemas/kuberay-$DEP_VERSION
if [[ ! -f $RAY_SCHEMAS/.ok ]]; then
  rm -rf "$RAY_SCHEMAS"
  "$ROOT/ci/chart-tools.sh" crd-schemas "$RAY_SCHEMAS" charts/kuberay-operator/crds/*.yaml && touch "$RAY_SCHEMAS/.ok" \
    || fail "converting the KubeRay CRDs to JSON schemas"
fi
i=0
for f in "${VALUES[@]}"; do
  i=$((i + 1))
  out=$RENDER/$i-$(label "$f" | tr '/' '_' | sed 's/\.yaml$//').yaml   # kubeconform reads *.yaml only
  # shellcheck disable=SC2046
  if ! helm template mm "$ROOT" --namespace models --kube-version "$KV" --include-crds $(fargs "$f") >"$out" 2>"$out.err"; then
    cat "$out.err"; fail "helm template $(label "$f")"; continue
  fi
  # the RayJob the training CronJob submits lives in a ConfigMap: append it, so it is validated too
  "$PYTHON" - "$out" <<'PY' || fail "extracting the training RayJob manifest from $out"
import sys, yaml
path = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
with open(path, "a") as f:
    for d in docs:
        if d.get("kind") == "ConfigMap" and "rayjob.yaml" in (d.get("data") or {}):
            job = yaml.safe_load(d["data"]["rayjob.yaml"])
            job["metadata"]["namespace"] = d["metadata"].get("namespace")
            f.write("---\n" + yaml.safe_dump(job, sort_keys=False))
PY
  if kubeconform -strict -summary -kubernetes-version "$KV" \
      -schema-location "$MANYMODELS_K8S_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
      -schema-location "$RAY_SCHEMAS/{{ .Group }}-{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
      -schema-location "$MANYMODELS_MONITORING_SCHEMAS/{{ .Group }}-{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
      "$out"; then
    echo "ok   $(label "$f")"
  else
    fail "kubeconform $(label "$f")"
  fi
done

step "kube-linter (ci/kube-linter.yaml; Ray pod templates of RayServices and RayJobs linted as Pods)"
for out in "$RENDER"/*; do
  [[ $out == *.yaml ]] || continue
  # KubeRay builds the pods from the RayService's templates, which kube-linter cannot see inside a custom
  # resource: write them out as plain Pods (head + each worker group) so they are linted too.
  "$PYTHON" - "$out" <<'PY' || fail "extracting Ray pod templates from $out"
import sys, yaml
path = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
accounts = {d["metadata"]["name"] for d in docs if d.get("kind") == "ServiceAccount"}
# Deliberate deviations, each explained (see ci/kube-linter.yaml):
WRITABLE_ROOT = ("Ray writes under /tmp/ray and $HOME, and Ray images keep Python under /home/ray, so the root "
                 "filesystem cannot be read-only (values: securityContext.readOnlyRootFilesystem)")
EXTERNAL_SA = "serviceAccount.create=false: the ServiceAccount is managed outside this chart"
pods = []
for d in docs:
    if d.get("kind") not in ("RayService", "RayJob"):
        continue
    # a RayJob: its cluster's pods and the submitter pod KubeRay creates from submitterPodTemplate
    cluster = d["spec"]["rayClusterConfig" if d["kind"] == "RayService" else "rayClusterSpec"]
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
    if d["spec"].get("submitterPodTemplate"):
        groups.append(("submitter", {"template": d["spec"]["submitterPodTemplate"]}))
    obj = d["metadata"].get("name") or d["metadata"]["generateName"] + "submitted"
    for name, group in groups:
        template = group["template"]
        notes = {"manymodels.io/extracted-from": f"{d['kind']} {obj} {name}"}
        if any(not (c.get("securityContext") or {}).get("readOnlyRootFilesystem") for c in template["spec"]["containers"]):
            notes["ignore-check.kube-linter.io/no-read-only-root-fs"] = WRITABLE_ROOT
        if template["spec"].get("serviceAccountName") not in accounts:
            notes["ignore-check.kube-linter.io/non-existent-service-account"] = EXTERNAL_SA
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"{obj}-{name}", "namespace": d["metadata"].get("namespace"),
                                  "labels": template["metadata"].get("labels", {}),
                                  "annotations": notes},
                     "spec": template["spec"]})
with open(path, "a") as f:
    for pod in pods:
        f.write("---\n" + yaml.safe_dump(pod, sort_keys=False))
PY
  if kube-linter lint --config "$ROOT/ci/kube-linter.yaml" "$out"; then
    echo "ok   $(basename "$out")"
  else
    fail "kube-linter $(basename "$out")"
  fi
done

step "promtool: the PrometheusRule's rules check and pass their unit tests (tests/chart/prometheusrule/)"
# the rule group as a plain rules file (the PrometheusRule's spec), beside copies of the unit tests, which
# name it manymodels-rules.yaml; release mm in namespace models, as the tests' series labels expect
PROM=$RENDER/promtool
mkdir -p "$PROM"
if helm template mm "$ROOT" --namespace models --kube-version "$KV" --show-only templates/prometheusrule.yaml \
    -f ci/minimal-values.yaml --set metrics.prometheusRule.enabled=true,metrics.serviceMonitor.enabled=true >"$PROM/rule.yaml" \
  && "$PYTHON" -c 'import sys, yaml; rule = yaml.safe_load(open(sys.argv[1])); assert rule["kind"] == "PrometheusRule"; yaml.safe_dump(rule["spec"], sys.stdout, sort_keys=False)' \
    "$PROM/rule.yaml" >"$PROM/manymodels-rules.yaml"; then
  prom_tests=()
  for f in tests/chart/prometheusrule/*.yaml; do cp "$f" "$PROM/"; prom_tests+=("$(basename "$f")"); done
  promtool check rules --lint-fatal "$PROM/manymodels-rules.yaml" || fail "promtool check rules"
  (cd "$PROM" && promtool test rules "${prom_tests[@]}") || fail "promtool test rules"
else
  fail "rendering the PrometheusRule for promtool"
fi

step "packaged chart leaves out non-chart files (.helmignore)"
if helm package "$ROOT" -d "$RENDER/pkg" >/dev/null; then
  bad=$(tar -tzf "$RENDER"/pkg/*.tgz | grep -E '^manymodels/(app|tests|ci|bench|docs|images|\.git)/' | head -5)
  [[ -z $bad ]] && echo "ok   $(basename "$RENDER"/pkg/*.tgz): $(tar -tzf "$RENDER"/pkg/*.tgz | wc -l) files" \
    || { echo "$bad"; fail ".helmignore lets non-chart files into the package"; }
  # ... but keeps what templates read with .Files.Get (no grep -q: under pipefail, tar's SIGPIPE would fail it)
  tar -tzf "$RENDER"/pkg/*.tgz | grep -x 'manymodels/dashboards/manymodels.json' >/dev/null \
    || fail ".helmignore leaves dashboards/manymodels.json out of the package"
else
  fail "helm package"
fi

step "pytest tests/chart (chart <-> app contract: the app's loader reads the rendered serveConfigV2)"
MANYMODELS_REQUIRE_HELM=1 HELM=$(command -v helm) MANYMODELS_KUBE_VERSION=$KV \
  "$PYTHON" -m pytest -q -p no:cacheprovider "$ROOT/tests/chart" || fail "pytest tests/chart"

echo
if ((${#FAILED[@]})); then
  echo "test-chart: ${#FAILED[@]} step(s) failed:"; printf '  - %s\n' "${FAILED[@]}"
  exit 1
fi
echo "test-chart: all passed"
