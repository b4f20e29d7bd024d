{{/*
What this install or upgrade makes KubeRay do, printed by NOTES.txt. At upgrade the live RayService's
digests (manymodels.io/cluster-config-sha256, serve-config-sha256, written by templates/rayservice.yaml)
are read back with lookup and compared with the new ones, so the notes say whether the Ray cluster is
rebuilt, the Serve config applied in place, or a cluster change IGNORED (upgradeStrategy None) - the
last is otherwise silent. Under `helm template` or a client-side dry run lookup sees nothing, and the
notes fall back to what a cluster change would cost.
*/}}

{{/* "<head> + <workers> pods, <gpus> GPU(s)" for a new cluster at its starting size, and up to max. */}}
{{- define "manymodels.clusterSize" -}}
{{- $start := 0 }}{{ $max := 0 }}{{ $gpus := 0 }}{{ $maxGpus := 0 -}}
{{- range $name, $g := .Values.workerGroups -}}
{{- if $g.enabled -}}
{{- $n := int (default $g.minReplicas $g.replicas) -}}
{{- $per := ternary (int $g.gpus) 0 (eq $g.type "gpu") -}}
{{- $start = add $start $n }}{{ $max = add $max (int $g.maxReplicas) -}}
{{- $gpus = add $gpus (mul $n $per) }}{{ $maxGpus = add $maxGpus (mul (int $g.maxReplicas) $per) -}}
{{- end -}}
{{- end -}}
head + {{ $start }} worker pod(s) and {{ $gpus }} GPU(s) at start, up to {{ $max }} worker pod(s) and {{ $maxGpus }} GPU(s)
{{- end -}}

{{- define "manymodels.upgradeReport" -}}
{{- $name := include "manymodels.fullname" . -}}
{{- $strategy := .Values.upgradeStrategy.type -}}
{{- $size := include "manymodels.clusterSize" . -}}
{{- $live := lookup "ray.io/v1" "RayService" .Release.Namespace $name -}}
{{- $old := dig "metadata" "annotations" dict (default dict $live) -}}
{{- $oldCluster := get $old "manymodels.io/cluster-config-sha256" -}}
{{- if and .Release.IsUpgrade $oldCluster -}}
{{- $cluster := include "manymodels.clusterDigest" . -}}
{{- $serve := include "manymodels.serveConfig" . | sha256sum -}}
{{- if ne $cluster $oldCluster -}}
{{- if eq $strategy "None" }}

WARNING: this upgrade changes the Ray cluster (rayClusterConfig), but upgradeStrategy.type is None: KubeRay
IGNORES cluster changes and the running cluster keeps its old pods. Apply it with
upgradeStrategy.type=NewCluster, or delete the RayService and install again (downtime).
{{- else if eq $strategy "NewClusterWithIncrementalUpgrade" }}

This upgrade changes the Ray cluster: KubeRay builds a new one and moves traffic to it step by step
(clusterUpgradeOptions); the new cluster needs room for {{ $size }}.
{{- else }}

This upgrade changes the Ray cluster: KubeRay builds a NEW cluster, switches traffic when it serves and
deletes the old one {{ .Values.rayClusterDeletionDelaySeconds }} s later. Meanwhile both run: the new one
needs room for {{ $size }}, next to the running one.
{{- end -}}
{{- else if ne $serve (get $old "manymodels.io/serve-config-sha256") }}

This upgrade changes the Serve config only: KubeRay applies it to the running cluster in place (no new pods).
{{- else }}

This upgrade changes neither the Ray cluster nor the Serve config.
{{- end -}}
{{- else if ne $strategy "None" }}

Later upgrades that change the Ray cluster (image, resources, worker groups, tolerations, identity;
docs/chart.md "What each value change does") build a second cluster next to this one until traffic
switches: plan node capacity and GPU quota for both, i.e. room for another {{ $size }}.
{{- end -}}
{{- end -}}
