{{- define "airq.operatorName" -}}
{{ .Release.Name }}-operator
{{- end -}}

{{- define "airq.labels" -}}
app.kubernetes.io/name: airq-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: airq
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "airq.selector" -}}
app.kubernetes.io/name: airq-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* Labels of the chart's other objects: those of airq.labels with another name. */ -}}
{{- define "airq.componentLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: airq
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "airq.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- /* The Secret holding the database URL. */ -}}
{{- define "airq.databaseSecret" -}}
{{- if .Values.postgresql.enabled -}}
airq-database
{{- else -}}
{{ required "database.existingSecret: name the Secret holding the URL of your PostgreSQL, or set postgresql.enabled=true" .Values.database.existingSecret }}
{{- end -}}
{{- end -}}

{{- define "airq.gatewaySecret" -}}
{{ .Values.gateway.existingSecret | default "airq-gateway-keys" }}
{{- end -}}

{{- define "airq.postgresqlName" -}}
airq-postgresql
{{- end -}}

{{- /* The pod and container security settings every pod of the chart has (Pod Security Standard "restricted"). */ -}}
{{- define "airq.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: { drop: ["ALL"] }
{{- end -}}
