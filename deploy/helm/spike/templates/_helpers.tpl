{{/* Name prefix of every object: the release name, with the chart's name unless it holds it. */}}
{{- define "spike.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "spike.nexus" -}}{{ include "spike.fullname" . }}-nexus{{- end -}}
{{- define "spike.keeper" -}}{{ include "spike.fullname" . }}-keeper{{- end -}}

{{- define "spike.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "nexus"). */}}
{{- define "spike.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "spike.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The chart refuses what the binaries would refuse at start. */}}
{{- define "spike.validate" -}}
{{- $replicas := int .Values.nexus.replicas -}}
{{- if not (has $replicas (list 3 5)) -}}
{{- fail (printf "nexus.replicas must be 3 or 5 (an odd number of voters, one of which may be down), not %v" .Values.nexus.replicas) -}}
{{- end -}}
{{- $founders := int .Values.nexus.founders -}}
{{- if or (lt $founders 1) (gt $founders $replicas) -}}
{{- fail (printf "nexus.founders must be 1 to nexus.replicas (%d), not %d" $replicas $founders) -}}
{{- end -}}
{{- $ids := list -}}
{{- range $ordinal, $id := .Values.nexus.nodeIds -}}
{{- if or (not (regexMatch "^[0-9]+$" (toString $ordinal))) (lt (int $ordinal) $founders) -}}
{{- fail (printf "nexus.nodeIds: %q is not an ordinal at or above nexus.founders (%d): founders' ids are fixed by the peer list" (toString $ordinal) $founders) -}}
{{- end -}}
{{- if or (le (int64 $id) (int64 $replicas)) (has (int64 $id) $ids) -}}
{{- fail (printf "nexus.nodeIds: id %v of ordinal %s is taken (by a founder, another override or a pod's default ordinal+1)" $id (toString $ordinal)) -}}
{{- end -}}
{{- $ids = append $ids (int64 $id) -}}
{{- end -}}
{{- $keepers := int .Values.keeper.replicas -}}
{{- $threshold := int .Values.keeper.threshold -}}
{{- if or (lt $keepers 2) (gt $keepers 255) -}}
{{- fail (printf "keeper.replicas (Shamir n) must be 2 to 255, not %d" $keepers) -}}
{{- end -}}
{{- if or (lt $threshold 2) (gt $threshold $keepers) -}}
{{- fail (printf "keeper.threshold (Shamir t) must be 2 to keeper.replicas (%d), not %d" $keepers $threshold) -}}
{{- end -}}
{{- if not (has .Values.svid.source (list "csi" "hostPath")) -}}
{{- fail (printf "svid.source must be csi or hostPath, not %q" .Values.svid.source) -}}
{{- end -}}
{{- if not (has .Values.lockMemory (list "auto" "required" "off")) -}}
{{- fail (printf "lockMemory must be auto, required or off, not %q" .Values.lockMemory) -}}
{{- end -}}
{{- end -}}

{{/* The SVID volume of a pod. */}}
{{- define "spike.svidVolume" -}}
- name: spiffe-workload-api
{{- if eq .Values.svid.source "csi" }}
  csi:
    driver: {{ .Values.svid.csi.driver }}
    readOnly: true
{{- else }}
  hostPath:
    path: {{ .Values.svid.hostPath.path }}
    type: Directory
{{- end }}
{{- end -}}

{{- define "spike.svidMount" -}}
- name: spiffe-workload-api
  mountPath: {{ .Values.svid.mountPath }}
  readOnly: true
{{- end -}}

{{/* Environment common to both binaries. */}}
{{- define "spike.commonEnv" -}}
- name: SPIFFE_ENDPOINT_SOCKET
  value: {{ printf "unix://%s/%s" .Values.svid.mountPath .Values.svid.socketName | quote }}
- name: SPIKE_WORKLOAD_API_TIMEOUT_MS
  value: {{ .Values.svid.workloadApiTimeoutMs | quote }}
- name: SPIKE_TRUST_ROOT
  value: {{ .Values.trustDomain | quote }}
- name: SPIKE_LOCK_MEMORY
  value: {{ .Values.lockMemory | quote }}
- name: SPIKE_SYSTEM_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* Pod anti-affinity of a component, unless `affinity` is given: (dict "root" $ "component" "nexus" "values" .Values.nexus). */}}
{{- define "spike.affinity" -}}
{{- if .values.affinity -}}
{{ toYaml .values.affinity }}
{{- else if eq .values.antiAffinity "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "spike.selector" (dict "root" .root "component" .component) | nindent 10 }}
{{- else if eq .values.antiAffinity "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "spike.selector" (dict "root" .root "component" .component) | nindent 12 }}
{{- else -}}
{{- fail (printf "%s.antiAffinity must be hard or soft, not %q" .component .values.antiAffinity) -}}
{{- end -}}
{{- end -}}
