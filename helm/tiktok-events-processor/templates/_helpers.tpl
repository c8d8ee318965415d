{{/*
Names and labels.
*/}}
{{- define "tiktok-events.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tiktok-events.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tiktok-events.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tiktok-events.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tiktok-events.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tiktok-events.labels" -}}
helm.sh/chart: {{ include "tiktok-events.chart" . }}
{{ include "tiktok-events.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: processor
app.kubernetes.io/part-of: tiktok-events
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tiktok-events.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tiktok-events.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tiktok-events.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The token: the Secret that holds it, and the file the processor reads.
*/}}
{{- define "tiktok-events.tokenSecretName" -}}
{{- default (printf "%s-token" (include "tiktok-events.fullname" .)) .Values.token.existingSecret }}
{{- end }}

{{- define "tiktok-events.tokenFile" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.token.mountPath) .Values.token.key }}
{{- end }}

{{/*
The processor's configuration file: values.config plus values.mappings, in the processor's own
config language (schemas/config.schema.json). The token is never in it: the pod's
TIKTOK_ACCESS_TOKEN_FILE names the mounted Secret file.
*/}}
{{- define "tiktok-events.configFile" -}}
{{- $config := deepCopy .Values.config }}
{{- with .Values.token.pixels }}
{{- $pixels := list }}
{{- range . }}
{{- $file := printf "%s/%s" (include "tiktok-events.pixelTokenDir" (list $ .name)) (.key | default "access-token") }}
{{- $pixels = append $pixels (dict "name" .name "event_source_id" .eventSourceId "access_token_file" $file) }}
{{- end }}
{{- $_ := set $config.tiktok "pixels" $pixels }}
{{- end }}
{{- $_ := set $config "mappings" .Values.mappings }}
{{- toYaml $config }}
{{- end }}

{{/* Where a pixel's token Secret is mounted: beside the default token's directory. */}}
{{- define "tiktok-events.pixelTokenDir" -}}
{{- $root := index . 0 }}
{{- printf "%s-pixels/%s" (trimSuffix "/" $root.Values.token.mountPath) (index . 1) }}
{{- end }}

{{- define "tiktok-events.metricsPort" -}}
{{- $metrics := .Values.config.metrics | default dict }}
{{- $metrics.port | default 9464 | int }}
{{- end }}

{{- define "tiktok-events.drainTimeout" -}}
{{- $delivery := .Values.config.delivery | default dict }}
{{- if hasKey $delivery "drain_timeout_s" }}{{ $delivery.drain_timeout_s | float64 }}{{ else }}30{{ end }}
{{- end }}

{{/*
Checks that a schema cannot express, run by every template that depends on them.
*/}}
{{- define "tiktok-events.validate" -}}
{{- $drain := include "tiktok-events.drainTimeout" . | float64 }}
{{- $grace := .Values.terminationGracePeriodSeconds | float64 }}
{{- if lt $grace (addf $drain 15) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least config.delivery.drain_timeout_s (%v) + 15: a stop drains for up to drain_timeout_s, then needs up to 15 s to commit, close the sender and leave the group; Kubernetes would kill the pod (SIGKILL) before it commits its offsets." $grace $drain) }}
{{- end }}
{{- if and .Values.token.pixels (.Values.config.tiktok | default dict).pixels }}
{{- fail "give the pixels' tokens in token.pixels or in config.tiktok.pixels, not both: token.pixels mounts each Secret and writes config.tiktok.pixels itself" }}
{{- end }}
{{- if and .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled }}
{{- fail "autoscaling.hpa.enabled and autoscaling.keda.enabled are both set: KEDA makes its own HorizontalPodAutoscaler, choose one" }}
{{- end }}
{{- $partitions := int .Values.topicPartitions }}
{{- if gt $partitions 0 }}
{{- $replicas := int .Values.replicaCount }}
{{- if .Values.autoscaling.hpa.enabled }}{{ $replicas = int .Values.autoscaling.hpa.maxReplicas }}{{ end }}
{{- if .Values.autoscaling.keda.enabled }}{{ $replicas = int .Values.autoscaling.keda.maxReplicas }}{{ end }}
{{- $members := mul $replicas (int .Values.workers) }}
{{- if gt $members $partitions }}
{{- fail (printf "%d replicas × %d workers = %d consumer group members, but topicPartitions is %d: the members beyond it would idle. Add partitions or lower replicas/workers." $replicas (int .Values.workers) $members $partitions) }}
{{- end }}
{{- end }}
{{- end }}
