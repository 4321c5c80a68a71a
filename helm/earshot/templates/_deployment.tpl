{{/*
One Deployment of the app image. Call with a dict:
  ctx        the root context ($)
  component  api | ingest | worker-cpu | worker-gpu
  v          the component's values (replicas, resources, nodeSelector, ...)
  args       the `earshot` arguments (list)
  ports      containerPorts (list, may be empty)
  env        extra env entries (list, may be empty)
  probes     liveness/readiness/startup probes (YAML string, may be empty)
  gpus       GPUs per pod (int)
  autoscaled true when an HPA or KEDA owns the replica count
  grace      terminationGracePeriodSeconds (int, 0 = Kubernetes default)
*/}}
{{- define "earshot.appDeployment" -}}
{{- $ctx := .ctx }}
{{- $v := .v }}
{{- $usesGpu := and $ctx.Values.gpu.enabled (gt (int .gpus) 0) }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "earshot.fullname" $ctx }}-{{ .component }}
  labels:
    {{- include "earshot.labels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "earshot.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "earshot.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "earshot.checksums" $ctx | nindent 8 }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "earshot.serviceAccountName" $ctx }}
      automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automountServiceAccountToken }}
      {{- with $ctx.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "earshot.podSecurityContext" $ctx | nindent 8 }}
      {{- if .grace }}
      terminationGracePeriodSeconds: {{ .grace }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "earshot.image" $ctx }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          # Relative defaults (.earshot/...) must land on the writable emptyDir.
          workingDir: /tmp
          envFrom:
            {{- include "earshot.envFrom" $ctx | nindent 12 }}
          {{- with .env }}
          env:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .ports }}
          ports:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .probes }}
          {{- . | nindent 10 }}
          {{- end }}
          securityContext:
            {{- include "earshot.containerSecurityContext" $ctx | nindent 12 }}
          resources:
            {{- include "earshot.resources" (dict "resources" $v.resources "gpus" .gpus "ctx" $ctx) | nindent 12 }}
          volumeMounts:
            {{- include "earshot.scratchMounts" $ctx | nindent 12 }}
      volumes:
        {{- include "earshot.scratchVolumes" $ctx | nindent 8 }}
      {{- with (include "earshot.nodeSelector" (dict "ctx" $ctx "gpu" $usesGpu "nodeSelector" $v.nodeSelector) | trim) }}{{ . | nindent 6 }}{{- end }}
      {{- with (include "earshot.tolerations" (dict "ctx" $ctx "gpu" $usesGpu "tolerations" $v.tolerations) | trim) }}{{ . | nindent 6 }}{{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* A PodDisruptionBudget. Call with (dict "ctx" $ "component" "api" "pdb" .Values.api.pdb). */}}
{{- define "earshot.pdb" -}}
{{- if .pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "earshot.fullname" .ctx }}-{{ .component }}
  labels:
    {{- include "earshot.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  maxUnavailable: {{ .pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "earshot.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
{{- end }}
{{- end }}
