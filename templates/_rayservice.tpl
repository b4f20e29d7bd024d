{{/*
Pieces of the RayService. Rule: nothing under rayClusterConfig may read .Values.modelServer or
.Values.gateway (serving values), so that a model rollout changes serveConfigV2 only and KubeRay applies
it in place (tests/chart/rayservice_test.yaml checks this).
*/}}

{{/* The catalog the server reads (and the training job publishes into): store.uri, else the PVC's mount. */}}
{{- define "manymodels.storeUri" -}}
{{- dig "store" "uri" "" .Values.modelServer.userConfig | default .Values.modelStore.pvc.mountPath -}}
{{- end }}

{{/* The Serve config (serveConfigV2), in exactly the format manymodels.config.app_settings reads. */}}
{{- define "manymodels.serveConfig" -}}
{{- $ms := .Values.modelServer }}
{{- $server := deepCopy $ms.userConfig }}
{{- $store := deepCopy (default dict $server.store) }}
{{- $_ := set $store "uri" (include "manymodels.storeUri" .) }}
{{- if and .Values.modelStore.diskCache.enabled (not (hasKey $store "disk_cache_dir")) }}
{{- $_ := set $store "disk_cache_dir" .Values.modelStore.diskCache.mountPath }}
{{- end }}
{{- $_ := set $server "store" $store }}
{{- if kindIs "invalid" $server.default_model }}{{ $_ := unset $server "default_model" }}{{ end }}
{{- $actor := dict "num_cpus" $ms.rayActorOptions.numCpus }}
{{- if $ms.rayActorOptions.numGpus }}{{ $_ := set $actor "num_gpus" $ms.rayActorOptions.numGpus }}{{ end }}
{{- if $ms.rayActorOptions.memory }}{{ $_ := set $actor "memory" (include "manymodels.bytes" $ms.rayActorOptions.memory | int64) }}{{ end }}
{{- $modelServer := dict "name" "ModelServer" "max_ongoing_requests" $ms.maxOngoingRequests "max_queued_requests" $ms.maxQueuedRequests "ray_actor_options" $actor "user_config" $server }}
{{- if $ms.autoscaling.enabled }}
{{- $as := $ms.autoscaling }}
{{- $asc := dict "min_replicas" $as.minReplicas "max_replicas" $as.maxReplicas "target_ongoing_requests" $as.targetOngoingRequests "upscale_delay_s" $as.upscaleDelayS "downscale_delay_s" $as.downscaleDelayS "policy" (dict "policy_function" "manymodels.serve.autoscaling:inflight_policy") }}
{{- if not (kindIs "invalid" $as.initialReplicas) }}{{ $_ := set $asc "initial_replicas" $as.initialReplicas }}{{ end }}
{{- $_ := set $modelServer "autoscaling_config" $asc }}
{{- else }}
{{- $_ := set $modelServer "num_replicas" $ms.numReplicas }}
{{- end }}
{{- $modelServer = merge $modelServer (deepCopy $ms.extraOptions) }}
{{- $gwMax := 1 }}
{{- range $name, $g := .Values.workerGroups }}{{ if $g.enabled }}{{ $gwMax = add $gwMax (int $g.maxReplicas) }}{{ end }}{{ end }}
{{- $gwConfig := merge (dict "host" "0.0.0.0" "port" (include "manymodels.ports.serve" . | int)) (deepCopy .Values.gateway.userConfig) }}
{{- $_ := set $gwConfig "host" "0.0.0.0" }}
{{- $_ := set $gwConfig "port" (include "manymodels.ports.serve" . | int) }}
{{- $gateway := dict "name" "Gateway" "max_replicas_per_node" 1 "ray_actor_options" (dict "num_cpus" 0) "user_config" $gwConfig }}
{{- if kindIs "invalid" .Values.gateway.numReplicas }}
{{- $_ := set $gateway "autoscaling_config" (dict "min_replicas" 1 "max_replicas" $gwMax "upscale_delay_s" 0 "downscale_delay_s" 60 "policy" (dict "policy_function" "manymodels.serve.autoscaling:one_per_node_policy")) }}
{{- else }}
{{- $_ := set $gateway "num_replicas" .Values.gateway.numReplicas }}
{{- end }}
{{- $app := dict "name" "manymodels" "route_prefix" "/" "import_path" "manymodels.serve.app:build_app" "deployments" (list $modelServer $gateway) }}
{{- $config := dict "proxy_location" "EveryNode" "http_options" (dict "host" "0.0.0.0" "port" .Values.rayServeProxyPort) "applications" (list $app) }}
{{- toYaml $config }}
{{- end }}

