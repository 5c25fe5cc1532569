{{/* Names shared by every template. */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.apiService" -}}{{ include "portcullis.fullname" . }}-api{{- end -}}
{{- define "portcullis.webhookService" -}}{{ include "portcullis.fullname" . }}-webhook{{- end -}}
{{- define "portcullis.metricsService" -}}{{ include "portcullis.fullname" . }}-metrics{{- end -}}
{{- define "portcullis.webhookSecret" -}}{{ include "portcullis.fullname" . }}-webhook-tls{{- end -}}
{{- define "portcullis.webhookConfig" -}}{{ include "portcullis.fullname" . }}-sidecar-injector{{- end -}}
{{- define "portcullis.leaseName" -}}{{ include "portcullis.fullname" . }}-operator{{- end -}}
{{- define "portcullis.certificate" -}}{{ include "portcullis.fullname" . }}-serving{{- end -}}
{{- define "portcullis.webhookTlsDir" -}}/var/run/portcullis/webhook{{- end -}}

{{/* An image reference: repository, then @digest or :tag (the chart's appVersion by default). */}}
{{- define "portcullis.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.controlPlaneUrl" -}}
{{- default (printf "https://%s.%s.svc:%d" (include "portcullis.apiService" .) .Release.Namespace (int .Values.api.port)) .Values.controlPlane.url -}}
{{- end -}}

{{/* Namespaces never sent to the webhook. */}}
{{- define "portcullis.excludedNamespaces" -}}
{{- $list := concat (list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace) .Values.webhook.excludedNamespaces -}}
{{- toJson (uniq $list) -}}
{{- end -}}
