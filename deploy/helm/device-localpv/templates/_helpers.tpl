{{/*
Namespace of the workloads, RBAC and custom resources: namespace.name, else the release namespace.
*/}}
{{- define "device-localpv.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{/*
Image of the driver; the tag defaults to the chart's appVersion.
*/}}
{{- define "device-localpv.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}

{{/*
Image of the csi-provisioner sidecar.
*/}}
{{- define "device-localpv.provisionerImage" -}}
{{- with .Values.csiProvisioner.image -}}
{{- printf "%s:%s" .repository (.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
Image of the csi-resizer sidecar.
*/}}
{{- define "device-localpv.snapshotterImage" -}}
{{- with .Values.csiSnapshotter.image -}}
{{- printf "%s:%s" .repository (.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "device-localpv.resizerImage" -}}
{{- with .Values.csiResizer.image -}}
{{- printf "%s:%s" .repository (.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
Kubelet's directory on the nodes, without a trailing slash.
*/}}
{{- define "device-localpv.kubeletDir" -}}
{{- $dir := .Values.kubeletDir | trimSuffix "/" -}}
{{- if not (hasPrefix "/" $dir) -}}
{{- fail (printf "kubeletDir must be an absolute path other than /, got %q" .Values.kubeletDir) -}}
{{- end -}}
{{- $dir -}}
{{- end -}}

{{/*
Lease duration in whole seconds (the driver accepts >= 3).
*/}}
{{- define "device-localpv.leaseSeconds" -}}
{{- $s := int .Values.leaderElection.leaseSeconds -}}
{{- if lt $s 3 -}}
{{- fail (printf "leaderElection.leaseSeconds must be >= 3, got %v" .Values.leaderElection.leaseSeconds) -}}
{{- end -}}
{{- $s -}}
{{- end -}}
