{{- /*
Fail the render when a feature is on without what keeps it closed (issue 14): the app would
refuse to start anyway, and a failed `helm install` says why at once. With secrets.existingSecret
the chart cannot see the keys: the app checks them at start-up.
*/ -}}
{{- define "earshot.validate" -}}
{{- $s := .Values.secrets }}
{{- $ing := .Values.ingest }}
{{- if and $ing.enabled (not $ing.sourceFromSecret) (hasPrefix "webhook://" $ing.source) }}
{{- if not $ing.buckets }}
{{- fail "ingest.buckets is required for a webhook:// source: the buckets whose events may start jobs" }}
{{- end }}
{{- if and (not $s.existingSecret) (not $s.webhookSecret) (not $ing.snsTopicArns) }}
{{- fail "secrets.webhookSecret (16+ characters) or ingest.snsTopicArns is required for a webhook:// source: the webhook refuses unsigned requests" }}
{{- end }}
{{- end }}
{{- if and .Values.callbacks.enabled (not $s.existingSecret) (not $s.callbackSecret) }}
{{- fail "secrets.callbackSecret (16+ characters) is required when callbacks.enabled: every callback is signed" }}
{{- end }}
{{- if and .Values.api.enabled .Values.api.ingress.enabled }}
{{- range .Values.api.ingress.hosts }}
{{- range .paths }}
{{- $path := .path }}
{{- range list "/metrics" "/docs" "/redoc" "/openapi.json" }}
{{- if or (eq $path .) (hasPrefix (trimSuffix "/" $path | printf "%s/") (printf "%s/" .)) }}
{{- fail (printf "api.ingress path %q would publish %s; route /v1 (the API) instead" $path .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
