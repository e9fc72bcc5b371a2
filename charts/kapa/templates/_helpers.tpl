{{/*
Names, labels and the security settings every Kapa pod shares. Port numbers are kapa.core.contract's; the chart
tests check each rendered port against it.
*/}}

{{- define "kapa.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release-scoped prefix of every object name. */}}
{{- define "kapa.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: (list $ "scaler") */}}
{{- define "kapa.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "kapa.fullname" $root) (index . 1) -}}
{{- end -}}

{{- define "kapa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kapa.name" (index . 0) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kapa.labels" -}}
{{ include "kapa.selectorLabels" . }}
app.kubernetes.io/version: {{ (index . 0).Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ (index . 0).Release.Service }}
helm.sh/chart: {{ printf "%s-%s" (index . 0).Chart.Name (index . 0).Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kapa.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* In-cluster DNS name of a component's Service: (list $ "scaler") */}}
{{- define "kapa.serviceHost" -}}
{{- $root := index . 0 -}}
{{- printf "%s.%s.svc.%s" (include "kapa.componentName" .) $root.Release.Namespace $root.Values.clusterDomain -}}
{{- end -}}

{{/* Pod-level security: non-root with the image's user (uid), RuntimeDefault seccomp. */}}
{{- define "kapa.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security, the same for every container the chart runs or injects. */}}
{{- define "kapa.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Scheduling settings shared by every Deployment. */}}
{{- define "kapa.scheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Where config-autoscaler is mounted in the scaler's pod. */}}
{{- define "kapa.configDir" -}}/etc/kapa/config-autoscaler{{- end -}}

{{/* The uid of the Kapa image's user (see the Dockerfile) and of the Envoy image's. */}}
{{- define "kapa.uid" -}}10001{{- end -}}
{{- define "kapa.envoyUid" -}}101{{- end -}}