{{/* Labels of every Ray pod (stable: no chart/app version, see manymodels.labels). */}}
{{- define "manymodels.rayPodLabels" -}}
{{- $root := index . 0 }}{{ $component := index . 1 }}{{ $extra := index . 2 -}}
{{ include "manymodels.labels" $root }}
app.kubernetes.io/component: {{ $component }}
{{- with $root.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- with $extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Annotations of a Ray pod: (list $root $group "head"|"worker"). The identity checksum changes whenever
the name or annotations of the ServiceAccount the pod runs as change (manymodels.podIdentity,
templates/_raypod.tpl): EKS and AKS inject workload identity only when a pod is created, so such a
change must build new pods (it changes the RayCluster spec, and KubeRay builds a new cluster), not wait
for the next unrelated rebuild. The head is marked not-to-be-evicted by the
cluster autoscaler and Karpenter (a drained head stops serving until it is back). Values win.
*/}}
{{- define "manymodels.rayPodAnnotations" -}}
{{- $root := index . 0 }}{{ $g := index . 1 }}{{ $role := index . 2 -}}
{{- $chart := dict "manymodels.io/identity-checksum" (include "manymodels.podIdentity" (list $root $g $role) | sha256sum) -}}
{{- if eq $role "head" -}}
{{- $_ := set $chart "cluster-autoscaler.kubernetes.io/safe-to-evict" "false" -}}
{{- $_ := set $chart "karpenter.sh/do-not-disrupt" "true" -}}
{{- end -}}
{{- toYaml (merge (dict) (default dict $g.annotations) (default dict $root.Values.podAnnotations) $chart) -}}
{{- end }}

{{/*
rayStartParams of a Ray pod: (list $root $group). Unless set, object-store-memory is Ray's own default
(30% of the container's memory limit), capped at 90% of an explicit shmSizeLimit; without one /dev/shm
is sized to the store instead (manymodels.rayMemory, templates/_raypod.tpl).
*/}}
{{- define "manymodels.rayStartParams" -}}
{{- $root := index . 0 }}{{ $g := index . 1 -}}
{{- $params := deepCopy (default dict $g.rayStartParams) -}}
{{- $memory := include "manymodels.rayMemory" (list $root $g) | fromJson -}}
{{- if hasKey $params "object-store-memory" -}}
{{- /* Ray takes whole bytes only: a quantity ("2Gi") or a number a values file turned into a float
(2000000000 renders as 2e+09) is normalised here, and anything else fails the render */ -}}
{{- $set := index $params "object-store-memory" -}}
{{- if kindIs "string" $set }}{{ $_ := set $params "object-store-memory" (include "manymodels.bytes" $set) }}
{{- else }}{{ $_ := set $params "object-store-memory" (int64 $set | toString) }}{{ end -}}
{{- else if hasKey $memory "store" -}}
{{- $_ := set $params "object-store-memory" $memory.store -}}
{{- end -}}
{{- range $k, $val := $params }}
{{ $k }}: {{ toString $val | quote }}
{{- end }}
{{- end }}

