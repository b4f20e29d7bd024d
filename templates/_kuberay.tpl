{{/*
Checks against the KubeRay operator the release will meet (called from manymodels.validate).
*/}}

{{/* The oldest KubeRay whose RayCluster knows authOptions (Ray token authentication). */}}
{{- define "manymodels.kuberayAuthMinVersion" }}1.5.1{{ end }}

{{/*
rayAuth.mode token renders RayCluster `authOptions`. A KubeRay older than 1.5.1 has no such field: its
CRD's structural schema prunes it on admission and the operator never sees it, so Ray would run
WITHOUT authentication and nothing would say so. Two guards:
- the bundled operator (kuberay-operator.enabled): the dependency's chart version must be >= 1.5.1;
- the CRD in the cluster (lookup; Helm installs a chart's crds/ only on first install and never
  upgrades them, so an old CRD can outlive an operator upgrade): its served ray.io/v1 schema must have
  spec.rayClusterConfig.authOptions. Under `helm template` or a client-side dry run lookup sees nothing
  and this guard is silent.
*/}}
{{- define "manymodels.validateRayAuth" -}}
{{- if eq .Values.rayAuth.mode "token" -}}
{{- $min := include "manymodels.kuberayAuthMinVersion" . -}}
{{- $operator := default dict (index .Values "kuberay-operator") -}}
{{- if $operator.enabled -}}
{{- $version := "" -}}
{{- with .Subcharts }}{{ with index . "kuberay-operator" }}{{ $version = .Chart.Version }}{{ end }}{{ end -}}
{{- if not $version -}}
{{- range .Chart.Dependencies }}{{ if eq .Name "kuberay-operator" }}{{ $version = .Version }}{{ end }}{{ end -}}
{{- end -}}
{{- if and (regexMatch "^v?[0-9]+\\.[0-9]+\\.[0-9]+" (toString $version)) (not (semverCompare (printf ">=%s-0" $min) (toString $version))) -}}
{{- fail (printf "rayAuth.mode token needs KubeRay >= %s, but the bundled kuberay-operator chart is %s: it would drop authOptions and run Ray without authentication. Use kuberay-operator >= %s (Chart.yaml), or set rayAuth.mode=disabled knowingly" $min $version $min) -}}
{{- end -}}
{{- end -}}
{{- $crd := dict -}}
{{- if .Values.clusterLookups }}{{ $crd = lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" "rayservices.ray.io" }}{{ end -}}
{{- if $crd -}}
{{- range (dig "spec" "versions" list $crd) -}}
{{- if and (eq .name "v1") .served -}}
{{- $rcc := dig "schema" "openAPIV3Schema" "properties" "spec" "properties" "rayClusterConfig" "properties" dict . -}}
{{- if not (hasKey $rcc "authOptions") -}}
{{- fail (printf "rayAuth.mode token needs KubeRay >= %s, but the CRD rayservices.ray.io in this cluster (ray.io/v1) has no spec.rayClusterConfig.authOptions: the API server would drop it and Ray would run without authentication. Upgrade the KubeRay operator and its CRDs (Helm never upgrades CRDs: kubectl apply --server-side -f the new chart's crds/), or set rayAuth.mode=disabled knowingly" $min) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
upgradeStrategy: NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions (KubeRay's RayService CRD
requires gatewayClassName, stepSizePercent and intervalSeconds; maxSurgePercent defaults to 100), and
clusterUpgradeOptions means nothing with another type. The incremental upgrade moves traffic through
a Gateway KubeRay creates (<fullname>-gateway, class gatewayClassName) with per-cluster Serve
Services; <fullname>-serve-svc, the chart's Ingress backend, stays on the old cluster until the new one
has all the traffic, after the old one's Serve target_capacity went down to 0% - so Ingress clients
would miss the gradual shift and hit a cluster with no capacity at the end.
*/}}
{{- define "manymodels.validateUpgradeStrategy" -}}
{{- $u := .Values.upgradeStrategy -}}
{{- $opts := $u.clusterUpgradeOptions -}}
{{- if eq $u.type "NewClusterWithIncrementalUpgrade" -}}
{{- range $key := list "gatewayClassName" "stepSizePercent" "intervalSeconds" -}}
{{- if or (not (kindIs "map" $opts)) (kindIs "invalid" (get $opts $key)) (eq (toString (get $opts $key)) "") -}}
{{- fail (printf "upgradeStrategy.clusterUpgradeOptions.%s is required with upgradeStrategy.type NewClusterWithIncrementalUpgrade (KubeRay's RayService: gatewayClassName names the Gateway API class of the Gateway KubeRay creates; stepSizePercent and intervalSeconds pace the traffic shift)" $key) -}}
{{- end -}}
{{- end -}}
{{- if $.Values.ingress.enabled -}}
{{- fail (printf "ingress.enabled does not work with upgradeStrategy.type NewClusterWithIncrementalUpgrade: the Ingress points to %s-serve-svc, which KubeRay keeps on the old cluster until the new one has all the traffic, while it scales the old one's Serve capacity down to 0%% - clients would miss the gradual shift and fail at its end. Send clients through the Gateway KubeRay creates (%s-gateway) instead, or use upgradeStrategy.type NewCluster" (include "manymodels.fullname" .) (include "manymodels.fullname" .)) -}}
{{- end -}}
{{- else if $opts -}}
{{- fail (printf "upgradeStrategy.clusterUpgradeOptions is set but upgradeStrategy.type is %s: the options apply to NewClusterWithIncrementalUpgrade only; remove them or change the type" $u.type) -}}
{{- end -}}
{{- end }}
