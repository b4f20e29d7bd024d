{{/*
The training job (docs/chart.md "Training job"): one RayJob spec, rendered as the on-demand Helm hook
(templates/training-rayjob.yaml) and into the ConfigMap the CronJob submits from
(templates/training-cronjob.yaml), so both runs are the same. Its pods come from the serving pods'
helpers (manymodels.rayPodSpec, templates/_rayservice.tpl): same image family, ServiceAccount
(the workers' identity: it reads and writes the store), env, envFrom, volumes and PVC mount (read-write).
*/}}

{{/*
<fullname, at most 32 characters>-training (at most 41): KubeRay refuses RayJob names over 47, and a
scheduled run's name is this plus "-" and 5 random characters (generateName).
*/}}
{{- define "manymodels.trainingName" -}}
{{- printf "%s-training" (include "manymodels.fullname" . | trunc 32 | trimSuffix "-") -}}
{{- end }}

{{/* Labels every training RayJob carries, and the selector the submitter and the uninstall hook use. */}}
{{- define "manymodels.trainingSelectorLabels" -}}
{{ include "manymodels.selectorLabels" . }}
app.kubernetes.io/component: training
{{- end }}

{{- define "manymodels.trainingSelector" -}}
{{- $out := list -}}
{{- range $k, $v := include "manymodels.trainingSelectorLabels" . | fromYaml }}{{ $out = append $out (printf "%s=%s" $k $v) }}{{ end -}}
{{- join "," $out -}}
{{- end }}

{{/* The training image (JSON): training.image merged over `image`, as a Ray group's image is. */}}
{{- define "manymodels.trainingImage" -}}
{{- include "manymodels.rayImage" (list . (dict "image" .Values.training.image)) -}}
{{- end }}

{{/*
One shell word: KubeRay runs the entrypoint inside `bash -c "... ray job submit -- ENTRYPOINT ..."`,
so anything but plain characters (the --options-json JSON) is single-quoted.
*/}}
{{- define "manymodels.shellWord" -}}
{{- if regexMatch "^[A-Za-z0-9_./:=@%+,-]+$" . -}}
{{- . -}}
{{- else -}}
{{- printf "'%s'" (replace "'" "'\"'\"'" .) -}}
{{- end -}}
{{- end }}

{{/* The CPUs Ray sees on one training worker pod ("" when neither num-cpus nor a CPU limit says). */}}
{{- define "manymodels.trainingWorkerCpus" -}}
{{- $w := .Values.training.workers -}}
{{- $numCpus := toString (dig "num-cpus" "" (default dict $w.rayStartParams)) -}}
{{- /* KubeRay's --num-cpus: the CPU limit, else the request */ -}}
{{- $limit := toString (dig "resources" "limits" "cpu" (dig "resources" "requests" "cpu" "" $w) $w) -}}
{{- if $numCpus -}}
{{- float64 $numCpus -}}
{{- else if hasSuffix "m" $limit -}}
{{- /* rounded up, as KubeRay does (Quantity.Value()) */ -}}
{{- ceil (divf (float64 (trimSuffix "m" $limit)) 1000) -}}
{{- else if $limit -}}
{{- ceil (float64 $limit) -}}
{{- end -}}
{{- end }}

{{/* The entrypoint: `python -m manymodels.training` with the flags the training values ask for. */}}
{{- define "manymodels.trainingEntrypoint" -}}
{{- $t := .Values.training -}}
{{- $args := list "python" "-m" "manymodels.training" "--store" (include "manymodels.storeUri" .) "--model" $t.model "--task" $t.task "--num-workers" (toString (int $t.numWorkers)) -}}
{{- if $t.useGpu }}{{ $args = append $args "--use-gpu" }}{{ end -}}
{{- /* one Train worker per worker pod: each takes the CPUs Ray sees there (KubeRay's --num-cpus is the
container's CPU limit, or rayStartParams.num-cpus); otherwise Ray packs several onto one pod */ -}}
{{- with (include "manymodels.trainingWorkerCpus" .) }}{{ $args = concat $args (list "--cpus-per-worker" .) }}{{ end -}}
{{- if not (kindIs "invalid" $t.minScore) }}{{ $args = append $args "--min-score" }}{{ $args = append $args (toString $t.minScore) }}{{ end -}}
{{- $args = concat $args (list "--min-improvement" (toString $t.minImprovement)) -}}
{{- with $t.options }}{{ $args = concat $args (list "--options-json" (toJson .)) }}{{ end -}}
{{- /* the serving store's fsspec options (e.g. AKS's account_name): the job reads and writes the same store */ -}}
{{- with (dig "store" "storage_options" dict .Values.modelServer.userConfig) }}{{ $args = concat $args (list "--storage-options" (toJson .)) }}{{ end -}}
{{- $words := list -}}
{{- range $args }}{{ $words = append $words (include "manymodels.shellWord" .) }}{{ end -}}
{{- join " " $words -}}
{{- end }}

