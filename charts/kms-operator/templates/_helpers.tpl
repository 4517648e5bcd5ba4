{{/* Names, labels and shared fragments of the kms-operator chart. */}}

{{- define "kms-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified name: <release>-<chart>, or the release name when it already contains the
chart name; truncated to 63 characters (DNS label limit). The Service, the serving certificate's
names (--api-service-name) and the CA ConfigMap (<fullname>-ca) derive from it.
*/}}
{{- define "kms-operator.fullname" -}}
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

{{- define "kms-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kms-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kms-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kms-operator.labels" -}}
helm.sh/chart: {{ include "kms-operator.chart" . }}
{{ include "kms-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kms-operator
{{- end }}

{{- define "kms-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kms-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kms-operator.rootKeySecretName" -}}
{{- default (printf "%s-root-key" (include "kms-operator.fullname" .)) .Values.rootKey.existingSecret }}
{{- end }}

{{- define "kms-operator.caConfigMapName" -}}
{{- printf "%s-ca" (include "kms-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The DNS name the serving certificate covers and clients use. */}}
{{- define "kms-operator.apiHost" -}}
{{- printf "%s.%s.svc" (include "kms-operator.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "kms-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The permissions the operator needs on its own resources and Events, in every namespace it
serves (a ClusterRole when cluster-wide, one Role per watched namespace otherwise). Secrets are
in kms-operator.secretRules (rbac.yaml): get/create/update one at a time, never list or watch.
*/}}
{{- define "kms-operator.kmsRules" -}}
# Kopf watches and patches (finalizer, progress annotations) the keys; the operator reads,
# lists (alias conflicts) and re-creates them (deletion cancelled). The AWS API's lifecycle
# operations create, patch and delete them for callers who hold that verb themselves (checked
# by SubjectAccessReview first).
- apiGroups: ["kms.cmk.dev"]
  resources: ["customermasterkeys"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["kms.cmk.dev"]
  resources: ["customermasterkeys/status"]
  verbs: ["get", "patch", "update"]
# KeyMaterialImport and DataKey handlers (read and status only; no create, no delete).
- apiGroups: ["kms.cmk.dev"]
  resources: ["keymaterialimports", "datakeys"]
  verbs: ["get", "list", "watch", "patch", "update"]
# The AWS API's GetParametersForImport and DeleteImportedKeyMaterial, for callers who hold
# that verb themselves (checked by SubjectAccessReview first).
- apiGroups: ["kms.cmk.dev"]
  resources: ["keymaterialimports"]
  verbs: ["create", "delete"]
- apiGroups: ["kms.cmk.dev"]
  resources: ["keymaterialimports/status", "datakeys/status"]
  verbs: ["get", "patch", "update"]
# Events on the keys (Kopf's and the operator's own).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
