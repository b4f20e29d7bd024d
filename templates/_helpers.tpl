{{/* Chart name (nameOverride wins). */}}
{{- define "manymodels.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name, also the RayService name. KubeRay derives <name>-head-svc, <name>-serve-svc and cluster
names (<name>-<5 chars>) from it, so it is kept to 47 characters.
*/}}
{{- define "manymodels.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "manymodels.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "manymodels.selectorLabels" -}}
app.kubernetes.io/name: {{ include "manymodels.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels. Deliberately WITHOUT helm.sh/chart or app.kubernetes.io/version: they change on every
chart/app version bump, and inside rayClusterConfig that would rebuild the Ray cluster for nothing.
*/}}
{{- define "manymodels.labels" -}}
{{ include "manymodels.selectorLabels" . }}
app.kubernetes.io/part-of: manymodels
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels for top-level resources (versioned: these may change freely). */}}
{{- define "manymodels.resourceLabels" -}}
{{ include "manymodels.labels" . }}
helm.sh/chart: {{ include "manymodels.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "manymodels.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "manymodels.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference: repository[:tag][@digest]; tag defaults to the appVersion */}}
{{- define "manymodels.image" -}}
{{- include "manymodels.imageRef" (list . .Values.image) }}
{{- end }}

{{/* The same for an image dict: (list $root $image); templates/_raypod.tpl resolves per-group images. */}}
{{- define "manymodels.imageRef" -}}
{{- $root := index . 0 }}{{ $img := index . 1 }}
{{- $tag := $img.tag }}
{{- if not $tag }}{{ $tag = printf "%s%s" $root.Chart.AppVersion (ternary "-cpu" "" (eq $img.variant "cpu")) }}{{ end }}
{{- if $img.digest }}
{{- printf "%s:%s@%s" $img.repository $tag $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository $tag }}
{{- end }}
{{- end }}

{{/*
The serve Service's labels: the chart's own plus service.labels. KubeRay creates the Service with them
(templates/rayservice.yaml) and the sync hook applies them later (templates/service-sync-hook.yaml); both
also record the key lists (manymodels.keyList) that tell the hook which keys are the chart's to remove,
so the two must compute them alike.
*/}}
{{- define "manymodels.serveServiceLabels" -}}
{{- toJson (merge (dict) (default dict .Values.service.labels) (include "manymodels.resourceLabels" . | fromYaml)) -}}
{{- end }}

{{/* A map's keys, sorted, comma-separated: the record of the keys the chart set. */}}
{{- define "manymodels.keyList" -}}
{{- keys (default dict .) | sortAlpha | join "," -}}
{{- end }}

{{- define "manymodels.pvcName" -}}
{{- if .Values.modelStore.pvc.existingClaim }}
{{- .Values.modelStore.pvc.existingClaim }}
{{- else }}
{{- printf "%s-models" (include "manymodels.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Bytes from an integer or a Kubernetes-style quantity (512Mi, 4Gi, 2G, 1500k). Serve's
ray_actor_options.memory is in bytes.
*/}}
{{- define "manymodels.bytes" -}}
{{- $v := toString . }}
{{- $m := regexFindAll "^([0-9]+)([KMGT]i?|k)?$" $v 1 }}
{{- if not $m }}{{ fail (printf "not a byte quantity: %q (use e.g. 536870912, 512Mi or 4Gi)" $v) }}{{ end }}
{{- $num := regexFind "^[0-9]+" $v | atoi }}
{{- $unit := trimPrefix (toString $num) $v }}
{{- $mult := dict "" 1 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- mul $num (get $mult $unit) }}
{{- end }}

{{/* Ray ports (KubeRay's defaults; 8000 is the public serve port, owned by the Gateway deployment). */}}
{{- define "manymodels.ports.serve" }}8000{{ end }}

{{/*
Cross-field checks JSON Schema cannot express. Called from every template that depends on them, so
`helm template` / `helm install` fail early with a message naming the value.
*/}}
{{- define "manymodels.validate" -}}
{{- $gpuCapacity := 0 }}
{{- $enabled := 0 }}
{{- range $name, $g := .Values.workerGroups }}
{{- if $g.enabled }}
{{- $enabled = add1 $enabled }}
{{- if gt (int $g.minReplicas) (int $g.maxReplicas) }}
{{- fail (printf "workerGroups.%s: minReplicas (%d) must be <= maxReplicas (%d)" $name (int $g.minReplicas) (int $g.maxReplicas)) }}
{{- end }}
{{- if and (hasKey $g "replicas") (not (kindIs "invalid" $g.replicas)) }}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) }}
{{- fail (printf "workerGroups.%s: replicas (%d) must be between minReplicas (%d) and maxReplicas (%d)" $name (int $g.replicas) (int $g.minReplicas) (int $g.maxReplicas)) }}
{{- end }}
{{- end }}
{{- if and (eq (default "cpu" $g.type) "gpu") (lt (int (default 0 $g.gpus)) 1) }}
{{- fail (printf "workerGroups.%s: a gpu group needs gpus >= 1 (got %d)" $name (int (default 0 $g.gpus))) }}
{{- end }}
{{- if and (eq (default "cpu" $g.type) "cpu") (gt (int (default 0 $g.gpus)) 0) }}
{{- fail (printf "workerGroups.%s: gpus is %d but type is cpu; set type: gpu" $name (int $g.gpus)) }}
{{- end }}
{{- $gpuCapacity = add $gpuCapacity (mul (int (default 0 $g.gpus)) (int $g.maxReplicas)) }}
{{- end }}
{{- end }}
{{- if eq $enabled 0 }}
{{- fail "workerGroups: enable at least one worker group (the head runs no serving replicas)" }}
{{- end }}
{{- $ms := .Values.modelServer }}
{{- if and (gt (float64 $ms.rayActorOptions.numGpus) 0.0) (eq $gpuCapacity 0) }}
{{- fail (printf "modelServer.rayActorOptions.numGpus is %v but no enabled worker group has gpus" $ms.rayActorOptions.numGpus) }}
{{- end }}
{{- if $ms.autoscaling.enabled }}
{{- if gt (int $ms.autoscaling.minReplicas) (int $ms.autoscaling.maxReplicas) }}
{{- fail (printf "modelServer.autoscaling: minReplicas (%d) must be <= maxReplicas (%d)" (int $ms.autoscaling.minReplicas) (int $ms.autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}
{{- if .Values.gcsFaultTolerance.enabled }}
{{- if not .Values.gcsFaultTolerance.redisAddress }}
{{- fail "gcsFaultTolerance.redisAddress is required when gcsFaultTolerance.enabled" }}
{{- end }}
{{- if not .Values.gcsFaultTolerance.redisPasswordSecret.name }}
{{- fail "gcsFaultTolerance.redisPasswordSecret.name is required when gcsFaultTolerance.enabled" }}
{{- end }}
{{- $ft := .Values.gcsFaultTolerance }}
{{- if not (regexMatch "^(rediss?://)?[^:/\\s]+:[0-9]+$" $ft.redisAddress) }}
{{- fail (printf "gcsFaultTolerance.redisAddress %q: use host:port, redis://host:port, or rediss://host:port (TLS)" $ft.redisAddress) }}
{{- end }}
{{- if and $ft.redisUsername $ft.redisUsernameSecret.name }}
{{- fail "gcsFaultTolerance: set redisUsername or redisUsernameSecret.name, not both" }}
{{- end }}
{{- if and $ft.caSecret.name (not (hasPrefix "rediss://" $ft.redisAddress)) }}
{{- fail (printf "gcsFaultTolerance.caSecret is set but redisAddress %q is not rediss://: the CA would never be used (TLS needs rediss://)" $ft.redisAddress) }}
{{- end }}
{{- if and $ft.externalStorageNamespace (ne .Values.upgradeStrategy.type "None") }}
{{- fail (printf "gcsFaultTolerance.externalStorageNamespace %q would be shared by the old and the new Ray cluster during a %s upgrade (KubeRay warns it can switch traffic early and mix their GCS state): leave it empty, KubeRay then uses each RayCluster's UID" $ft.externalStorageNamespace .Values.upgradeStrategy.type) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.upgradeStrategy.type "NewClusterWithIncrementalUpgrade") (not .Values.rayAutoscaler.enabled) }}
{{- fail "upgradeStrategy.type NewClusterWithIncrementalUpgrade needs rayAutoscaler.enabled" }}
{{- end }}
{{- include "manymodels.validateModelStore" . }}
{{- /* The cloud files leave the identity and account values empty for you to fill in: an empty one
would install fine and then fail every model read with 401/403, so it fails the render instead. */}}
{{- range $key, $value := .Values.serviceAccount.annotations }}
{{- if and (kindIs "string" $value) (not $value) }}
{{- fail (printf "serviceAccount.annotations.%s is empty: set the workload identity the pods run as, e.g. --set serviceAccount.annotations.\"%s\"=...; or delete the line from your copy of the cloud file (docs/storage.md)" $key (replace "." "\\." $key)) }}
{{- end }}
{{- end }}
{{- range $key, $value := (.Values.modelServer.userConfig.store.storage_options | default dict) }}
{{- if and (kindIs "string" $value) (not $value) }}
{{- fail (printf "modelServer.userConfig.store.storage_options.%s is empty: set it, or delete it from your copy of the cloud file (docs/storage.md)" $key) }}
{{- end }}
{{- end }}
{{- include "manymodels.validatePods" . }}
{{- include "manymodels.validateUpgradeStrategy" . }}
{{- include "manymodels.validateRayAuth" . }}
{{- end }}

{{/*
The model catalog (called from manymodels.validate, persistentvolumeclaim.yaml and catalog-loader.yaml).
Object storage is the default; a PVC is opt-in, because the default storage class of GKE, EKS and AKS
is ReadWriteOnce only: a ReadWriteMany claim on it never binds, and every Ray pod that mounts it stays
Pending.
*/}}
{{- define "manymodels.validateModelStore" -}}
{{- $p := .Values.modelStore.pvc -}}
{{- if and (not $p.enabled) (not .Values.modelServer.userConfig.store.uri) -}}
{{- fail "no model catalog: set modelServer.userConfig.store.uri to the object store that holds it (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX; values/{eks,gke,aks}.yaml), or set modelStore.pvc.enabled=true to mount a ReadWriteMany PVC at modelStore.pvc.mountPath (with modelStore.pvc.storageClassName, and modelStore.pvc.loader to fill it). docs/storage.md shows both" -}}
{{- end -}}
{{- if and $p.enabled (not $p.create) (not $p.existingClaim) -}}
{{- fail "modelStore.pvc.existingClaim is required when modelStore.pvc.create is false" -}}
{{- end -}}
{{- $created := and $p.enabled $p.create (not $p.existingClaim) -}}
{{- if and $created (not $p.storageClassName) (or (has "ReadWriteMany" $p.accessModes) (has "ReadOnlyMany" $p.accessModes)) -}}
{{- fail (printf "modelStore.pvc.storageClassName is empty: the %v claim would get the cluster's default storage class, which on GKE, EKS and AKS is ReadWriteOnce only, so the claim and every Ray pod would stay Pending. Name a ReadWriteMany class: GKE (Filestore CSI driver) standard-rwx or enterprise-rwx; EKS (EFS CSI driver) the StorageClass you created for efs.csi.aws.com, e.g. efs-sc; AKS (Azure Files CSI driver) azurefile-csi or azurefile-csi-premium; elsewhere an NFS class (docs/storage.md). Or keep the catalog in object storage: modelStore.pvc.enabled=false and modelServer.userConfig.store.uri" (join "/" $p.accessModes)) -}}
{{- end -}}
{{- if $p.loader.enabled -}}
{{- if not $p.enabled -}}
{{- fail "modelStore.pvc.loader.enabled needs modelStore.pvc.enabled: the loader fills the PVC (with the catalog in object storage there is nothing to load)" -}}
{{- end -}}
{{- if not $p.loader.source -}}
{{- fail "modelStore.pvc.loader.source is required: the catalog to copy into the PVC, e.g. s3://BUCKET/catalog, gs://BUCKET/catalog or az://CONTAINER/catalog" -}}
{{- end -}}
{{- if and $created (not (or (has "ReadWriteMany" $p.accessModes) (has "ReadWriteOnce" $p.accessModes))) -}}
{{- fail (printf "modelStore.pvc.loader writes to the claim, but modelStore.pvc.accessModes is %v: add ReadWriteMany (the Ray pods still mount it read-only)" (join "/" $p.accessModes)) -}}
{{- end -}}
{{- $_ := include "manymodels.loaderDest" . -}}
{{- end -}}
{{- end }}

{{/*
Where the catalog loader writes: the folder the server reads, modelServer.userConfig.store.uri when it
is a path on the claim (e.g. /models/catalog), else the claim's mountPath.
*/}}
{{- define "manymodels.loaderDest" -}}
{{- $mount := trimSuffix "/" .Values.modelStore.pvc.mountPath | default "/" -}}
{{- $uri := .Values.modelServer.userConfig.store.uri -}}
{{- if not $uri -}}
{{- $mount -}}
{{- else if or (eq (trimSuffix "/" $uri) $mount) (hasPrefix (printf "%s/" (trimSuffix "/" $mount)) $uri) -}}
{{- trimSuffix "/" $uri -}}
{{- else -}}
{{- fail (printf "modelStore.pvc.loader fills the PVC at %s, but the server reads modelServer.userConfig.store.uri %q: leave store.uri empty (the server then reads the claim) or point it at a folder under %s" $mount $uri $mount) -}}
{{- end -}}
{{- end }}
