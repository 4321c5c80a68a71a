{{- define "training.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Keep room for "-stage3-5" and the Indexed Job pod suffix within 63 characters. */}}
{{- define "training.fullname" -}}
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

{{- define "training.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "training.labels" -}}
helm.sh/chart: {{ include "training.chart" .ctx }}
{{ include "training.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: earshot
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "training.selectorLabels" -}}
app.kubernetes.io/name: {{ include "training.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "training.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "training.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "training.secretName" -}}
{{- default (printf "%s-secrets" (include "training.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "training.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "training.runName" -}}
{{- default .Release.Name .Values.runName }}
{{- end }}

{{/* The stages in curriculum order. */}}
{{- define "training.stageOrder" -}}
stage1 stage2 stage3 stage3_5 stage4
{{- end }}

{{/* Job name of a stage: (dict "ctx" $ "stage" "stage3_5") -> <fullname>-stage3-5 */}}
{{- define "training.jobName" -}}
{{- printf "%s-%s" (include "training.fullname" .ctx) (.stage | replace "_" "-") }}
{{- end }}

{{/* Where a stage writes its checkpoint. */}}
{{- define "training.stageOutput" -}}
{{- printf "%s/%s/%s" (trimSuffix "/" .ctx.Values.checkpoints.root) (include "training.runName" .ctx) .stage }}
{{- end }}

{{- define "training.headlessServiceName" -}}
{{- printf "%s-rdzv" (include "training.fullname" .) }}
{{- end }}

{{/*
The enabled stages in order, as JSON: [{"name", "job", "resumeFrom", "output", "nodes", "gpus"}].
Stage N resumes from the output of the enabled stage before it; the first from baseModel.
*/}}
{{- define "training.plan" -}}
{{- $ctx := . }}
{{- $plan := list }}
{{- $prev := required "baseModel is required" .Values.baseModel }}
{{- range $name := splitList " " (include "training.stageOrder" .) }}
{{- $st := index $ctx.Values.stages $name }}
{{- if $st.enabled }}
{{- $out := include "training.stageOutput" (dict "ctx" $ctx "stage" $name) }}
{{- $nodes := int (default $ctx.Values.nodes $st.nodes) }}
{{- $gpus := int (default $ctx.Values.gpusPerNode $st.gpusPerNode) }}
{{- if not $ctx.Values.gpu.enabled }}{{ $gpus = 0 }}{{ end }}
{{- $plan = append $plan (dict "name" $name "job" (include "training.jobName" (dict "ctx" $ctx "stage" $name)) "resumeFrom" $prev "output" $out "nodes" $nodes "gpus" $gpus) }}
{{- $prev = $out }}
{{- end }}
{{- end }}
{{- toJson $plan }}
{{- end }}

{{- define "training.multiNode" -}}
{{- $multi := false }}
{{- range (include "training.plan" . | fromJsonArray) }}{{ if gt (int .nodes) 1 }}{{ $multi = true }}{{ end }}{{ end }}
{{- if $multi }}true{{ end }}
{{- end }}

{{- define "training.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/* Projected ServiceAccount token for the one container that talks to the Kubernetes API. */}}
{{- define "training.apiTokenVolume" -}}
- name: kube-api-access
  projected:
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                fieldPath: metadata.namespace
{{- end }}
