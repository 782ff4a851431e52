{{/*
Names are fixed, not derived from the release name: the controller looks up the webhook
configuration, its Service, Lease and Secrets by these names, and one release per cluster is
supported (the CRDs and the webhook are cluster-wide).
*/}}

{{/* Labels on every object the chart renders. */}}
{{- define "palisade.labels" -}}
app.kubernetes.io/name: palisade
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: palisade
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | quote }}
{{- end -}}

{{/*
Labels that select the control-plane pods (stable across upgrades: selectors are immutable).
The pod template carries them as palisade.labels plus the component.
*/}}
{{- define "palisade.selectorLabels" -}}
app.kubernetes.io/name: palisade
app.kubernetes.io/component: controller
{{- end -}}

{{/* The control plane's image reference: repository[:tag][@digest]. */}}
{{- define "palisade.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The image of the injected containers. */}}
{{- define "palisade.proxyImage" -}}
{{- .Values.proxy.image | default (include "palisade.image" .) -}}
{{- end -}}

{{/* Where proxies dial the CA and policy distribution. */}}
{{- define "palisade.controlPlaneAddress" -}}
{{- .Values.controlPlane.address | default (printf "palisade.%s.svc:15012" .Release.Namespace) -}}
{{- end -}}

{{/*
The injection settings `palisade controller --injection-config` reads (src/webhook/config.rs).
Built as a map and serialised with toYaml, so no value can break out of its field. The
control plane's namespace and trust domain come from the controller's own flags.
*/}}
{{- define "palisade.injectionConfig" -}}
{{- $config := dict
      "image" (include "palisade.proxyImage" .)
      "caAddress" (include "palisade.controlPlaneAddress" .)
      "proxyResources" .Values.proxy.resources
      "initResources" .Values.proxy.initResources -}}
{{- with .Values.proxy.pullPolicy }}
{{- $_ := set $config "imagePullPolicy" . -}}
{{- end }}
{{- toYaml $config -}}
{{- end -}}

{{/* The listen address as the controller's flags take it (IPv6 in brackets). */}}
{{- define "palisade.listenHost" -}}
{{- if contains ":" .Values.listenAddress -}}
{{- printf "[%s]" .Values.listenAddress -}}
{{- else -}}
{{- .Values.listenAddress -}}
{{- end -}}
{{- end -}}
