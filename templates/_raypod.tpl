{{/*
Per-pod pieces of the Ray pod templates (templates/_rayservice.tpl): the ServiceAccount each pod runs
as, its image, /dev/shm and object store sizing, scheduling extras. Like everything under
rayClusterConfig, nothing here reads .Values.modelServer or .Values.gateway.
*/}}

{{/*
Is the workers' ServiceAccount created by the chart? serviceAccount.workers.create, or, when that is
null, serviceAccount.create (an externally managed head account usually means the workers' one is
managed outside the chart too). Renders "true" or nothing.
*/}}
{{- define "manymodels.workerServiceAccountCreate" -}}
{{- $w := default dict .Values.serviceAccount.workers -}}
{{- if kindIs "bool" $w.create -}}
{{- if $w.create }}true{{ end -}}
{{- else if .Values.serviceAccount.create -}}
true
{{- end -}}
{{- end }}

{{/*
The workers' ServiceAccount: serviceAccount.workers.name, else <fullname>-worker when the chart creates
it, else (not created, no name) the head's ServiceAccount, shared as before the split.
*/}}
{{- define "manymodels.workerServiceAccountName" -}}
{{- $w := default dict .Values.serviceAccount.workers -}}
{{- if $w.name -}}
{{- $w.name -}}
{{- else if include "manymodels.workerServiceAccountCreate" . -}}
{{- printf "%s-worker" (include "manymodels.fullname" .) -}}
{{- else -}}
{{- include "manymodels.serviceAccountName" . -}}
{{- end -}}
{{- end }}

{{/* The workers' ServiceAccount annotations (JSON): serviceAccount.workers.annotations, or when null the head's. */}}
{{- define "manymodels.workerServiceAccountAnnotations" -}}
{{- $w := default dict .Values.serviceAccount.workers -}}
{{- if kindIs "map" $w.annotations -}}
{{- toJson $w.annotations -}}
{{- else -}}
{{- toJson (default dict .Values.serviceAccount.annotations) -}}
{{- end -}}
{{- end }}

{{/*
The ServiceAccount a Ray pod runs as, and what the chart knows of its annotations (JSON {name,
annotations}): (list $root $group "head"|"worker"). A group's serviceAccountName wins; the annotations
are those of the chart's account of that name (unknown for any other account: null). The head keeps the
main account, to which KubeRay binds the autoscaler's Role (patch pods and RayClusters); workers get
their own, without that Role.
*/}}
{{- define "manymodels.podIdentity" -}}
{{- $root := index . 0 }}{{ $g := index . 1 }}{{ $role := index . 2 -}}
{{- $head := include "manymodels.serviceAccountName" $root -}}
{{- $worker := include "manymodels.workerServiceAccountName" $root -}}
{{- $name := $g.serviceAccountName | default (ternary $head $worker (eq $role "head")) -}}
{{- $id := dict "name" $name "annotations" nil -}}
{{- if eq $name $head -}}
{{- $_ := set $id "annotations" $root.Values.serviceAccount.annotations -}}
{{- else if eq $name $worker -}}
{{- $_ := set $id "annotations" (include "manymodels.workerServiceAccountAnnotations" $root | fromJson) -}}
{{- end -}}
{{- toJson $id -}}
{{- end }}

{{/*
The image of a Ray pod: (list $root $group). A group's image (repository, tag, digest, variant,
pullPolicy) is merged over the top-level image; a group that sets its own repository or tag does not
inherit the top-level digest (a digest pins one image). Renders the image dict as JSON.
*/}}
{{- define "manymodels.rayImage" -}}
{{- $root := index . 0 }}{{ $g := index . 1 -}}
{{- $own := deepCopy (default dict $g.image) -}}
{{- $top := deepCopy $root.Values.image -}}
{{- if and (or $own.repository $own.tag) (not $own.digest) }}{{ $_ := set $top "digest" "" }}{{ end -}}
{{- toJson (merge $own $top) -}}
{{- end }}