{{/*
The Ray container + pod spec shared by head and workers: (list $root $group "head"|"worker" $selector),
$selector being the labels that select this group's pods (for topologySpreadConstraints). Global
lists (env, envFrom, extraVolumes, extraVolumeMounts) come first, the group's own are appended.
The training RayJob (templates/_training.tpl) builds its pods with it too, so they see the store as the
serving pods do; its groups carry trainingPod: true (no API token, the claim read-write, no Redis CA).
*/}}
{{- define "manymodels.rayPodSpec" -}}
{{- $root := index . 0 }}{{ $g := index . 1 }}{{ $role := index . 2 }}{{ $selector := index . 3 -}}
{{- $v := $root.Values -}}
{{- $identity := include "manymodels.podIdentity" (list $root $g $role) | fromJson -}}
{{- $image := include "manymodels.rayImage" (list $root $g) | fromJson -}}
{{- $memory := include "manymodels.rayMemory" (list $root $g) | fromJson -}}
serviceAccountName: {{ $identity.name }}
{{- if $g.trainingPod }}
automountServiceAccountToken: false
{{- else if eq $role "head" }}
automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
{{- else }}
automountServiceAccountToken: {{ dig "workers" "automountServiceAccountToken" false $v.serviceAccount }}
{{- end }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with $g.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $g.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $g.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with include "manymodels.topologySpread" (list $root $g $selector) }}
topologySpreadConstraints:
  {{- . | nindent 2 }}
{{- end }}
{{- with $g.priorityClassName | default $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $g.runtimeClassName | default $v.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
containers:
  - name: ray-{{ $role }}
    image: {{ include "manymodels.imageRef" (list $root $image) | quote }}
    imagePullPolicy: {{ $image.pullPolicy }}
    ports:
      {{- if eq $role "head" }}
      - {name: gcs-server, containerPort: 6379, protocol: TCP}
      - {name: dashboard, containerPort: 8265, protocol: TCP}
      - {name: client, containerPort: 10001, protocol: TCP}
      {{- end }}
      - {name: serve, containerPort: {{ include "manymodels.ports.serve" $root }}, protocol: TCP}
      - {name: metrics, containerPort: 8080, protocol: TCP}
    {{- $res := deepCopy $g.resources }}
    {{- if gt (int (default 0 $g.gpus)) 0 }}
    {{- $limits := default dict $res.limits }}
    {{- $_ := set $limits "nvidia.com/gpu" (int $g.gpus) }}
    {{- $_ := set $res "limits" $limits }}
    {{- end }}
    resources:
      {{- toYaml $res | nindent 6 }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
    {{- $redisCA := and (eq $role "head") (not $g.trainingPod) $v.gcsFaultTolerance.enabled $v.gcsFaultTolerance.caSecret.name }}
    {{- /* the training job publishes into the store: its pods mount the claim read-write */}}
    {{- $storeReadOnly := and $v.modelStore.pvc.readOnly (not $g.trainingPod) }}
    {{- $env := default list $v.env }}
    {{- if $redisCA }}
    {{- /* Ray's GCS reads the CA bundle for rediss:// from RAY_REDIS_CA_CERT (RayConfig redis_ca_cert) */}}
    {{- $env = append $env (dict "name" "RAY_REDIS_CA_CERT" "value" (printf "/etc/manymodels/redis-ca/%s" $v.gcsFaultTolerance.caSecret.key)) }}
    {{- end }}
    {{- with $env }}
    env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with concat (default list $v.envFrom) (default list $g.envFrom) }}
    envFrom:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - {name: dshm, mountPath: /dev/shm}
      {{- if $redisCA }}
      - {name: redis-ca, mountPath: /etc/manymodels/redis-ca, readOnly: true}
      {{- end }}
      {{- if $v.modelStore.pvc.enabled }}
      - name: models
        mountPath: {{ $v.modelStore.pvc.mountPath }}
        readOnly: {{ $storeReadOnly }}
      {{- end }}
      {{- if $v.modelStore.diskCache.enabled }}
      - {name: disk-cache, mountPath: {{ $v.modelStore.diskCache.mountPath }}}
      {{- end }}
      {{- with concat (default list $v.extraVolumeMounts) (default list $g.extraVolumeMounts) }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  {{- if $redisCA }}
  - name: redis-ca
    secret:
      secretName: {{ $v.gcsFaultTolerance.caSecret.name }}
      items: [{key: {{ $v.gcsFaultTolerance.caSecret.key }}, path: {{ $v.gcsFaultTolerance.caSecret.key }}}]
  {{- end }}
  - name: dshm
    emptyDir:
      medium: Memory
      {{- with $memory.shm }}
      sizeLimit: {{ . }}
      {{- end }}
  {{- if $v.modelStore.pvc.enabled }}
  - name: models
    persistentVolumeClaim:
      claimName: {{ include "manymodels.pvcName" $root }}
      readOnly: {{ $storeReadOnly }}
  {{- end }}
  {{- if $v.modelStore.diskCache.enabled }}
  - name: disk-cache
    emptyDir:
      sizeLimit: {{ $v.modelStore.diskCache.sizeLimit }}
  {{- end }}
  {{- with concat (default list $v.extraVolumes) (default list $g.extraVolumes) }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
The fields KubeRay leaves out of its cluster hash (tolerations of every group; a worker group's
minReplicas/maxReplicas, and replicas): changing only those would make `helm upgrade` a silent no-op
until some other change rebuilt the cluster. Their digest, as a pod-template annotation, makes KubeRay
build a new cluster with them instead. replicas counts only without the Ray autoscaler: with it,
replicas is the starting size and the autoscaler owns the live count. (list $root $group)
*/}}
{{- define "manymodels.schedulingChecksum" -}}
{{- $root := index . 0 }}{{ $g := index . 1 -}}
{{- $fields := dict "tolerations" (default list $g.tolerations) -}}
{{- if hasKey $g "maxReplicas" -}}
{{- $_ := set $fields "minReplicas" $g.minReplicas -}}
{{- $_ := set $fields "maxReplicas" $g.maxReplicas -}}
{{- if not $root.Values.rayAutoscaler.enabled }}{{ $_ := set $fields "replicas" (default $g.minReplicas $g.replicas) }}{{ end -}}
{{- end -}}
{{- toJson $fields | sha256sum | trunc 16 | quote -}}
{{- end }}

{{/*
Digest of rayClusterConfig as KubeRay compares it (its GenerateHashWithoutReplicasAndWorkersToDelete):
without worker replicas/minReplicas/maxReplicas and pod tolerations. It changes exactly when KubeRay
builds a new cluster (those fields reach it through manymodels.io/scheduling-checksum), so NOTES can
tell a rebuilding upgrade from one that changes nothing (templates/_upgrade.tpl).
*/}}
{{- define "manymodels.clusterDigest" -}}
{{- $c := include "manymodels.rayClusterConfig" . | fromYaml -}}
{{- $_ := unset $c.headGroupSpec.template.spec "tolerations" -}}
{{- range $c.workerGroupSpecs -}}
{{- $_ := unset . "replicas" }}{{ $_ := unset . "minReplicas" }}{{ $_ := unset . "maxReplicas" -}}
{{- $_ := unset .template.spec "tolerations" -}}
{{- end -}}
{{- toJson $c | sha256sum -}}
{{- end }}

{{/* rayClusterConfig: cluster-level values only. */}}
{{- define "manymodels.rayClusterConfig" -}}
{{- $v := .Values -}}
rayVersion: {{ $v.rayVersion | quote }}
{{- if ne $v.rayAuth.mode "disabled" }}
authOptions:
  mode: {{ $v.rayAuth.mode }}
{{- end }}
enableInTreeAutoscaling: {{ $v.rayAutoscaler.enabled }}
{{- if $v.rayAutoscaler.enabled }}
autoscalerOptions:
  {{- $opts := deepCopy $v.rayAutoscaler.options }}
  {{- if not (hasKey $opts "securityContext") }}{{ $_ := set $opts "securityContext" $v.securityContext }}{{ end }}
  {{- if not (hasKey $opts "imagePullPolicy") }}{{ $_ := set $opts "imagePullPolicy" $v.image.pullPolicy }}{{ end }}
  {{- toYaml $opts | nindent 2 }}
{{- end }}
{{- if $v.gcsFaultTolerance.enabled }}
gcsFaultToleranceOptions:
  redisAddress: {{ $v.gcsFaultTolerance.redisAddress | quote }}
  redisPassword:
    valueFrom:
      secretKeyRef:
        name: {{ $v.gcsFaultTolerance.redisPasswordSecret.name }}
        key: {{ $v.gcsFaultTolerance.redisPasswordSecret.key }}
  {{- if $v.gcsFaultTolerance.redisUsernameSecret.name }}
  redisUsername:
    valueFrom:
      secretKeyRef:
        name: {{ $v.gcsFaultTolerance.redisUsernameSecret.name }}
        key: {{ $v.gcsFaultTolerance.redisUsernameSecret.key }}
  {{- else if $v.gcsFaultTolerance.redisUsername }}
  redisUsername:
    value: {{ $v.gcsFaultTolerance.redisUsername | quote }}
  {{- end }}
  {{- with $v.gcsFaultTolerance.externalStorageNamespace }}
  externalStorageNamespace: {{ . | quote }}
  {{- end }}
{{- end }}
headGroupSpec:
  rayStartParams:
    {{- include "manymodels.rayStartParams" (list . $v.head) | trim | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "manymodels.rayPodLabels" (list . "ray-head" $v.head.labels) | nindent 8 }}
      annotations:
        {{- include "manymodels.rayPodAnnotations" (list . $v.head "head") | nindent 8 }}
        manymodels.io/scheduling-checksum: {{ include "manymodels.schedulingChecksum" (list . $v.head) }}
    spec:
      {{- include "manymodels.rayPodSpec" (list . $v.head "head" (merge (include "manymodels.selectorLabels" . | fromYaml) (dict "app.kubernetes.io/component" "ray-head"))) | nindent 6 }}
workerGroupSpecs:
  {{- range $name, $g := $v.workerGroups }}
  {{- if $g.enabled }}
  - groupName: {{ $name }}
    replicas: {{ default $g.minReplicas $g.replicas }}
    minReplicas: {{ $g.minReplicas }}
    maxReplicas: {{ $g.maxReplicas }}
    {{- $params := include "manymodels.rayStartParams" (list $ $g) }}
    rayStartParams:{{ if trim $params }}{{ $params | trim | nindent 6 }}{{ else }} {}{{ end }}
    template:
      metadata:
        labels:
          {{- include "manymodels.rayPodLabels" (list $ "ray-worker" (merge (dict "manymodels.io/worker-group" $name) (default dict $g.labels))) | nindent 10 }}
        annotations:
          {{- include "manymodels.rayPodAnnotations" (list $ $g "worker") | nindent 10 }}
          manymodels.io/scheduling-checksum: {{ include "manymodels.schedulingChecksum" (list $ $g) }}
      spec:
        {{- include "manymodels.rayPodSpec" (list $ $g "worker" (merge (include "manymodels.selectorLabels" $ | fromYaml) (dict "app.kubernetes.io/component" "ray-worker" "manymodels.io/worker-group" $name))) | nindent 8 }}
  {{- end }}
  {{- end }}
{{- end }}
