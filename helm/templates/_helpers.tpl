{{/* Chart name, shortened to the 63 characters a label value allows. */}}
{{- define "comfyui-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix: <release>-<chart>, or the release name alone when it already holds the chart name. */}}
{{- define "comfyui-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "comfyui-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades. */}}
{{- define "comfyui-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "comfyui-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The recommended labels, on every object. */}}
{{- define "comfyui-operator.labels" -}}
{{ include "comfyui-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: comfyui-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "comfyui-operator.chart" . }}
{{- end -}}

{{- define "comfyui-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "comfyui-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "comfyui-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "comfyui-operator.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecarImage.repository (default .Chart.AppVersion .Values.sidecarImage.tag) -}}
{{- end -}}

{{/* Namespaces the operator watches; empty means the whole cluster. */}}
{{- define "comfyui-operator.watchNamespaces" -}}
{{- if eq .Values.watch.scope "namespaces" -}}
{{- if not .Values.watch.namespaces -}}
{{- fail "watch.namespaces must list at least one namespace when watch.scope is namespaces" -}}
{{- end -}}
{{- range .Values.watch.namespaces -}}
{{- if has . $.Values.watch.excludedNamespaces -}}
{{- fail (printf "watch.namespaces lists %s, which watch.excludedNamespaces excludes" .) -}}
{{- end -}}
{{- end -}}
{{- join "," .Values.watch.namespaces -}}
{{- end -}}
{{- end -}}
