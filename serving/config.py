"""The serving config: one YAML file describes the whole Serve application.

It names the model variants (each a registry reference, directory or packaged model, with its
replicas, autoscaling and batching), the routing policy of each endpoint, the request limits
and auth. `fmstack serve build` turns it into the Serve config that a RayService embeds; the
application builder (`serving.app:build_app`) reads the same mapping back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training import RecipeError, format_validation_error, read_recipe

ENDPOINTS = ("classify", "embed", "generate")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class AutoscalingConfig(_Config):
    """Ray Serve's `autoscaling_config` for one variant's replicas."""

    min_replicas: int = Field(default=1, ge=0)
    """Replicas kept when idle."""
    max_replicas: int = Field(default=2, ge=1)
    """Upper bound on replicas."""
    initial_replicas: int | None = Field(default=None, ge=0)
    """Replicas at start; default min_replicas."""
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    """Ongoing requests per replica that the autoscaler aims for."""
    upscale_delay_s: float = Field(default=5.0, ge=0)
    """How long load must stay high before replicas are added."""
    downscale_delay_s: float = Field(default=30.0, ge=0)
    """How long load must stay low before replicas are removed."""
    downscale_to_zero_delay_s: float | None = Field(default=None, ge=0)
    """How long a variant with `min_replicas: 0` stays idle on its last replica before it is
    removed; default downscale_delay_s."""
    look_back_period_s: float | None = Field(default=None, gt=0)
    """The window the load is averaged over; Serve's default 30 s."""
    upscaling_factor: float | None = Field(default=None, gt=0)
    """Damps (below 1) or speeds up (above 1) each upscaling decision."""
    downscaling_factor: float | None = Field(default=None, gt=0)
    """Damps (below 1) or speeds up (above 1) each downscaling decision."""

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be at least min_replicas "
                f"({self.min_replicas})"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        if self.downscale_to_zero_delay_s is not None and self.min_replicas > 0:
            raise ValueError(
                "downscale_to_zero_delay_s applies to min_replicas: 0 only; remove it or set "
                "min_replicas: 0"
            )
        return self


class BatchingConfig(_Config):
    max_batch_size: int = Field(default=16, ge=1, le=512)
    """Requests combined into one forward pass (`@serve.batch`); 1 turns batching off."""
    batch_wait_timeout_s: float = Field(default=0.005, ge=0, le=1)
    """How long the first request of a batch waits for others at an idle replica; not at a quiet
    one, where the last 8 batches each ran one request alone."""
    forward_batch_size: int = Field(default=16, ge=1, le=512)
    """Texts per forward pass: a batch's texts run shortest first, this many at a time, so that
    padding to the longest wastes little (16 is fastest for MiniLM-sized models on CPU; raise it
    on GPUs)."""


class ActorOptionsConfig(_Config):
    """Ray actor options of a variant's replicas beyond CPUs and GPUs."""

    memory: int | None = Field(default=None, gt=0)
    """Bytes of memory reserved per replica, for Ray's scheduler."""
    resources: dict[str, float] = {}
    """Custom Ray resources per replica, e.g. {"inference-node": 1}."""
    accelerator_type: str | None = None
    """Only schedule on nodes with this accelerator (Ray's names, e.g. `H100`)."""
    env_vars: dict[str, str] = {}
    """Environment variables of the replica processes (e.g. object-storage settings for the
    registry); secrets belong in the pod's environment, not here."""


