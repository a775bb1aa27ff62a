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
{{- $margin := .Values.proxyTimeoutMarginSeconds -}}
{{- if not (kindIs "invalid" .Values.ingress.nginx.timeoutMarginSeconds) -}}
{{- $margin = .Values.ingress.nginx.timeoutMarginSeconds -}}
{{- end -}}
{{- add (include "longpoll-gateway.pollTimeoutSeconds" . | atoi) $margin -}}
{{- end }}

{{/*
ingress.generateAnnotations and ingress.hashByUuid, with their deprecated aliases
(ingress.nginx.enabled, ingress.nginx.hashByUuid) winning when set: "true" or "".
*/}}
{{- define "longpoll-gateway.ingressGenerates" -}}
{{- $v := .Values.ingress.generateAnnotations -}}
{{- if not (kindIs "invalid" .Values.ingress.nginx.enabled) -}}
{{- $v = .Values.ingress.nginx.enabled -}}
{{- end -}}
{{- if $v -}}true{{- end -}}
{{- end }}

{{- define "longpoll-gateway.ingressHashes" -}}
{{- $v := .Values.ingress.hashByUuid -}}
{{- if not (kindIs "invalid" .Values.ingress.nginx.hashByUuid) -}}
{{- $v = .Values.ingress.nginx.hashByUuid -}}
{{- end -}}
{{- if and $v (include "longpoll-gateway.ingressGenerates" .) (ne .Values.ingress.controller "traefik") -}}true{{- end -}}
{{- end }}

{{/*
The IngressClass name: ingress.className, or the controller's usual one.
*/}}
{{- define "longpoll-gateway.ingressClassName" -}}
{{- $usual := dict "nginx-inc" "nginx" "haproxy" "haproxy" "traefik" "traefik" "ingress-nginx" "nginx" -}}
{{- default (get $usual .Values.ingress.controller) .Values.ingress.className -}}
{{- end }}

{{/*
The annotations the chart writes on the Ingress for ingress.controller, as YAML (a dict).
Every timeout is config.pollTimeout + proxyTimeoutMarginSeconds, so it cannot drift below
the poll timeout.
*/}}
{{- define "longpoll-gateway.ingressAnnotations" -}}
{{- $a := dict -}}
{{- if include "longpoll-gateway.ingressGenerates" . -}}
{{- $t := include "longpoll-gateway.proxyTimeoutSeconds" . -}}
{{- $hash := include "longpoll-gateway.ingressHashes" . -}}
{{- $c := .Values.ingress.controller -}}
{{- if eq $c "nginx-inc" -}}
{{- /* F5 NGINX Ingress Controller: plain nginx upstreams, so `hash ... consistent` and a
next-upstream retry goes to the next server of the ring. */ -}}
{{- $_ := set $a "nginx.org/lb-method" (ternary "hash $arg_uuid consistent" "round_robin" (eq $hash "true")) -}}
{{- $_ := set $a "nginx.org/proxy-read-timeout" (printf "%ss" $t) -}}
{{- $_ := set $a "nginx.org/proxy-send-timeout" (printf "%ss" $t) -}}
{{- $_ := set $a "nginx.org/proxy-next-upstream" .Values.ingress.nginx.nextUpstream -}}
{{- $_ := set $a "nginx.org/proxy-next-upstream-tries" (toString .Values.ingress.nginx.nextUpstreamTries) -}}
{{- $_ := set $a "nginx.org/proxy-buffering" "False" -}}
{{- else if eq $c "ingress-nginx" -}}
{{- if $hash -}}
{{- $_ := set $a "nginx.ingress.kubernetes.io/upstream-hash-by" "$arg_uuid" -}}
{{- end -}}
{{- $_ := set $a "nginx.ingress.kubernetes.io/proxy-read-timeout" $t -}}
{{- $_ := set $a "nginx.ingress.kubernetes.io/proxy-send-timeout" $t -}}
{{- $_ := set $a "nginx.ingress.kubernetes.io/proxy-next-upstream" .Values.ingress.nginx.nextUpstream -}}
{{- $_ := set $a "nginx.ingress.kubernetes.io/proxy-next-upstream-tries" (toString .Values.ingress.nginx.nextUpstreamTries) -}}
{{- $_ := set $a "nginx.ingress.kubernetes.io/proxy-buffering" "off" -}}
{{- else if eq $c "haproxy" -}}
{{- /* HAProxy Kubernetes Ingress Controller: no hash-type annotation, so the backend
snippet carries it; `timeout client` is a ConfigMap-only setting of the controller. */ -}}
{{- $_ := set $a "haproxy.org/load-balance" (ternary "url_param uuid" "roundrobin" (eq $hash "true")) -}}
{{- $snippet := list -}}
{{- if $hash -}}
{{- $snippet = append $snippet "hash-type consistent" -}}
{{- end -}}
{{- $snippet = append $snippet (printf "retry-on %s" .Values.ingress.haproxy.retryOn) -}}
{{- $snippet = append $snippet (printf "retries %d" (int .Values.ingress.haproxy.retries)) -}}
{{- $snippet = append $snippet "option redispatch 1" -}}
{{- $_ := set $a "haproxy.org/backend-config-snippet" (printf "%s\n" (join "\n" $snippet)) -}}
{{- $_ := set $a "haproxy.org/timeout-server" (printf "%ss" $t) -}}
{{- end -}}
{{- /* traefik: nothing to hash with, and its default timeouts do not cut a held poll. */ -}}
{{- end -}}
{{- toYaml $a -}}
{{- end }}

