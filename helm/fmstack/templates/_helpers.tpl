{{/*
Names, labels and the pieces shared by the RayService and the RayJobs' Ray pods.
*/}}

{{- define "fmstack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name; RayService names feed KubeRay's generated names, so keep
it short (at most 40 characters leaves room for "-raycluster-xxxxx-head-svc"). */}}
{{- define "fmstack.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fmstack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades, so never the chart version. */}}
{{- define "fmstack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fmstack.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of a chart object. Call with (dict "ctx" $ "component" "serve"). */}}
{{- define "fmstack.labels" -}}
{{ include "fmstack.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: fmstack
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "fmstack.chart" .ctx }}
{{- end }}

{{/* Labels of a Ray pod template. No chart or app version: a changed pod template makes KubeRay
replace the whole RayService cluster, which a chart upgrade alone must not do.
Call with (dict "ctx" $ "component" "head" "workload" "serve"). */}}
{{- define "fmstack.podLabels" -}}
{{ include "fmstack.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: fmstack
fmstack.io/workload: {{ .workload }}
{{- end }}

{{- define "fmstack.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "fmstack.gpuImage" -}}
{{- $tag := default (printf "%s-cu128" (default .Chart.AppVersion .Values.image.tag)) .Values.image.gpuTag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "fmstack.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "fmstack.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "fmstack.dataClaim" -}}
{{- default (printf "%s-data" (include "fmstack.fullname" .)) .Values.storage.pvc.existingClaim }}
{{- end }}

{{- define "fmstack.cliServiceAccount" -}}
{{- default (printf "%s-cli" (include "fmstack.fullname" .)) .Values.serviceAccount.name }}
{{- end }}

{{/* The registry root and the runs root, on the PVC or on object storage. */}}
{{- define "fmstack.registry" -}}
{{- if eq .Values.storage.type "object" }}
{{- required "storage.object.registry is required with storage.type=object (an s3:// or gs:// URI)" .Values.storage.object.registry }}
{{- else }}/data/registry{{ end }}
{{- end }}

{{- define "fmstack.runs" -}}
{{- if eq .Values.storage.type "object" }}
{{- required "storage.object.runs is required with storage.type=object (an s3:// or gs:// URI)" .Values.storage.object.runs }}
{{- else }}/data/runs{{ end }}
{{- end }}

{{- define "fmstack.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "fmstack.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
privileged: false
readOnlyRootFilesystem: {{ .Values.podSecurity.readOnlyRootFilesystem }}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
{{- end }}

{{/* requests == limits: Ray schedules by what the container may use, and the pod gets the
Guaranteed QoS class. Call with (dict "resources" .resources "gpus" N). */}}
{{- define "fmstack.resources" -}}
{{- $amounts := dict "cpu" (toString .resources.cpu) "memory" (toString .resources.memory) }}
{{- if .gpus }}{{ $_ := set $amounts "nvidia.com/gpu" (int .gpus) }}{{ end -}}
requests:
  {{- toYaml $amounts | nindent 2 }}
limits:
  {{- toYaml $amounts | nindent 2 }}
{{- end }}

{{/* Environment of every Ray container. Call with (dict "ctx" $ "apiKeys" true). */}}
{{- define "fmstack.rayEnv" -}}
{{- $v := .ctx.Values -}}
- name: FMSTACK_CACHE
  value: /opt/fmstack/cache
- name: FMSTACK_REGISTRY
  value: {{ include "fmstack.registry" .ctx | quote }}
# The root filesystem is read-only: caches go to the /tmp emptyDir.
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: TRITON_CACHE_DIR
  value: /tmp/.cache/triton
- name: MPLCONFIGDIR
  value: /tmp/.cache/matplotlib
- name: HF_HUB_OFFLINE
  value: "1"
{{- if and .serve $v.serve.highThroughput }}
# Ray Serve's high-throughput mode: HAProxy on the Serve port, direct gRPC between deployments.
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
{{- end }}
{{- if .apiKeys }}
- name: FMSTACK_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "fmstack.apiKeysSecret" .ctx }}
      key: api-keys
- name: FMSTACK_ADMIN_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "fmstack.apiKeysSecret" .ctx }}
      key: admin-keys
{{- end }}
{{- if eq $v.storage.type "object" }}
{{- range $name, $value := $v.storage.object.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with $v.storage.object.credentials }}
{{- if and .existingSecret .gcpKeyFileKey }}
- name: GOOGLE_APPLICATION_CREDENTIALS
  value: /var/run/secrets/fmstack/gcp/key.json
{{- else if .existingSecret }}
{{- range $name, $key := .secretKeys }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.storage.object.credentials.existingSecret }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes of every Ray pod. Call with (dict "ctx" $ "recipes" "<configmap>" "recipeKey" "k"
"recipeFile" "f"), the recipe entries only for jobs. */}}
{{- define "fmstack.rayVolumes" -}}
{{- $v := .ctx.Values -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $v.tmpSizeLimit }}
{{- if eq $v.storage.type "pvc" }}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "fmstack.dataClaim" .ctx }}
{{- else if and $v.storage.object.credentials.existingSecret $v.storage.object.credentials.gcpKeyFileKey }}
- name: gcp-key
  secret:
    secretName: {{ $v.storage.object.credentials.existingSecret }}
    items:
      - key: {{ $v.storage.object.credentials.gcpKeyFileKey }}
        path: key.json
{{- end }}
{{- if .recipes }}
- name: recipes
  configMap:
    name: {{ .recipes }}
    items:
      - key: {{ .recipeKey }}
        path: {{ .recipeFile }}
{{- end }}
{{- end }}

{{- define "fmstack.rayVolumeMounts" -}}
{{- $v := .ctx.Values -}}
- name: tmp
  mountPath: /tmp
{{- if eq $v.storage.type "pvc" }}
- name: data
  mountPath: /data
{{- else if and $v.storage.object.credentials.existingSecret $v.storage.object.credentials.gcpKeyFileKey }}
- name: gcp-key
  mountPath: /var/run/secrets/fmstack/gcp
  readOnly: true
{{- end }}
{{- if .recipes }}
- name: recipes
  mountPath: /etc/fmstack/recipes
  readOnly: true
{{- end }}
{{- end }}

{{/*
A Ray pod template (head or worker). Call with a dict:
  ctx, component (head|worker), workload (serve|train), container (ray-head|ray-worker),
  image, resources, gpus, apiKeys, ports (name -> number), serviceAccountToken,
  nodeSelector, tolerations, affinity, podAnnotations, recipes, recipeKey, recipeFile.
*/}}
{{- define "fmstack.rayPodTemplate" -}}
{{- $v := .ctx.Values -}}
metadata:
  labels:
    {{- include "fmstack.podLabels" (dict "ctx" .ctx "component" .component "workload" .workload) | nindent 4 }}
  {{- with .podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  automountServiceAccountToken: {{ .serviceAccountToken }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "fmstack.podSecurityContext" .ctx | nindent 4 }}
  containers:
    - name: {{ .container }}
      image: {{ .image }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      ports:
        {{- range $name, $port := .ports }}
        - name: {{ $name }}
          containerPort: {{ $port }}
          protocol: TCP
        {{- end }}
      env:
        {{- include "fmstack.rayEnv" (dict "ctx" .ctx "apiKeys" .apiKeys "serve" (eq (.workload | default "") "serve")) | nindent 8 }}
      resources:
        {{- include "fmstack.resources" (dict "resources" .resources "gpus" .gpus) | nindent 8 }}
      securityContext:
        {{- include "fmstack.containerSecurityContext" .ctx | nindent 8 }}
      volumeMounts:
        {{- include "fmstack.rayVolumeMounts" . | nindent 8 }}
      lifecycle:
        preStop:
          exec:
            command: [/bin/sh, -c, ray stop]
  volumes:
    {{- include "fmstack.rayVolumes" . | nindent 4 }}
  {{- with .nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Ports of the Ray containers (the project's fixed port numbers). */}}
{{- define "fmstack.headPorts" -}}
{{- $ports := dict "gcs-server" 6379 "dashboard" 8265 "client" 10001 "metrics" 8080 }}
{{- if .serve }}{{ $_ := set $ports "serve" 8000 }}{{ end }}
{{- toJson $ports }}
{{- end }}

{{/* The head's ray start params: the chart's, then the user's. A serving head takes no
replicas (num-cpus 0), so the autoscaler adds workers for them; a job's head runs its driver.
Call with (dict "ctx" $ "serve" true). */}}
{{- define "fmstack.headStartParams" -}}
{{- $params := dict "dashboard-host" "0.0.0.0" "metrics-export-port" "8080" }}
{{- if .serve }}{{ $_ := set $params "num-cpus" "0" }}{{ end }}
{{- range $k, $val := .ctx.Values.head.rayStartParams }}{{ $_ := set $params $k (toString $val) }}{{ end }}
{{- toYaml $params }}
{{- end }}

{{- define "fmstack.autoscalerOptions" -}}
upscalingMode: {{ .Values.autoscaler.upscalingMode }}
idleTimeoutSeconds: {{ .Values.autoscaler.idleTimeoutSeconds }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
resources:
  {{- include "fmstack.resources" (dict "resources" .Values.autoscaler.resources "gpus" 0) | nindent 2 }}
securityContext:
  {{- include "fmstack.containerSecurityContext" . | nindent 2 }}
# KubeRay mounts /tmp/ray (its log volume) into the sidecar; the rest of /tmp is shared with the head.
volumeMounts:
  - name: tmp
    mountPath: /tmp
env:
  - name: XDG_CACHE_HOME
    value: /tmp/.cache
{{- end }}
