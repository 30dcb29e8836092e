"""Serving metrics, named `fmstack_serve_*`, exported through Ray's metrics API from every
replica (Ray's metrics agent serves them to Prometheus with the other Ray and Serve series)."""

from __future__ import annotations

LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
BATCH_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]


class ModelMetrics:
    """Per model replica: batch sizes, inference time, loaded version, load failures."""

    def __init__(self, variant: str) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = {"variant": variant}
        self.batch_size = Histogram(
            "fmstack_serve_batch_size",
            description="Requests combined into one forward pass.",
            boundaries=BATCH_BUCKETS,
            tag_keys=("variant",),
        )
        self.batch_size.set_default_tags(tags)
        self.inference_seconds = Histogram(
            "fmstack_serve_inference_seconds",
            description="Time of one batched forward pass.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("variant",),
        )
        self.inference_seconds.set_default_tags(tags)
        self.load_failures = Counter(
            "fmstack_serve_model_load_failures_total",
            description="Model versions that failed to load (the previous one kept serving).",
            tag_keys=("variant",),
        )
        self.load_failures.set_default_tags(tags)
        self._loaded = Gauge(
            "fmstack_serve_model_loaded_info",
            description="1 for the model version each replica serves.",
            tag_keys=("variant", "model_version"),
        )
        self._variant = variant
        self._version: str | None = None

    def set_version(self, version: str) -> None:
        if self._version is not None and self._version != version:
            self._loaded.set(0, tags={"variant": self._variant, "model_version": self._version})
        self._loaded.set(1, tags={"variant": self._variant, "model_version": version})
        self._version = version


class IngressMetrics:
    """Per ingress replica: requests, texts, latency, cascade escalations, shadow agreement."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        self.requests = Counter(
            "fmstack_serve_requests_total",
            description="HTTP requests by route, variant and status code.",
            tag_keys=("route", "variant", "status"),
        )
        self.latency = Histogram(
            "fmstack_serve_request_seconds",
            description="Request latency at the ingress, by route and variant.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("route", "variant"),
        )
        self.texts = Counter(
            "fmstack_serve_texts_total",
            description="Texts answered, by route and the variant asked first.",
            tag_keys=("route", "variant"),
        )
        self.escalations = Counter(
            "fmstack_serve_cascade_escalations_total",
            description="Texts a cascade sent on to its fallback variant.",
            tag_keys=("route", "variant"),
        )
        self.shadow = Counter(
            "fmstack_serve_shadow_comparisons_total",
            description="Mirrored texts by shadow variant and outcome (agree, disagree, error).",
            tag_keys=("route", "variant", "outcome"),
        )

    def record(self, route: str, variant: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"route": route, "variant": variant, "status": str(status)})
        self.latency.observe(seconds, tags={"route": route, "variant": variant})
