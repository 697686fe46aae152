{{/* The name of every object (default lifecycle-controller). */}}
{{- define "lifecycle.fullname" -}}
{{- default "lifecycle-controller" .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of the ConfigMaps and the metrics-reader ClusterRole (default lifecycle). */}}
{{- define "lifecycle.prefix" -}}
{{- include "lifecycle.fullname" . | trimSuffix "-controller" -}}
{{- end -}}

{{- define "lifecycle.rulesConfigMap" -}}
{{- default (printf "%s-rules" (include "lifecycle.prefix" .)) .Values.rules.existingConfigMap -}}
{{- end -}}

{{- define "lifecycle.templatesConfigMap" -}}
{{- default (printf "%s-templates" (include "lifecycle.prefix" .)) .Values.rules.existingTemplatesConfigMap -}}
{{- end -}}

{{/* The text of lifecycle.yaml: the value, else the chart's copy. */}}
{{- define "lifecycle.rulesText" -}}
{{- if .Values.rules.lifecycle -}}
{{- .Values.rules.lifecycle -}}
{{- else -}}
{{- .Files.Get "files/lifecycle.yaml" -}}
{{- end -}}
{{- end -}}

{{/* The execution namespace: the value, else the rules' settings.executionNamespace. */}}
{{- define "lifecycle.executionNamespace" -}}
{{- if .Values.executionNamespace.name -}}
{{- .Values.executionNamespace.name -}}
{{- else if .Values.rules.existingConfigMap -}}
{{- fail "executionNamespace.name is required with rules.existingConfigMap (the chart cannot read that ConfigMap)" -}}
{{- else -}}
{{- $rules := include "lifecycle.rulesText" . | fromYaml -}}
{{- $ns := dig "settings" "executionNamespace" "" $rules -}}
{{- required "the rules set no settings.executionNamespace: set executionNamespace.name" $ns -}}
{{- end -}}
{{- end -}}

{{/* Whether the rules already name the execution namespace (so no --set is needed). */}}
{{- define "lifecycle.executionNamespaceFromRules" -}}
{{- if not .Values.rules.existingConfigMap -}}
{{- $rules := include "lifecycle.rulesText" . | fromYaml -}}
{{- if eq (dig "settings" "executionNamespace" "" $rules) (include "lifecycle.executionNamespace" .) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lifecycle.labels" -}}
app.kubernetes.io/name: {{ include "lifecycle.fullname" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: lifecycle-engine
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "lifecycle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lifecycle.fullname" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lifecycle.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "lifecycle.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{- /* The update strategy: never two acting controllers at once (values.yaml says why). */ -}}
{{- define "lifecycle.strategy" -}}
{{- $elect := include "lifecycle.leaderElect" . -}}
{{- if .Values.strategy -}}
{{- if and (eq (.Values.strategy.type | default "RollingUpdate") "RollingUpdate") (not $elect) -}}
{{- fail "strategy: a RollingUpdate without leader election runs the old and the new controller at once; set leaderElection.enabled=true (or replicas above 1), or use Recreate" -}}
{{- end -}}
{{- toYaml .Values.strategy -}}
{{- else if $elect -}}
type: RollingUpdate
rollingUpdate:
  maxSurge: 1
  maxUnavailable: 0
{{- else -}}
type: Recreate
{{- end -}}
{{- end -}}
