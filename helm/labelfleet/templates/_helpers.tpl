{{/* vim: set filetype=mustache: */}}

{{- define "labelfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "labelfleet.fullname" -}}
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

{{- define "labelfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels; call with (dict "ctx" $ "component" "worker"). */}}
{{- define "labelfleet.labels" -}}
helm.sh/chart: {{ include "labelfleet.chart" .ctx }}
{{ include "labelfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: labelfleet
{{- end }}

{{- define "labelfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "labelfleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "labelfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "labelfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret with LABELFLEET_DB_URL / LABELFLEET_BROKER_URL (/ AWS keys). */}}
{{- define "labelfleet.secretName" -}}
{{- if .Values.secrets.create }}
{{- include "labelfleet.fullname" . }}
{{- else }}
{{- default (include "labelfleet.fullname" .) .Values.secrets.existingSecret }}
{{- end }}
{{- end }}

{{/* Secret with generated passwords for the bundled Redis/PostgreSQL. */}}
{{- define "labelfleet.bundledSecretName" -}}
{{- printf "%s-bundled" (include "labelfleet.fullname" .) }}
{{- end }}

{{- define "labelfleet.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}

{{/* "pre" with an external database (normal path), "post" when the bundled PostgreSQL must exist first. */}}
{{- define "labelfleet.migrationHookPhase" -}}
{{- if .Values.postgresql.enabled }}post{{ else }}pre{{ end }}
{{- end }}

{{/* Warm shutdown budget: above the Celery hard time limit. */}}
{{- define "labelfleet.workerGracePeriod" -}}
{{- $hard := int .Values.config.LABELFLEET_TASK_HARD_TIME_LIMIT }}
{{- $grace := .Values.workers.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $grace }}
{{- add $hard 120 }}
{{- else if le (int $grace) $hard }}
{{- fail (printf "workers.terminationGracePeriodSeconds (%d) must be greater than LABELFLEET_TASK_HARD_TIME_LIMIT (%d) so a warm shutdown can finish the running task" (int $grace) $hard) }}
{{- else }}
{{- int $grace }}
{{- end }}
{{- end }}

{{/*
Env of every labelfleet container: non-secret settings inline (changing them rolls the pods), secrets by
reference only. Nothing secret is ever rendered into a manifest.
*/}}
{{- define "labelfleet.env" -}}
{{- $secret := include "labelfleet.secretName" . }}
{{- range $name, $value := .Values.config }}
{{- if not (eq (toString $value) "") }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- if .Values.postgresql.enabled }}
- name: LF_BUNDLED_POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "labelfleet.bundledSecretName" . }}
      key: postgres-password
- name: LABELFLEET_DB_URL
  value: {{ printf "postgresql+psycopg://%s:$(LF_BUNDLED_POSTGRES_PASSWORD)@%s-postgresql:5432/%s" .Values.postgresql.username (include "labelfleet.fullname" .) .Values.postgresql.database | quote }}
{{- else }}
- name: LABELFLEET_DB_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secrets.dbUrlKey }}
{{- end }}
{{- include "labelfleet.brokerEnv" . }}
{{- if .Values.secrets.s3Credentials }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secrets.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secrets.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{/* LABELFLEET_BROKER_URL only (also used by Flower). */}}
{{- define "labelfleet.brokerEnv" -}}
{{- if .Values.redis.enabled }}
- name: LF_BUNDLED_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "labelfleet.bundledSecretName" . }}
      key: redis-password
- name: LABELFLEET_BROKER_URL
  value: {{ printf "redis://:$(LF_BUNDLED_REDIS_PASSWORD)@%s-redis:6379/0" (include "labelfleet.fullname" .) | quote }}
{{- else }}
- name: LABELFLEET_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "labelfleet.secretName" . }}
      key: {{ .Values.secrets.brokerUrlKey }}
{{- end }}
{{- end }}

{{- define "labelfleet.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "labelfleet.securityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/* Init container that blocks until the database is at the Alembic head (see deploy/wait_for_migrations.py). */}}
{{- define "labelfleet.waitForMigrations" -}}
{{- if and .Values.migrateJob.enabled .Values.waitForMigrations.enabled }}
- name: wait-for-migrations
  image: {{ include "labelfleet.image" (dict "ctx" . "image" .Values.images.orchestrator) }}
  imagePullPolicy: {{ .Values.images.orchestrator.pullPolicy }}
  command:
    - labelfleet-wait-for-migrations
  args:
    - --timeout
    - {{ .Values.waitForMigrations.timeoutSeconds | quote }}
  env:
    {{- include "labelfleet.env" . | trim | nindent 4 }}
  securityContext:
    {{- include "labelfleet.securityContext" . | nindent 4 }}
  resources:
    requests:
      cpu: 50m
      memory: 128Mi
    limits:
      memory: 256Mi
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}
