{{/* Labels of the Prometheus Operator objects: the chart's, `release` for kube-prometheus-stack's
selectors, and the user's. Call with (dict "ctx" $ "component" "monitoring"). */}}
{{- define "fmstack.monitoringLabels" -}}
{{ include "fmstack.labels" . }}
{{- with .ctx.Values.monitoring.release }}
release: {{ . }}
{{- end }}
{{- with .ctx.Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* One scrape endpoint on Ray's metrics export port. Ray's agent puts application metrics in
its `ray_` namespace; fmstack's series get their own names back, so alerts and dashboards use
`fmstack_*`. */}}
{{- define "fmstack.metricsEndpoint" -}}
- port: metrics
  path: /metrics
  interval: {{ .Values.monitoring.interval }}
  relabelings:
    - sourceLabels: [__meta_kubernetes_pod_label_ray_io_cluster]
      targetLabel: ray_cluster
    - sourceLabels: [__meta_kubernetes_pod_label_ray_io_node_type]
      targetLabel: ray_node_type
  metricRelabelings:
    - sourceLabels: [__name__]
      regex: ray_(fmstack_.*)
      targetLabel: __name__
      replacement: $1
      action: replace
{{- end }}
