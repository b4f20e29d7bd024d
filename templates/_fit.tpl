{{/*
Does each enabled Ray pod shape fit a node of the type it selects? Printed by NOTES.txt at install and
upgrade, so a request too big for the node type the values target is reported by helm, not found later
as a Pending pod. Reads the cluster's Nodes (lookup: nothing under `helm template` or a client-side dry
run). A group is reported only when nodes matching its nodeSelector (and with GPUs, for a GPU group)
exist and none has the allocatable CPU, memory and GPUs one pod requests; with no matching node at all
(a node pool that scales from zero) there is nothing to compare against and nothing is said.
*/}}
{{- define "manymodels.millicores" -}}
{{- $q := toString . -}}
{{- if hasSuffix "m" $q }}{{ trimSuffix "m" $q | float64 }}{{ else }}{{ mulf (float64 $q) 1000 }}{{ end -}}
{{- end -}}

{{- define "manymodels.mebibytes" -}}
{{- $q := toString . -}}
{{- $units := dict "Ki" 0.0009765625 "Mi" 1.0 "Gi" 1024.0 "Ti" 1048576.0 "k" 0.00095367431640625 "M" 0.95367431640625 "G" 953.67431640625 "T" 953674.31640625 -}}
{{- $value := "" -}}
{{- range $suffix, $factor := $units -}}
{{- if and (not $value) (hasSuffix $suffix $q) -}}
{{- $value = mulf (float64 (trimSuffix $suffix $q)) $factor | toString -}}
{{- end -}}
{{- end -}}
{{- default (divf (float64 $q) 1048576.0) $value -}}
{{- end -}}

{{- define "manymodels.fitWarnings" -}}
{{- $nodes := list -}}
{{- if .Values.clusterLookups }}{{ $nodes = (lookup "v1" "Node" "" "").items | default list }}{{ end -}}
{{- $pods := dict -}}
{{- $_ := set $pods "head" (dict "resources" .Values.head.resources "nodeSelector" .Values.head.nodeSelector "gpus" 0) -}}
{{- range $name, $g := .Values.workerGroups -}}
{{- if $g.enabled -}}
{{- $_ := set $pods (printf "%s worker" $name) (dict "resources" $g.resources "nodeSelector" $g.nodeSelector "gpus" (ternary $g.gpus 0 (eq $g.type "gpu"))) -}}
{{- end -}}
{{- end -}}
{{- range $pod, $p := $pods -}}
{{- $req := $p.resources.requests | default dict -}}
{{- $cpu := include "manymodels.millicores" ($req.cpu | default "0") | float64 -}}
{{- $mem := include "manymodels.mebibytes" ($req.memory | default "0") | float64 -}}
{{- $gpus := $p.gpus | float64 -}}
{{- $matching := 0 -}}
{{- $fits := false -}}
{{- range $nodes -}}
{{- $labels := .metadata.labels | default dict -}}
{{- $alloc := .status.allocatable | default dict -}}
{{- $selected := true -}}
{{- range $k, $v := ($p.nodeSelector | default dict) -}}
{{- if ne (toString (get $labels $k)) (toString $v) }}{{ $selected = false }}{{ end -}}
{{- end -}}
{{- $nodeGpus := get $alloc "nvidia.com/gpu" | default "0" | float64 -}}
{{- if and $selected (or (eq $gpus 0.0) (gt $nodeGpus 0.0)) -}}
{{- $matching = add1 $matching -}}
{{- $nodeCpu := include "manymodels.millicores" (get $alloc "cpu" | default "0") | float64 -}}
{{- $nodeMem := include "manymodels.mebibytes" (get $alloc "memory" | default "0") | float64 -}}
{{- if and (le $cpu $nodeCpu) (le $mem $nodeMem) (le $gpus $nodeGpus) }}{{ $fits = true }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if and (gt $matching 0) (not $fits) }}
WARNING: no node can take a {{ $pod }} pod: it requests {{ $req.cpu | default "0" }} CPU, {{ $req.memory | default "0" }} memory{{ if $gpus }}, {{ $p.gpus }} GPU{{ end }}, but none of the {{ $matching }} node(s) it selects has that much allocatable; its pods will stay Pending. Lower its resources or target a bigger node type (docs/chart.md, "GPU node shapes").
{{- end -}}
{{- end -}}
{{- end -}}
