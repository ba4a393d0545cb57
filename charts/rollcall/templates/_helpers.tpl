{{/*
The chart name, overridable.
*/}}
{{- define "rollcall.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name prefix of every object: <release>-<chart>, or <release> when it already holds the
chart name. Truncated to 44 characters so the longest suffix, "-operator-framework" (19), stays within 63.
*/}}
{{- define "rollcall.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 44 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rollcall.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "rollcall.labels" -}}
helm.sh/chart: {{ include "rollcall.chart" . }}
{{ include "rollcall.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rollcall
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels (immutable in Deployments: never add to them).
*/}}
{{- define "rollcall.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rollcall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Per-component labels: include with (dict "ctx" $ "component" "api").
*/}}
{{- define "rollcall.componentLabels" -}}
{{ include "rollcall.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "rollcall.componentSelectorLabels" -}}
{{ include "rollcall.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
ServiceAccount names.
*/}}
{{- define "rollcall.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "rollcall.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rollcall.api.serviceAccountName" -}}
{{- if .Values.api.serviceAccount.create }}
{{- default (printf "%s-api" (include "rollcall.fullname" .)) .Values.api.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.api.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rollcall.serviceAccountName" -}}
{{- include "rollcall.operator.serviceAccountName" . }}
{{- end }}

{{/*
Every image reference the chart renders comes from here: (dict "ctx" $ "image" .Values.x.image).
repository@digest when image.digest is set (a digest names one image for good; a tag can be moved
to another), else repository:tag, the tag defaulting to the chart's appVersion. values.schema.json
checks the digest's form, so `digest: latest` fails the install instead of every pull.
*/}}
{{- define "rollcall.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
The helm test pod's image: the API image's own reference (digest included) unless tests.image sets
something; then its repository, tag (default: the API image's tag) and digest.
*/}}
{{- define "rollcall.tests.image" -}}
{{- $api := .Values.api.image }}
{{- $own := .Values.tests.image }}
{{- $image := $api }}
{{- if or $own.repository $own.tag $own.digest }}
{{- $image = dict "repository" (default $api.repository $own.repository) "tag" (default $api.tag $own.tag) "digest" $own.digest }}
{{- end }}
{{- include "rollcall.image" (dict "ctx" . "image" $image) }}
{{- end }}

{{/*
The school namespaces as a list (empty value: the release namespace).
*/}}
{{- define "rollcall.namespaces" -}}
{{- if .Values.namespaces }}
{{- toJson (uniq .Values.namespaces) }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/*
Redis: the Secret holding the URL, its key, the bundled Service name.
*/}}
{{- define "rollcall.redis.fullname" -}}
{{- printf "%s-redis" (include "rollcall.fullname" .) }}
{{- end }}

{{- define "rollcall.redis.secretName" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecret }}
{{- else }}
{{- printf "%s-redis-url" (include "rollcall.fullname" .) }}
{{- end }}
{{- end }}

{{- define "rollcall.redis.secretKey" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret }}
{{- .Values.redis.external.existingSecretKey }}
{{- else }}url{{- end }}
{{- end }}

{{/*
The bundled Redis password: the value, else the one already in the cluster, else a new one.
Generated once: later upgrades read it back with `lookup` so clients keep working.
*/}}
{{- define "rollcall.redis.password" -}}
{{- if .Values.redis.password }}
{{- .Values.redis.password }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "rollcall.redis.fullname" .) }}
{{- if and $existing $existing.data (index $existing.data "password") }}
{{- index $existing.data "password" | b64dec }}
{{- else }}
{{- $cached := get .Values "_generatedRedisPassword" }}
{{- if $cached }}{{ $cached }}{{ else }}
{{- $p := randAlphaNum 32 }}
{{- $_ := set .Values "_generatedRedisPassword" $p }}
{{- $p }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Redis ACL users (rules: files/redis-acl-rules.json, written by contract/rollcall_contract/acl.py):
rollcall-job-<namespace> per school, rollcall-api, rollcall-operator, and rollcall-admin for people
(migrations, backups). Each password is derived from the master password above, sha256 of
"<master>/<user>": one stored secret, no user's password reveals another's, and the ACL file holds
only SHA-256 hashes of them. Call with (dict "ctx" $ "user" NAME).
*/}}
{{- define "rollcall.redis.userPassword" -}}
{{- printf "%s/%s" (include "rollcall.redis.password" .ctx) .user | sha256sum }}
{{- end }}

{{- define "rollcall.redis.userUrl" -}}
{{- if .ctx.Values.redis.enabled }}
{{- printf "redis://%s:%s@%s.%s.svc:6379/0" .user (include "rollcall.redis.userPassword" .) (include "rollcall.redis.fullname" .ctx) .ctx.Release.Namespace }}
{{- else }}
{{- .ctx.Values.redis.external.url }}
{{- end }}
{{- end }}

{{/*
The Secret (key `url`) with a component's Redis URL in the release namespace: api or operator.
*/}}
{{- define "rollcall.redis.componentSecretName" -}}
{{- if and (not .ctx.Values.redis.enabled) .ctx.Values.redis.external.existingSecret }}
{{- .ctx.Values.redis.external.existingSecret }}
{{- else }}
{{- printf "%s-redis-%s" (include "rollcall.fullname" .ctx) .component }}
{{- end }}
{{- end }}

{{/*
What every component's Redis URL derives from: pods roll when it changes.
*/}}
{{- define "rollcall.redis.url" -}}
{{- include "rollcall.redis.userUrl" (dict "ctx" . "user" "rollcall-api") }}
{{- end }}

{{- define "rollcall.redis.aclLine" -}}
user {{ .user }} reset on #{{ include "rollcall.redis.userPassword" . | sha256sum }} {{ .rules }}
{{- end }}

{{/*
The bundled Redis's ACL file: the default user off, then one line per user (acl.acl_file's format).
*/}}
{{- define "rollcall.redis.aclFile" -}}
{{- $rules := .Files.Get "files/redis-acl-rules.json" | fromJson -}}
user default off resetkeys resetchannels -@all
{{ include "rollcall.redis.aclLine" (dict "ctx" . "user" "rollcall-admin" "rules" $rules.admin) }}
{{ include "rollcall.redis.aclLine" (dict "ctx" . "user" "rollcall-api" "rules" $rules.api) }}
{{ include "rollcall.redis.aclLine" (dict "ctx" . "user" "rollcall-operator" "rules" $rules.operator) }}
{{- range $ns := include "rollcall.namespaces" . | fromJsonArray }}
{{ include "rollcall.redis.aclLine" (dict "ctx" $ "user" (printf "rollcall-job-%s" $ns) "rules" (replace "{tenant}" $ns $rules.job)) }}
{{- end }}
{{- end }}

{{/*
The bundled Redis's configuration: no password on any command line, memory bounded without ever
evicting a gallery (writes fail loudly instead: noeviction).
*/}}
{{- define "rollcall.redis.conf" -}}
port 6379
dir /data
appendonly yes
save ""
protected-mode no
aclfile /etc/redis/users.acl
maxmemory {{ .Values.redis.maxmemory }}
maxmemory-policy noeviction
{{- end }}

{{/*
TLS to an external rediss:// Redis: redis.external.caCert becomes ConfigMap <fullname>-redis-ca
(key ca.crt; a CA is not a secret) in the release and school namespaces. The API and the operator
mount it (redistls.CA_MOUNT) and the operator mounts it into job pods.
*/}}
{{- define "rollcall.redis.caConfigMap" -}}
{{- printf "%s-redis-ca" (include "rollcall.fullname" .) }}
{{- end }}

{{- define "rollcall.redis.caEnv" -}}
{{- if .ctx.Values.redis.external.caCert }}
- name: {{ .prefix }}REDIS_CA_FILE
  value: /etc/rollcall/redis-ca/ca.crt
{{- if eq .prefix "ROLLCALL_OPERATOR_" }}
- name: ROLLCALL_OPERATOR_JOB_REDIS_CA_CONFIGMAP
  value: {{ include "rollcall.redis.caConfigMap" .ctx | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rollcall.redis.caMount" -}}
{{- if .Values.redis.external.caCert }}
- name: redis-ca
  mountPath: /etc/rollcall/redis-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "rollcall.redis.caVolume" -}}
{{- if .Values.redis.external.caCert }}
- name: redis-ca
  configMap:
    name: {{ include "rollcall.redis.caConfigMap" . }}
    items:
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- end }}

{{/*
The webhook signing Secret.
*/}}
{{- define "rollcall.webhook.secretName" -}}
{{- default (printf "%s-webhook" (include "rollcall.fullname" .)) .Values.webhook.signingSecret.name }}
{{- end }}

{{/*
One school namespace's signing key (dict "ctx" . "namespace" ns): the value already in that
namespace's Secret (kept across upgrades), else a new random one. Never shared between schools.
*/}}
{{- define "rollcall.webhook.secretValue" -}}
{{- $existing := lookup "v1" "Secret" .namespace (include "rollcall.webhook.secretName" .ctx) }}
{{- $key := .ctx.Values.webhook.signingSecret.key }}
{{- if and $existing $existing.data (index $existing.data $key) }}
{{- index $existing.data $key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}

{{/*
The kopf peering object's name, when peering is on (more than one operator replica).
*/}}
{{- define "rollcall.peeringName" -}}
{{- if gt (int .Values.operator.replicas) 1 }}
{{- include "rollcall.fullname" . }}
{{- end }}
{{- end }}

{{/*
The securityContexts (restricted Pod Security Standard).
*/}}
{{- define "rollcall.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "rollcall.securityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/*
Checks that fail the render with a readable message.
*/}}
{{- define "rollcall.validate" -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) }}
{{- fail "redis.enabled=false needs redis.external.url or redis.external.existingSecret" }}
{{- end }}
{{- if and .Values.redis.enabled .Values.redis.external.caCert }}
{{- fail "redis.external.caCert is for an external rediss:// Redis (redis.enabled=false)" }}
{{- end }}
{{- $ns := include "rollcall.namespaces" . | fromJsonArray }}
{{- range $digest, $entry := .Values.api.keys.entries }}
{{- range $entry.namespaces }}
{{- if not (has . $ns) }}
{{- fail (printf "api.keys.entries: namespace %q (key %s...) is not in `namespaces` %v: the API could not reach it" . (trunc 8 (toString $digest)) $ns) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.webhook.enabled (not .Values.webhook.signingSecret.create) (not .Values.webhook.signingSecret.name) }}
{{- fail "webhook.signingSecret.create=false needs webhook.signingSecret.name (each school namespace's own Secret)" }}
{{- end }}
{{- end }}