{{/*
Object store and /dev/shm of a Ray pod: (list $root $group) -> JSON {store: bytes as a string, or
absent; shm: the emptyDir sizeLimit, or "" for none}. /dev/shm is a memory-backed emptyDir: what Ray
writes there is charged to the pod's memory cgroup, i.e. counts against the container's memory limit.
- shmSizeLimit set (the group's, else the global one): /dev/shm is that size, and the object store,
  unless rayStartParams sets object-store-memory, is Ray's default (30% of the memory limit) capped at
  90% of it, so it fits /dev/shm (a bigger store makes Ray fall back to a much slower disk-backed one).
- unset (null or ""): the object store is object-store-memory if set, else 30% of the memory limit,
  and /dev/shm is sized to hold it (store / 0.9, rounded up to Mi). Without a memory limit and without
  object-store-memory, Ray sizes its store itself and /dev/shm gets no sizeLimit.
*/}}
{{- define "manymodels.rayMemory" -}}
{{- $root := index . 0 }}{{ $g := index . 1 -}}
{{- $params := default dict $g.rayStartParams -}}
{{- $mem := dig "limits" "memory" "" (default dict $g.resources) -}}
{{- $shm := $g.shmSizeLimit -}}
{{- if eq (toString (default "" $shm)) "" }}{{ $shm = $root.Values.shmSizeLimit }}{{ end -}}
{{- if kindIs "invalid" $shm }}{{ $shm = "" }}{{ end -}}
{{- $out := dict "shm" $shm -}}
{{- $store := 0 -}}
{{- if hasKey $params "object-store-memory" -}}
{{- /* Ray's own value (bytes); parsed only to size an unset /dev/shm */ -}}
{{- $explicit := index $params "object-store-memory" -}}
{{- if eq (toString $shm) "" -}}
{{- if kindIs "string" $explicit }}{{ $store = include "manymodels.bytes" $explicit | int64 }}{{ else }}{{ $store = int64 $explicit }}{{ end -}}
{{- end -}}
{{- else if $mem -}}
{{- /* manymodels.mebibytes (templates/_fit.tpl) reads any Kubernetes quantity, "1.5Gi" included */ -}}
{{- $memBytes := mulf (include "manymodels.mebibytes" $mem | float64) 1048576.0 | int64 -}}
{{- $store = div (mul $memBytes 3) 10 -}}
{{- if ne (toString $shm) "" -}}
{{- $shmBytes := mulf (include "manymodels.mebibytes" $shm | float64) 1048576.0 | int64 -}}
{{- $store = min $store (div (mul $shmBytes 9) 10) -}}
{{- end -}}
{{- $_ := set $out "store" (toString $store) -}}
{{- end -}}
{{- if and (eq (toString $shm) "") (gt (int64 $store) 0) -}}
{{- $shmBytes := div (add (mul $store 10) 8) 9 -}}
{{- $_ := set $out "shm" (printf "%dMi" (div (add $shmBytes 1048575) 1048576)) -}}
{{- end -}}
{{- toJson $out -}}
{{- end }}

{{/*
topologySpreadConstraints of a group: (list $root $group $selectorLabels). A constraint without a
labelSelector gets one selecting this group's pods (release, component, worker group).
*/}}
{{- define "manymodels.topologySpread" -}}
{{- $root := index . 0 }}{{ $g := index . 1 }}{{ $selector := index . 2 -}}
{{- $out := list -}}
{{- range $g.topologySpreadConstraints -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") }}{{ $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}{{ end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- if $out }}{{ toYaml $out }}{{ end -}}
{{- end }}

{{/* Cross-field checks of the pod knobs and ServiceAccounts (called from manymodels.validate). */}}
{{- define "manymodels.validatePods" -}}
{{- $w := default dict .Values.serviceAccount.workers -}}
{{- if and (include "manymodels.workerServiceAccountCreate" .) (eq (include "manymodels.workerServiceAccountName" .) (include "manymodels.serviceAccountName" .)) -}}
{{- fail (printf "serviceAccount.workers.name: the workers' ServiceAccount %q would be the head's; give it another name (the head's carries the autoscaler's Role), or set serviceAccount.workers.create=false to share the head's" (include "manymodels.serviceAccountName" .)) -}}
{{- end -}}
{{- if kindIs "map" $w.annotations -}}
{{- range $key, $value := $w.annotations -}}
{{- if and (kindIs "string" $value) (not $value) -}}
{{- fail (printf "serviceAccount.workers.annotations.%s is empty: set the workload identity the worker pods run as, or delete the line (null inherits serviceAccount.annotations; docs/storage.md)" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}
