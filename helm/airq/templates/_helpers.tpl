{{- define "airq.labels" -}}
app.kubernetes.io/name: airq-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: airq
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "airq.selector" -}}
app.kubernetes.io/name: airq-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "airq.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
