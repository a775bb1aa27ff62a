{{/*
Expand the name of the chart.
*/}}
{{- define "longpoll-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (63 characters at most: DNS label).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "longpoll-gateway.fullname" -}}
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

{{/*
Chart name and version as used by the chart label.
*/}}
{{- define "longpoll-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "longpoll-gateway.labels" -}}
helm.sh/chart: {{ include "longpoll-gateway.chart" . }}
{{ include "longpoll-gateway.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: gateway
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "longpoll-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "longpoll-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "longpoll-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "longpoll-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the broker URL and the API token.
*/}}
{{- define "longpoll-gateway.secretName" -}}
{{- default (include "longpoll-gateway.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
A duration ("500ms", "270s", "5m", "1h", "4m30s") in milliseconds.
Usage: include "longpoll-gateway.durationMillis" (list "config.pollTimeout" .Values.config.pollTimeout)
*/}}
{{- define "longpoll-gateway.durationMillis" -}}
{{- $key := index . 0 -}}
{{- $d := toString (index . 1) -}}
{{- if not (regexMatch "^([0-9]+(ms|s|m|h))+$" $d) -}}
{{- fail (printf "%s: %q is not a duration; use a number with a unit, e.g. 500ms, 270s, 5m, 1h" $key $d) -}}
{{- end -}}
{{- $factors := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" $d -1 -}}
{{- $n := regexFind "^[0-9]+" . | atoi -}}
{{- $unit := regexReplaceAll "^[0-9]+" . "" -}}
{{- $total = add $total (mul $n (get $factors $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end }}

{{/*
A duration in whole seconds, rounded up.
*/}}
{{- define "longpoll-gateway.durationSeconds" -}}
{{- $ms := include "longpoll-gateway.durationMillis" . | atoi -}}
{{- div (add $ms 999) 1000 -}}
{{- end }}

{{/*
config.pollTimeout in whole seconds.
*/}}
{{- define "longpoll-gateway.pollTimeoutSeconds" -}}
{{- include "longpoll-gateway.durationSeconds" (list "config.pollTimeout" .Values.config.pollTimeout) -}}
{{- end }}

{{/*
Proxy read/send timeout in seconds: the poll timeout plus a margin, so that the gateway
always answers (408) before the proxy gives up. Derived, so that the two cannot drift.
*/}}
{{- define "longpoll-gateway.proxyTimeoutSeconds" -}}
{{- add (include "longpoll-gateway.pollTimeoutSeconds" . | atoi) .Values.ingress.nginx.timeoutMarginSeconds -}}
{{- end }}

{{/*
"true" when the embedded in-process broker is used (one replica only). With existingSecret
the chart cannot see the URL and assumes RabbitMQ.
*/}}
{{- define "longpoll-gateway.memoryBroker" -}}
{{- if and (not .Values.existingSecret) (or (empty .Values.config.broker) (hasPrefix "memory:" .Values.config.broker)) -}}
true
{{- end -}}
{{- end }}

{{/*
The poll URI handed to browsers: config.publicUrl, or the first ingress host and path.
*/}}
{{- define "longpoll-gateway.publicUrl" -}}
{{- if .Values.config.publicUrl -}}
{{- .Values.config.publicUrl -}}
{{- else if .Values.ingress.enabled -}}
{{- $first := first .Values.ingress.hosts -}}
{{- if and $first $first.host -}}
{{- $scheme := "http" -}}
{{- range .Values.ingress.tls -}}
{{- if has $first.host (default (list) .hosts) -}}
{{- $scheme = "https" -}}
{{- end -}}
{{- end -}}
{{- $path := "/" -}}
{{- with $first.paths -}}
{{- $path = (first .).path -}}
{{- end -}}
{{- printf "%s://%s%s" $scheme $first.host $path -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
"true" when a path routed to the public port would also route the management API
(/api/v1/...).
*/}}
{{- define "longpoll-gateway.pathExposesApi" -}}
{{- $p := printf "%s/" (trimSuffix "/" .) -}}
{{- if or (hasPrefix $p "/api/v1/") (hasPrefix "/api/" $p) -}}
true
{{- end -}}
{{- end }}

{{/*
Checks that make rendering fail with a clear message instead of deploying something broken.
*/}}
{{- define "longpoll-gateway.validate" -}}
{{- if include "longpoll-gateway.memoryBroker" . -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- fail (printf "config.broker is the embedded broker (%q), which only works with one replica, but replicaCount is %d: set config.broker to an amqp:// URL (or existingSecret), or set replicaCount=1" (default "memory://" .Values.config.broker) (int .Values.replicaCount)) -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- fail (printf "config.broker is the embedded broker (%q), which only works with one replica, but autoscaling.enabled is true: set config.broker to an amqp:// URL (or existingSecret), or disable autoscaling" (default "memory://" .Values.config.broker)) -}}
{{- end -}}
{{- end -}}
{{- range $k := list "pollTimeout" "drainTimeout" "subscriptionExpiry" "replayTtl" -}}
{{- if le (include "longpoll-gateway.durationMillis" (list (printf "config.%s" $k) (get $.Values.config $k)) | atoi) 0 -}}
{{- fail (printf "config.%s must be above 0" $k) -}}
{{- end -}}
{{- end -}}
{{- $drain := include "longpoll-gateway.durationSeconds" (list "config.drainTimeout" .Values.config.drainTimeout) | atoi -}}
{{- $needed := add .Values.preStopSleepSeconds $drain 10 -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds (%d) + config.drainTimeout (%ds) + 10s margin = %d, or the kubelet kills pods that are still draining" (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds) (int $drain) (int $needed)) -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage .Values.autoscaling.heldPolls.enabled) -}}
{{- fail "autoscaling.enabled needs at least one metric: targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or heldPolls.enabled" -}}
{{- end -}}
{{- if and .Values.autoscaling.targetCPUUtilizationPercentage (not (dig "requests" "cpu" "" (.Values.resources | default dict))) -}}
{{- fail "autoscaling.targetCPUUtilizationPercentage needs resources.requests.cpu (utilisation is a percentage of the request)" -}}
{{- end -}}
{{- if and .Values.autoscaling.targetMemoryUtilizationPercentage (not (dig "requests" "memory" "" (.Values.resources | default dict))) -}}
{{- fail "autoscaling.targetMemoryUtilizationPercentage needs resources.requests.memory (utilisation is a percentage of the request)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.exposeManagementApi) -}}
{{- range .Values.ingress.hosts -}}
{{- range .paths -}}
{{- if include "longpoll-gateway.pathExposesApi" .path -}}
{{- fail (printf "ingress path %q would expose the management API (/api/v1/), which is server-to-server only: route a prefix such as /longpoll/ instead, or set ingress.exposeManagementApi=true" .path) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.exposeManagementApi) -}}
{{- range .Values.httpRoute.pathPrefixes -}}
{{- if include "longpoll-gateway.pathExposesApi" . -}}
{{- fail (printf "httpRoute path prefix %q would expose the management API (/api/v1/), which is server-to-server only: route a prefix such as /longpoll/ instead, or set httpRoute.exposeManagementApi=true" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}