class VariantConfig(_Config):
    """One model deployment (`full`, `distilled`, ...)."""

    model: str
    """What to serve: a registry reference (`models:/sentiment@production`, `models:/x/3`), an
    exported directory or URI, or a packaged model (`minilm`, `smollm2`)."""
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    """Replica bounds and autoscaling targets."""
    batching: BatchingConfig = BatchingConfig()
    """Dynamic batching."""
    max_ongoing_requests: int = Field(default=32, ge=1)
    """Requests one replica handles at once (Ray Serve)."""
    max_queued_requests: int = Field(default=64, ge=-1)
    """Requests queued per caller before new ones get 503; -1 is unbounded."""
    num_cpus: float = Field(default=1.0, gt=0)
    """CPUs reserved per replica (fractions allowed)."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per replica."""
    ray_actor_options: ActorOptionsConfig = ActorOptionsConfig()
    """Memory, custom resources, accelerator type and environment of the replicas."""
    threads: int = Field(default=1, ge=1)
    """torch intra-op threads per replica."""
    dtype: Literal["float32", "bfloat16", "int8"] = "float32"
    """Weights and activations; bfloat16 is faster on CPUs with AMX and on GPUs; int8 quantises
    the Linear layers dynamically (CPU only), e.g. for a distilled student: `make bench-distill`
    measures its accuracy next to float32."""
    compile: bool = False
    """Run classification through `torch.compile` (classifiers, float32 or bfloat16; embeddings
    stay eager): on CPUs a batch-1 pass is about a quarter faster. Each replica compiles when it
    loads a model (tens of seconds; Inductor caches the result on the node's disk) and needs a
    C++ compiler; a model that cannot compile is served eagerly, and `/v1/models` says why."""
    max_length: int = Field(default=128, ge=8)
    """Tokens per text; longer texts are truncated (classify, embed)."""
    watch_interval_s: float = Field(default=5.0, ge=0)
    """How often replicas check the registry alias and reload in place when it moved; 0 off."""

    @model_validator(mode="after")
    def _compile_needs_float(self) -> VariantConfig:
        if self.compile and self.dtype == "int8":
            raise ValueError(
                "compile: dynamic int8 layers do not compile (they broke the graph at every "
                "layer, ran slower and answered differently); use compile with float32 or "
                "bfloat16, or set compile: false"
            )
        return self


class ShadowConfig(_Config):
    variant: str
    """The candidate variant that receives mirrored requests."""
    sample: float = Field(default=1.0, gt=0, le=1)
    """Share of requests mirrored."""


class RouteConfig(_Config):
    """How an endpoint picks the variant that answers when the request says `auto`."""

    policy: Literal["fixed", "weighted", "cascade"] = "fixed"
    """`fixed`: one variant; `weighted`: a random split (canary); `cascade`: `variant` first,
    `fallback` when its top probability is below `threshold`."""
    variant: str | None = None
    """The variant (fixed) or the first one asked (cascade)."""
    weights: dict[str, float] = {}
    """Variant -> weight (weighted), e.g. {full: 90, candidate: 10}."""
    fallback: str | None = None
    """The variant asked when the first is unsure (cascade)."""
    threshold: float = Field(default=0.9, gt=0, le=1)
    """Top-probability below which the cascade escalates."""
    shadow: ShadowConfig | None = None
    """Mirror a share of requests to a candidate off the request path; never changes answers."""

    @model_validator(mode="after")
    def _complete(self) -> RouteConfig:
        if self.policy in ("fixed", "cascade") and not self.variant:
            raise ValueError(f"policy {self.policy} needs `variant`")
        if self.policy == "cascade" and not self.fallback:
            raise ValueError("policy cascade needs `fallback` (the variant asked when unsure)")
        if self.policy == "weighted":
            if not self.weights or any(w < 0 for w in self.weights.values()):
                raise ValueError("policy weighted needs `weights`: variant -> non-negative weight")
            if sum(self.weights.values()) <= 0:
                raise ValueError("weights must not all be zero")
        return self

    def variants(self) -> set[str]:
        names = {self.variant, self.fallback, *self.weights}
        if self.shadow:
            names.add(self.shadow.variant)
        return {n for n in names if n}


class LimitsConfig(_Config):
    max_texts: int = Field(default=64, ge=1)
    """Texts per classify or embed request."""
    max_text_chars: int = Field(default=2000, ge=1)
    """Characters per text (and per prompt)."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Upper bound on generate's max_new_tokens."""
    retry_after_s: int = Field(default=1, ge=0)
    """`Retry-After` sent with 503 when a variant is over capacity or lost its replica."""