{{/*
Which consistent hashing on uuid the chart sets up, in words; empty when none.
*/}}
{{- define "longpoll-gateway.hashing" -}}
{{- $parts := list -}}
{{- if and .Values.ingress.enabled (include "longpoll-gateway.ingressHashes" .) -}}
{{- $how := dict "nginx-inc" "nginx.org/lb-method \"hash $arg_uuid consistent\"" "ingress-nginx" "upstream-hash-by $arg_uuid" "haproxy" "balance url_param uuid, hash-type consistent" -}}
{{- $parts = append $parts (printf "Ingress (%s): %s" .Values.ingress.controller (get $how .Values.ingress.controller)) -}}
{{- end -}}
{{- if and .Values.httpRoute.enabled .Values.httpRoute.hashByUuid (ne .Values.httpRoute.implementation "other") -}}
{{- $how := dict "envoy-gateway" "BackendTrafficPolicy, ConsistentHash on the query parameter uuid" "istio" "DestinationRule, consistentHash.httpQueryParameterName uuid" "kong" "KongUpstreamPolicy, consistent-hashing on the query argument uuid" -}}
{{- $parts = append $parts (printf "HTTPRoute (%s): %s" .Values.httpRoute.implementation (get $how .Values.httpRoute.implementation)) -}}
{{- end -}}
{{- join "; " $parts -}}
{{- end }}

{{/*
The RabbitmqCluster's name.
*/}}
{{- define "longpoll-gateway.rabbitmqName" -}}
{{- default (printf "%s-rabbitmq" (include "longpoll-gateway.fullname" .) | trunc 52 | trimSuffix "-") .Values.rabbitmq.cluster.name -}}
{{- end }}

{{/*
LONGPOLL_BROKER for the RabbitmqCluster: one URL per node, comma-separated, without
credentials (they come from the operator's default-user Secret, mounted as files).
*/}}
{{- define "longpoll-gateway.rabbitmqBrokerUrls" -}}
{{- $name := include "longpoll-gateway.rabbitmqName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $vhost := .Values.rabbitmq.cluster.vhost -}}
{{- $urls := list -}}
{{- if eq .Values.rabbitmq.cluster.addresses "service" -}}
{{- $urls = append $urls (printf "amqp://%s.%s.svc:5672/%s" $name $ns $vhost) -}}
{{- else -}}
{{- range $i := until (int .Values.rabbitmq.cluster.replicas) -}}
{{- $urls = append $urls (printf "amqp://%s-server-%d.%s-nodes.%s.svc:5672/%s" $name $i $name $ns $vhost) -}}
{{- end -}}
{{- end -}}
{{- join "," $urls -}}
{{- end }}

{{/*
"true" when the embedded in-process broker is used (one replica only). With existingSecret
the chart cannot see the URL and assumes RabbitMQ.
*/}}
{{- define "longpoll-gateway.memoryBroker" -}}
{{- if and (not .Values.existingSecret) (not .Values.rabbitmq.cluster.enabled) (or (empty .Values.config.broker) (hasPrefix "memory:" .Values.config.broker)) -}}
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
{{- if .Values.keda.enabled -}}
{{- fail (printf "config.broker is the embedded broker (%q), which only works with one replica, but keda.enabled is true: set config.broker to an amqp:// URL (or existingSecret, or rabbitmq.cluster.enabled), or disable keda" (default "memory://" .Values.config.broker)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.keda.enabled .Values.autoscaling.enabled -}}
{{- fail "keda.enabled and autoscaling.enabled cannot both be true: KEDA makes its own HorizontalPodAutoscaler for the Deployment; keep one of them" -}}
{{- end -}}
{{- if .Values.keda.enabled -}}
{{- if gt (int .Values.keda.minReplicas) (int .Values.keda.maxReplicas) -}}
{{- fail (printf "keda.minReplicas (%d) is above keda.maxReplicas (%d)" (int .Values.keda.minReplicas) (int .Values.keda.maxReplicas)) -}}
{{- end -}}
{{- if and .Values.keda.cpuUtilizationPercentage (not (dig "requests" "cpu" "" (.Values.resources | default dict))) -}}
{{- fail "keda.cpuUtilizationPercentage needs resources.requests.cpu (utilisation is a percentage of the request)" -}}
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