{{/*
The training cluster's head and worker group (JSON {head, workers}), in the shape of the serving
groups, for manymodels.rayPodSpec: both run as the workers' ServiceAccount (the store identity;
without the autoscaler's Role and without an API token: training code is user code). A GPU worker
group takes workerGroups.gpu's nodeSelector, tolerations and affinity unless it has its own.
*/}}
{{- define "manymodels.trainingGroups" -}}
{{- $t := .Values.training -}}
{{- $sa := include "manymodels.workerServiceAccountName" . -}}
{{- $common := dict "trainingPod" true "serviceAccountName" $sa "image" (default dict $t.image) -}}
{{- $head := merge (deepCopy $t.head) $common -}}
{{- $w := $t.workers -}}
{{- $gpus := int (default 0 $w.gpus) -}}
{{- $gpuGroup := dig "gpu" dict (default dict .Values.workerGroups) -}}
{{- $workers := merge (dict "gpus" $gpus "resources" (deepCopy $w.resources) "rayStartParams" (deepCopy (default dict $w.rayStartParams))) $common -}}
{{- range $key := list "nodeSelector" "tolerations" "affinity" -}}
{{- $own := get $w $key -}}
{{- if not (kindIs "invalid" $own) -}}
{{- $_ := set $workers $key $own -}}
{{- else if gt $gpus 0 -}}
{{- $_ := set $workers $key (get $gpuGroup $key) -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "head" $head "workers" $workers) -}}
{{- end }}

{{/* The RayJob's spec (YAML). */}}
{{- define "manymodels.trainingRayJobSpec" -}}
{{- $v := .Values -}}
{{- $t := $v.training -}}
{{- $groups := include "manymodels.trainingGroups" . | fromJson -}}
{{- $image := include "manymodels.trainingImage" . | fromJson -}}
{{- $selector := include "manymodels.selectorLabels" . | fromYaml -}}
entrypoint: {{ include "manymodels.trainingEntrypoint" . | quote }}
# a Kubernetes Job runs `ray job submit` against the cluster and follows the logs (KubeRay's default)
submissionMode: K8sJobMode
# the Ray cluster is deleted ttlSecondsAfterFinished after the job ends; the RayJob stays (its status)
shutdownAfterJobFinishes: true
ttlSecondsAfterFinished: {{ int $t.ttlSecondsAfterFinished }}
activeDeadlineSeconds: {{ int $t.activeDeadlineSeconds }}
backoffLimit: {{ int $t.backoffLimit }}
submitterPodTemplate:
  metadata:
    labels:
      {{- include "manymodels.labels" . | nindent 6 }}
      app.kubernetes.io/component: training-submitter
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "manymodels.workerServiceAccountName" . }}
    automountServiceAccountToken: false
    {{- with $v.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml $v.podSecurityContext | nindent 6 }}
    containers:
      # command left empty: KubeRay fills in `ray job submit ... -- <entrypoint>` and the token env
      - name: ray-job-submitter
        image: {{ include "manymodels.imageRef" (list . $image) | quote }}
        imagePullPolicy: {{ $image.pullPolicy }}
        resources:
          requests: {cpu: 100m, memory: 512Mi}
          limits: {cpu: "1", memory: 1Gi}
        securityContext:
          {{- toYaml $v.securityContext | nindent 10 }}