class LoggingConfig(_Config):
    """The replicas' logs (Serve's `logging_config` for the application)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level written to the replicas' logs."""
    access_log: bool = True
    """One line per request in every replica it passes (ingress and model); off, a replica
    spends less time per request, and errors are still logged."""


class AuthConfig(_Config):
    enabled: bool = False
    """Require `Authorization: Bearer <key>` on /v1; health endpoints stay open."""
    keys_env: str = "FMSTACK_API_KEYS"
    """Environment variable holding comma-separated API keys."""
    keys_file: str | None = None
    """File with one API key per line (e.g. a mounted Kubernetes secret)."""
    admin_keys_env: str = "FMSTACK_ADMIN_KEYS"
    """Environment variable holding comma-separated admin keys (promotion)."""
    admin_keys_file: str | None = None
    """File with one admin key per line."""


class HttpConfig(_Config):
    host: str = "127.0.0.1"
    """Address the Serve proxy binds (0.0.0.0 in a cluster)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Port of the Serve proxy."""


class ServeConfig(_Config):
    """The Serve application: variants, routes, limits, auth."""

    name: str = Field(default="fmstack", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    """Serve application name."""
    route_prefix: str = "/"
    """Where the application is mounted on the proxy."""
    registry: str | None = None
    """Registry root for `models:/` references; default `$FMSTACK_REGISTRY` or `runs/registry`."""
    http: HttpConfig = HttpConfig()
    """The Serve HTTP proxy (applies when Serve starts)."""
    variants: dict[str, VariantConfig]
    """Variant name -> model deployment."""
    routes: dict[Literal["classify", "embed", "generate"], RouteConfig] = {}
    """Endpoint -> routing policy; an endpoint without one uses the first variant that serves
    its task."""
    limits: LimitsConfig = LimitsConfig()
    """Request limits (each breach is a 4xx that says what to fix)."""
    auth: AuthConfig = AuthConfig()
    """API keys."""
    logging: LoggingConfig = LoggingConfig()
    """Log level and per-request access log of every replica."""
    ingress_cpus: float = Field(default=0.1, gt=0)
    """CPUs reserved per ingress replica."""
    ingress_replicas: int = Field(default=1, ge=1)
    """Ingress replicas (HTTP, validation, routing); more than one keeps the API answering while
    one restarts. Each counts its own shadow comparisons in `/v1/models`; the Prometheus series
    add them up."""

    @model_validator(mode="after")
    def _routes_name_variants(self) -> ServeConfig:
        if not self.variants:
            raise ValueError("variants: name at least one model deployment")
        for name in self.variants:
            if name in ("auto",) or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"variants.{name}: use letters, digits, - and _ (not 'auto')")
        for endpoint, route in self.routes.items():
            unknown = sorted(route.variants() - set(self.variants))
            if unknown:
                raise ValueError(
                    f"routes.{endpoint} names {', '.join(unknown)}, which is not among the "
                    f"variants ({', '.join(self.variants)})"
                )
            # Both compare class probabilities, which only classify has.
            if endpoint != "classify" and route.policy == "cascade":
                raise ValueError(
                    f"routes.{endpoint}: policy cascade needs class probabilities and works on "
                    "classify only; use fixed or weighted"
                )
            if endpoint != "classify" and route.shadow is not None:
                raise ValueError(
                    f"routes.{endpoint}.shadow: shadow traffic compares labels and works on "
                    "classify only; remove it"
                )
        return self

    def deployment_name(self, variant: str) -> str:
        return f"model-{variant}"


def parse_serve_config(data: dict[str, Any], source: str = "<dict>") -> ServeConfig:
    """Validate a serving config mapping; errors name each bad key and its fix."""
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, source)) from None


def load_serve_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ServeConfig:
    """Read a serving YAML (plus dotted-key overrides) into a `ServeConfig`."""
    return parse_serve_config(read_recipe(path, overrides), str(path))
