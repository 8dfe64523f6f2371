{{/* Name of every object: the release name, or fullnameOverride. */}}
{{- define "sockmesh.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the agent's pods; never change them on an installed release. */}}
{{- define "sockmesh.selectorLabels" -}}
app.kubernetes.io/name: sockmesh
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object. No Helm bookkeeping labels: deploy/kubernetes is rendered from
this chart for kustomize users, who do not manage it with Helm. */}}
{{- define "sockmesh.labels" -}}
{{ include "sockmesh.selectorLabels" . }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: sockmesh
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* istiod's xDS address: istiod.address, or the host with 15012 (TLS) / 15010 (plaintext). */}}
{{- define "sockmesh.xdsServer" -}}
{{- if .Values.istiod.address -}}
{{- .Values.istiod.address -}}
{{- else -}}
{{- printf "%s:%d" .Values.istiod.host (ternary 15012 15010 .Values.istiod.tls | int) -}}
{{- end -}}
{{- end -}}
