{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "earshot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; components append "-api", "-triton", ... so keep room. */}}
{{- define "earshot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "earshot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. Call with (dict "ctx" $ "component" "api"). */}}
{{- define "earshot.labels" -}}
helm.sh/chart: {{ include "earshot.chart" .ctx }}
{{ include "earshot.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: earshot
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "earshot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "earshot.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "earshot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "earshot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "earshot.configMapName" -}}
{{- printf "%s-config" (include "earshot.fullname" .) }}
{{- end }}

{{/* The Secret every app pod reads: the user's existingSecret or the one this chart makes. */}}
{{- define "earshot.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-secrets" (include "earshot.fullname" .) }}
{{- end }}
{{- end }}

{{- define "earshot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "earshot.tritonImage" -}}
{{- printf "%s:%s" .Values.triton.image.repository (default .Chart.AppVersion .Values.triton.image.tag) }}
{{- end }}

{{/* host:grpcport the workers use to reach Triton. */}}
{{- define "earshot.tritonUrl" -}}
{{- if .Values.config.tritonUrl }}
{{- .Values.config.tritonUrl }}
{{- else }}
{{- printf "%s-triton:%d" (include "earshot.fullname" .) (int .Values.triton.ports.grpc) }}
{{- end }}
{{- end }}

{{- define "earshot.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "earshot.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/* Environment of every app container: the ConfigMap, then the Secret. */}}
{{- define "earshot.envFrom" -}}
- configMapRef:
    name: {{ include "earshot.configMapName" . }}
- secretRef:
    name: {{ include "earshot.secretName" . }}
{{- end }}

{{/* Writable places on a read-only root filesystem. */}}
{{- define "earshot.scratchVolumes" -}}
- name: tmp
  emptyDir:
    {{- with .Values.scratch.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

{{- define "earshot.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Pod annotations that roll pods when config or chart-made secrets change. */}}
{{- define "earshot.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/* nodeSelector for a pod: the GPU node labels (when it uses GPUs) merged with its own. */}}
{{- define "earshot.nodeSelector" -}}
{{- $sel := dict }}
{{- if .gpu }}{{- $sel = merge $sel (deepCopy .ctx.Values.gpu.nodeSelector) }}{{- end }}
{{- $sel = merge (deepCopy .nodeSelector) $sel }}
{{- if $sel }}
nodeSelector:
  {{- toYaml $sel | nindent 2 }}
{{- end }}
{{- end }}

{{- define "earshot.tolerations" -}}
{{- $tol := list }}
{{- if .gpu }}{{- $tol = concat $tol .ctx.Values.gpu.tolerations }}{{- end }}
{{- $tol = concat $tol .tolerations }}
{{- if $tol }}
tolerations:
  {{- toYaml $tol | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Resources of a container; adds the GPU limit (and the matching request) when it uses GPUs.
Call with (dict "resources" .Values.x.resources "gpus" N "ctx" $).
*/}}
{{- define "earshot.resources" -}}
{{- $res := deepCopy .resources }}
{{- if and .ctx.Values.gpu.enabled (gt (int .gpus) 0) }}
{{- $limits := default dict $res.limits }}
{{- $requests := default dict $res.requests }}
{{- $_ := set $limits .ctx.Values.gpu.resourceName (int .gpus) }}
{{- $_ := set $requests .ctx.Values.gpu.resourceName (int .gpus) }}
{{- $_ := set $res "limits" $limits }}
{{- $_ := set $res "requests" $requests }}
{{- end }}
{{- toYaml $res }}
{{- end }}