rayClusterSpec:
  rayVersion: {{ $v.rayVersion | quote }}
  {{- if ne $v.rayAuth.mode "disabled" }}
  authOptions:
    mode: {{ $v.rayAuth.mode }}
  {{- end }}
  # a fixed-size cluster for one run: numWorkers worker pods, no autoscaler
  enableInTreeAutoscaling: false
  headGroupSpec:
    rayStartParams:
      {{- include "manymodels.rayStartParams" (list . $groups.head) | trim | nindent 6 }}
    template:
      metadata:
        labels:
          {{- include "manymodels.rayPodLabels" (list . "training-head" dict) | nindent 10 }}
        annotations:
          {{- include "manymodels.rayPodAnnotations" (list . $groups.head "head") | nindent 10 }}
      spec:
        {{- include "manymodels.rayPodSpec" (list . $groups.head "head" (merge (deepCopy $selector) (dict "app.kubernetes.io/component" "training-head"))) | nindent 8 }}
  workerGroupSpecs:
    - groupName: train
      replicas: {{ int $t.numWorkers }}
      minReplicas: {{ int $t.numWorkers }}
      maxReplicas: {{ int $t.numWorkers }}
      {{- $params := include "manymodels.rayStartParams" (list . $groups.workers) }}
      rayStartParams:{{ if trim $params }}{{ $params | trim | nindent 8 }}{{ else }} {}{{ end }}
      template:
        metadata:
          labels:
            {{- include "manymodels.rayPodLabels" (list . "training-worker" dict) | nindent 12 }}
          annotations:
            {{- include "manymodels.rayPodAnnotations" (list . $groups.workers "worker") | nindent 12 }}
        spec:
          {{- include "manymodels.rayPodSpec" (list . $groups.workers "worker" (merge (deepCopy $selector) (dict "app.kubernetes.io/component" "training-worker"))) | nindent 10 }}
{{- end }}

{{/* Cross-field checks of training.* (called by every training template). */}}
{{- define "manymodels.validateTraining" -}}
{{- $t := .Values.training -}}
{{- if not $t.model -}}
{{- fail "training.model is required with training.enabled: the store model the job trains and publishes (python -m manymodels.training --model)" -}}
{{- end -}}
{{- $image := include "manymodels.trainingImage" . | fromJson -}}
{{- if eq (toString $image.variant) "cpu" -}}
{{- fail (printf "training runs PyTorch (Ray Train TorchTrainer, torch.onnx.export), which the cpu image variant lacks, but the training image resolves to %s: set training.image.variant=gpu (the GPU image runs on CPU nodes too), or image.variant=gpu, or point training.image.repository/tag at an image with torch and the app's train extra (docs/image.md)" (include "manymodels.imageRef" (list . $image))) -}}
{{- end -}}
{{- $gpus := int (default 0 $t.workers.gpus) -}}
{{- if and $t.useGpu (lt $gpus 1) -}}
{{- fail "training.useGpu needs GPUs on the training workers: set training.workers.gpus >= 1 (nvidia.com/gpu per worker pod)" -}}
{{- end -}}
{{- if and (gt $gpus 0) (not $t.useGpu) -}}
{{- fail (printf "training.workers.gpus is %d but training.useGpu is false: the workers would hold GPUs and train on CPU; set training.useGpu=true or training.workers.gpus=0" $gpus) -}}
{{- end -}}
{{- $p := .Values.modelStore.pvc -}}
{{- if and $p.enabled $p.create (not $p.existingClaim) (not (or (has "ReadWriteMany" $p.accessModes) (has "ReadWriteOnce" $p.accessModes))) -}}
{{- fail (printf "training publishes into the model claim, but modelStore.pvc.accessModes is %v: add ReadWriteMany (the serving pods still mount it read-only)" (join "/" $p.accessModes)) -}}
{{- end -}}
{{- /* the catalog loader makes each model's aliases equal to its source's at every install, upgrade and
rollback: it would silently undo the job's canary/stable moves */ -}}
{{- if and $p.enabled $p.loader.enabled (or (not $p.loader.models) (has $t.model $p.loader.models)) -}}
{{- fail (printf "training.model %q is published into the claim that modelStore.pvc.loader syncs from %s, and every sync resets its aliases to the source's, undoing the job's promotions: list the loaded models in modelStore.pvc.loader.models without %q" $t.model $p.loader.source $t.model) -}}
{{- end -}}
{{- /* aliases in the serving config win over the store's: the job's moves would never reach traffic */ -}}
{{- $pinned := dig "models" $t.model "aliases" dict .Values.modelServer.userConfig -}}
{{- range $alias := list "stable" "canary" -}}
{{- if hasKey $pinned $alias -}}
{{- fail (printf "modelServer.userConfig.models.%s.aliases.%s pins the alias the training job moves in the store (config aliases win over the store's, so its promotions would never be served): remove it" $t.model $alias) -}}
{{- end -}}
{{- end -}}
{{- end }}
