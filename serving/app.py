"""The Serve application: a FastAPI ingress that validates, authenticates and routes, in front of
one `ModelServer` deployment per variant.

`build_app` is the application builder that a Serve config names
(`import_path: serving.app:build_app`, `args:` the serving config).
"""

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import metrics, routing
from serving.auth import AuthError, Keys
from serving.config import (
    LimitsConfig,
    RouteConfig,
    ServeConfig,
    VariantConfig,
    parse_serve_config,
)
from serving.model_server import ModelServer
from serving.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Prediction,
    PromoteRequest,
)

INGRESS = "Ingress"
SHADOW_LEDGER = "ShadowLedger"
INFO_TIMEOUT_S = 5.0
"""How long `/readyz` and `/v1/models` wait for a variant's replica to describe itself."""
REPLICA_ATTEMPTS = 3
"""Tries of a model call whose replica dies or becomes unreachable while answering it."""

logger = logging.getLogger("ray.serve")
T = TypeVar("T")


class ApiError(Exception):
    """A request the server refuses; becomes `{"error": {type, message}}` with `status`."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, **extra}}
    return JSONResponse(body, status_code=status)


def _validation_message(err: RequestValidationError) -> tuple[int, str, list[dict[str, Any]]]:
    details, lines = [], []
    for e in err.errors():
        if e["type"] == "json_invalid":
            return 400, "the body is not valid JSON: " + str(e.get("ctx", {}).get("error", "")), []
        where = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
        lines.append(f"{where}: {e['msg']}")
        details.append({"field": where, "problem": e["msg"]})
    return 422, "; ".join(lines), details


api = FastAPI(
    title="fmstack",
    summary="Text classification, embeddings and generation from fmstack's registered models.",
    version="1",
    responses={
        400: {"model": ErrorResponse},
        401: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)


VARIANT_HEADER = "x-fmstack-variant"
"""Response header naming the variant that answered (also the `variant` label of metrics)."""
_ENDPOINTS = {"classify", "embed", "generate", "models", "promote"}


@functools.cache
def _metrics() -> metrics.IngressMetrics:
    return metrics.IngressMetrics()  # one per ingress replica process


class _RecordRequests:
    """ASGI middleware: counts every /v1 request by route, variant and status, and times it to
    the start of the response (the first byte of a stream). Plain ASGI rather than Starlette's
    `BaseHTTPMiddleware`, which runs each request in an extra task and copies its body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or "/v1/" not in path:
            await self.app(scope, receive, send)
            return
        endpoint = path.rstrip("/").rsplit("/", 1)[-1]
        route = endpoint if endpoint in _ENDPOINTS else "other"
        start = time.perf_counter()
        recorded = False

        async def record_start(message: dict) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                headers = dict(message.get("headers") or [])
                variant = headers.get(VARIANT_HEADER.encode(), b"none").decode()
                _metrics().record(route, variant, message["status"], time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, record_start)
        except Exception:
            if not recorded:  # the server error handler outside answers 500
                _metrics().record(route, "none", 500, time.perf_counter() - start)
            raise


api.add_middleware(_RecordRequests)


@api.exception_handler(ApiError)
async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    response = _error(err.status, err.kind, err.message)
    response.headers.update(err.headers or {})
    return response


@api.exception_handler(AuthError)
async def _unauthorized(_: Request, err: AuthError) -> JSONResponse:
    response = _error(err.status, "unauthorized" if err.status == 401 else "forbidden", err.message)
    if err.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in content_type:
        # FastAPI reads a body of any other type as plain bytes, and then finds no object.
        return _error(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'}: send the body as JSON with "
            "Content-Type: application/json",
        )
    status, message, details = _validation_message(err)
    return _error(status, "invalid_request", message, details=details)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    message = str(err.detail)
    if err.status_code == 400 and "parsing the body" in message:
        message = "the body could not be read: send UTF-8 JSON with Content-Type application/json"
    kinds = {404: "not_found", 405: "method_not_allowed"}
    return _error(err.status_code, kinds.get(err.status_code, "invalid_request"), message)


@api.exception_handler(Exception)
async def _internal(_: Request, err: Exception) -> JSONResponse:
    # Starlette's outermost middleware calls this, sends the response, then re-raises for the log.
    return _error(500, "internal_error", f"{type(err).__name__}: {err}"[:500])


AuthHeader = Annotated[
    str | None, Header(description="`Bearer <key>` when the server has auth enabled")
]


# Helpers sit above the class: Serve serialises the ingress class when it is defined.
class ReplicaLost(Exception):
    def __init__(self, variant: str) -> None:
        super().__init__(
            f"variant '{variant}' lost its model replica while answering; it is being replaced"
        )


async def retry_lost_replicas(variant: str, call: Callable[[], Awaitable[T]]) -> T:
    """`await call()`, repeated when the model replica answering it dies or becomes unreachable
    (up to `REPLICA_ATTEMPTS` tries in all; then `ReplicaLost`). Inference has no side effects,
    so a repeat is safe; Serve's router has by then taken the replica out of rotation and holds
    the repeat until a live replica, or the replacement, takes it."""
    for attempt in range(1, REPLICA_ATTEMPTS + 1):
        try:
            return await call()
        except RayActorError as err:
            if attempt == REPLICA_ATTEMPTS:
                raise ReplicaLost(variant) from err
            logger.warning(
                "variant %s: a replica was lost during a request (%s); trying again",
                variant,
                type(err).__name__,
            )
            await asyncio.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


def _stream_event(variant: str, event: dict[str, Any]) -> str:
    if "token" in event:
        return f"data: {json.dumps(event)}\n\n"
    done = {**event["result"], "variant": variant, "version": event["version"]}
    return f"event: done\ndata: {json.dumps(done)}\n\n"


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for item in rest:
        yield item


def generation_request(body: GenerateRequest, limits: LimitsConfig) -> dict[str, Any]:
    """What a model replica is asked to generate, within the configured limits."""
    if len(body.prompt) > limits.max_text_chars:
        raise ApiError(
            422,
            "invalid_request",
            f"prompt: {len(body.prompt)} characters, at most {limits.max_text_chars}; shorten it",
        )
    max_new_tokens = body.max_new_tokens
    if "max_new_tokens" not in body.model_fields_set:
        max_new_tokens = min(max_new_tokens, limits.max_new_tokens)  # a default never breaks it
    if max_new_tokens > limits.max_new_tokens:
        raise ApiError(
            422,
            "invalid_request",
            f"max_new_tokens: at most {limits.max_new_tokens}, got {max_new_tokens}",
        )
    request = body.model_dump(include={"prompt", "temperature", "top_p", "stop", "seed"})
    return {**request, "max_new_tokens": max_new_tokens}


SHADOW_COUNTS = ("requests", "texts", "agreed", "errors")


def add_shadow_counts(
    stats: dict[str, dict[str, int]], variant: str, counts: dict[str, int]
) -> None:
    into = stats.setdefault(variant, dict.fromkeys(SHADOW_COUNTS, 0))
    for name, n in counts.items():
        into[name] += n


@serve.deployment(
    name=SHADOW_LEDGER,
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
)
class ShadowLedger:
    """Shadow comparisons counted by every ingress replica, totalled in one place so that
    `/v1/models` reports the application's agreement, not one ingress replica's. The counts
    restart with this replica; `fmstack_serve_shadow_comparisons_total` keeps the durable series."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, int]] = {}

    def record(self, variant: str, counts: dict[str, int]) -> None:
        add_shadow_counts(self.stats, variant, counts)

    def totals(self) -> dict[str, dict[str, int]]:
        return self.stats


# `serve.ingress` pickles the routes when the class is created: what its methods call must be
# defined above this line.
@serve.deployment(name=INGRESS)
@serve.ingress(api)
class Ingress:
    def __init__(
        self, config: dict[str, Any], models: dict[str, Any], ledger: Any | None = None
    ) -> None:
        self.config = parse_serve_config(config)
        self.models = models  # variant -> DeploymentHandle
        self.ledger = ledger  # the ShadowLedger's handle when a route shadows
        self.keys = Keys.from_config(self.config.auth)
        self.metrics = _metrics()
        self.rng = random.Random()
        self.tasks: dict[str, str] = {}
        self.shadow_stats: dict[str, dict[str, int]] = {}
        self._background: set[asyncio.Task] = set()

    # ------------------------------------------------------------ health and models

    @api.get("/healthz", tags=["health"])
    async def healthz(self) -> dict[str, str]:
        """The ingress is alive."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"], responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> JSONResponse:
        """Every variant has a model loaded; variants that scale to zero load on demand and are
        not asked, so that probes do not keep them awake."""
        on_demand = [
            name for name, v in self.config.variants.items() if v.autoscaling.min_replicas == 0
        ]
        infos = await self._infos([v for v in self.config.variants if v not in on_demand])
        missing = [v for v, info in infos.items() if not info.get("loaded")]
        if missing:
            return _error(503, "not_ready", f"variants not loaded: {', '.join(missing)}")
        return JSONResponse(
            {"status": "ready", "variants": sorted(infos), "on_demand": sorted(on_demand)}
        )

    @api.get("/v1/models", tags=["models"])
    async def list_models(self, authorization: AuthHeader = None) -> dict[str, Any]:
        """Variants, the versions they serve, lineage and metrics, and each route's policy."""
        self.keys.check(authorization, admin=False)
        infos = await self._infos()
        return {
            "variants": infos,
            "routes": {
                endpoint: self._route(endpoint).model_dump(mode="json")
                for endpoint in ("classify", "embed", "generate")
            },
            "shadow": await self._shadow_totals(),
        }

    async def _shadow_totals(self) -> dict[str, dict[str, int]]:
        """Every ingress replica's shadow comparisons; this replica's own if the ledger is
        unreachable."""
        if self.ledger is None:
            return self.shadow_stats
        try:
            totals: dict[str, dict[str, int]] = await asyncio.wait_for(
                self.ledger.totals.remote(), timeout=INFO_TIMEOUT_S
            )
        except Exception as err:  # noqa: BLE001 - the local counts still say something
            logger.warning("shadow ledger unreachable (%s); reporting this replica's counts", err)
            return self.shadow_stats
        return totals

    async def _infos(self, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """What each variant's replica reports (all variants by default). A variant without a
        live replica does not hold the answer up: it is reported as not loaded."""

        async def one(variant: str) -> dict[str, Any]:
            try:
                info = await asyncio.wait_for(
                    self.models[variant].info.remote(), timeout=INFO_TIMEOUT_S
                )
            except TimeoutError:
                why = f"no replica answered within {INFO_TIMEOUT_S:g} s (starting or scaled to 0)"
                return {"variant": variant, "loaded": False, "last_error": why}
            except Exception as err:  # noqa: BLE001 - reported, not raised
                return {"variant": variant, "loaded": False, "last_error": str(err)}
            if info.get("task"):
                self.tasks[variant] = info["task"]
            return info

        names = list(self.config.variants) if names is None else names
        results = await asyncio.gather(*(one(v) for v in names))
        return dict(zip(names, results, strict=True))

    # ------------------------------------------------------------ classify

    @api.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        tags=["inference"],
    )
    async def classify(
        self, body: ClassifyRequest, response: Response, authorization: AuthHeader = None
    ) -> ClassifyResponse:
        """Label each text, with its score and every class's probability."""
        self.keys.check(authorization, admin=False)
        self._check_texts(body.texts)
        route = self._route("classify")
        variant = await self._pick(route, body.model, "classification", "classify")
        answer = await self._call(variant, "classify", body.texts)
        self.metrics.texts.inc(len(body.texts), tags={"route": "classify", "variant": variant})
        predictions = [
            {**p, "variant": variant, "version": answer["version"]} for p in answer["result"]
        ]
        escalated = 0
        if route.policy == "cascade" and variant == route.variant:
            unsure = [
                i
                for i, p in enumerate(predictions)
                if routing.needs_fallback(route, body.model, p["score"])
            ]
            if unsure:
                assert route.fallback is not None
                fallback = await self._call(
                    route.fallback, "classify", [body.texts[i] for i in unsure]
                )
                for i, p in zip(unsure, fallback["result"], strict=True):
                    predictions[i] = {
                        **p,
                        "variant": route.fallback,
                        "version": fallback["version"],
                    }
                escalated = len(unsure)
                self.metrics.escalations.inc(
                    escalated, tags={"route": "classify", "variant": route.fallback}
                )
        if routing.should_shadow(route, variant, self.rng):
            self._mirror("classify", route, body.texts, predictions)
        response.headers[VARIANT_HEADER] = variant
        return ClassifyResponse(
            predictions=[Prediction(**p) for p in predictions],
            variant=variant,
            version=answer["version"],
            escalated=escalated,
        )

    def _mirror(
        self, endpoint: str, route: RouteConfig, texts: list[str], answers: list[dict]
    ) -> None:
        """Ask the shadow variant off the request path and count how often it agrees."""
        assert route.shadow is not None
        shadow = route.shadow.variant
        tags = {"route": endpoint, "variant": shadow}

        async def compare() -> None:
            try:
                result = await self.models[shadow].classify.remote(texts)
            except Exception:  # noqa: BLE001 - a failing shadow never affects answers
                self.metrics.shadow.inc(tags={**tags, "outcome": "error"})
                await self._count_shadow(shadow, {"requests": 1, "errors": 1})
                return
            agreed = sum(
                a["label"] == s["label"] for a, s in zip(answers, result["result"], strict=True)
            )
            if agreed:
                self.metrics.shadow.inc(agreed, tags={**tags, "outcome": "agree"})
            if len(texts) - agreed:
                self.metrics.shadow.inc(len(texts) - agreed, tags={**tags, "outcome": "disagree"})
            await self._count_shadow(shadow, {"requests": 1, "texts": len(texts), "agreed": agreed})

        task = asyncio.get_running_loop().create_task(compare())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _count_shadow(self, variant: str, counts: dict[str, int]) -> None:
        add_shadow_counts(self.shadow_stats, variant, counts)
        if self.ledger is not None:
            try:
                await self.ledger.record.remote(variant, counts)
            except Exception as err:  # noqa: BLE001 - counting never affects answers
                logger.warning("shadow ledger unreachable (%s); counted in this replica", err)

    # ------------------------------------------------------------ embed

    @api.post("/v1/embed", response_model=EmbedResponse, tags=["inference"])
    async def embed(
        self, body: EmbedRequest, response: Response, authorization: AuthHeader = None
    ) -> EmbedResponse:
        """A vector per text: the mean of the model's last hidden layer."""
        self.keys.check(authorization, admin=False)
        self._check_texts(body.texts)
        route = self._route("embed")
        variant = await self._pick(route, body.model, None, "embed")
        answer = await self._call(variant, "embed", body.texts, body.normalize)
        self.metrics.texts.inc(len(body.texts), tags={"route": "embed", "variant": variant})
        vectors = answer["result"]
        response.headers[VARIANT_HEADER] = variant
        return EmbedResponse(
            embeddings=vectors,
            dimensions=len(vectors[0]) if vectors else 0,
            variant=variant,
            version=answer["version"],
        )

    # ------------------------------------------------------------ generate

    @api.post(
        "/v1/generate",
        response_model=GenerateResponse,
        tags=["inference"],
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def generate(
        self, body: GenerateRequest, response: Response, authorization: AuthHeader = None
    ) -> Any:
        """Continue a prompt; with `stream: true`, tokens arrive as server-sent events
        (`data: {"token": ...}`), then one `event: done` with the whole answer."""
        self.keys.check(authorization, admin=False)
        request = generation_request(body, self.config.limits)
        route = self._route("generate")
        variant = await self._pick(route, body.model, "causal_lm", "generate")
        if not body.stream:
            answer = await self._call(variant, "generate", request)
            response.headers[VARIANT_HEADER] = variant
            return GenerateResponse(**answer["result"], variant=variant, version=answer["version"])
        stream = self._stream(variant, request)
        first = await anext(stream)  # surfaces over-capacity as 503 before the 200 is sent
        return StreamingResponse(
            _prepend(first, stream),
            media_type="text/event-stream",
            headers={
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                VARIANT_HEADER: variant,
            },
        )

    async def _stream(self, variant: str, request: dict) -> AsyncIterator[str]:
        handle = self.models[variant].options(stream=True)

        async def start() -> tuple[AsyncIterator[dict], dict]:
            events = handle.generate_stream.remote(request)
            return events, await anext(events)

        try:
            events, first = await retry_lost_replicas(variant, start)
        except BackPressureError:
            raise self._over_capacity(variant) from None
        except ReplicaLost:
            raise self._replica_unavailable(variant) from None
        yield _stream_event(variant, first)
        try:
            async for event in events:
                yield _stream_event(variant, event)
        except RayActorError:
            # The 200 and some tokens are out: end the stream with an error event.
            error = {"type": "replica_unavailable", "message": str(ReplicaLost(variant))}
            yield f"event: error\ndata: {json.dumps({'error': error})}\n\n"

    # ------------------------------------------------------------ admin

    @api.post("/v1/admin/promote", tags=["admin"])
    async def promote(
        self, body: PromoteRequest, authorization: AuthHeader = None
    ) -> dict[str, Any]:
        """Move a registry alias (gated on metrics); variants serving that alias reload it in
        place. Needs an admin key when auth is on."""
        self.keys.check(authorization, admin=True)
        from cluster.registry import PromotionRefused, Registry, RegistryError, default_root

        registry = Registry(self.config.registry or default_root())
        try:
            version = await asyncio.to_thread(
                registry.promote, body.model, body.version, body.alias, body.require
            )
        except PromotionRefused as err:
            raise ApiError(409, "promotion_refused", str(err)) from None
        except (RegistryError, ValueError) as err:
            raise ApiError(404 if "no " in str(err) else 422, "invalid_request", str(err)) from None
        return {"model": version.name, "version": version.version, "alias": body.alias}

    # ------------------------------------------------------------ helpers

    def _route(self, endpoint: str) -> RouteConfig:
        return routing.default_route(self.config, endpoint, self.tasks)

    async def _pick(
        self, route: RouteConfig, requested: str | None, task: str | None, endpoint: str
    ) -> str:
        if not self.tasks:
            await self._infos()
        try:
            variant = routing.pick_variant(route, requested, list(self.config.variants), self.rng)
        except routing.UnknownVariant as err:
            raise ApiError(400, "unknown_variant", str(err)) from None
        have = self.tasks.get(variant)
        if task and have and have != task:
            serving_it = [v for v, t in self.tasks.items() if t == task]
            raise ApiError(
                400,
                "wrong_task",
                f"model: variant '{variant}' serves a {have} model, which cannot {endpoint}; "
                f"use {', '.join(serving_it) or 'a variant that serves ' + task}",
            )
        return variant

    def _check_texts(self, texts: list[str]) -> None:
        limits = self.config.limits
        if len(texts) > limits.max_texts:
            raise ApiError(
                413,
                "too_many_texts",
                f"texts: {len(texts)} texts, at most {limits.max_texts} per request; "
                "split them over several requests",
            )
        for i, text in enumerate(texts):
            if not text.strip():
                raise ApiError(422, "invalid_request", f"texts[{i}]: empty text")
            if len(text) > limits.max_text_chars:
                raise ApiError(
                    413,
                    "text_too_long",
                    f"texts[{i}]: {len(text)} characters, at most {limits.max_text_chars}; "
                    "shorten or split it",
                )

    async def _call(self, variant: str, method: str, *args: Any) -> dict[str, Any]:
        try:
            return await retry_lost_replicas(
                variant, lambda: getattr(self.models[variant], method).remote(*args)
            )
        except BackPressureError:
            raise self._over_capacity(variant) from None
        except ReplicaLost:
            raise self._replica_unavailable(variant) from None

    def _replica_unavailable(self, variant: str) -> ApiError:
        return self._retry_later("replica_unavailable", str(ReplicaLost(variant)))

    def _over_capacity(self, variant: str) -> ApiError:
        return self._retry_later("over_capacity", f"variant '{variant}' is at capacity")

    def _retry_later(self, kind: str, why: str) -> ApiError:
        retry = self.config.limits.retry_after_s
        return ApiError(
            503, kind, f"{why}; retry in {retry} s", headers={"Retry-After": str(retry)}
        )


# ---------------------------------------------------------------- application builder


def user_config(variant: VariantConfig, version: int | None = None) -> dict[str, Any]:
    """What a model deployment may change in place (`reconfigure`)."""
    return {
        "model": variant.model,
        "version": version,
        "max_batch_size": variant.batching.max_batch_size,
        "batch_wait_timeout_s": variant.batching.batch_wait_timeout_s,
        "forward_batch_size": variant.batching.forward_batch_size,
        "threads": variant.threads,
        "dtype": variant.dtype,
        "compile": variant.compile,
        "max_length": variant.max_length,
        "watch_interval_s": variant.watch_interval_s,
    }


MODEL_REPLICA_ENV = {
    # OpenMP threads sleep once a forward pass ends instead of spinning: on cores shared with the
    # ingress and the HTTP proxy, the spinning took the CPU they needed for the next requests
    # (measured on 2 cores: about 30% less CPU per request in the model replica).
    "OMP_WAIT_POLICY": "PASSIVE",
    # ...but GNU OpenMP (PyTorch's on Linux) spins for about 0.1 ms first (its default is 3 ms):
    # within a forward pass the next parallel region starts sooner than a sleeping thread wakes,
    # and sleeping at once made a batch-1 pass of MiniLM about 1.5x slower.
    "GOMP_SPINCOUNT": "10000",
}
"""Environment of every model replica process (set when the process starts, before torch)."""


def deployment_options(config: ServeConfig, variant: str) -> dict[str, Any]:
    """Ray Serve options of one variant's model deployment."""
    v = config.variants[variant]
    autoscaling = v.autoscaling.model_dump(exclude_none=True)  # unset: Serve's defaults
    return {
        "name": config.deployment_name(variant),
        "autoscaling_config": autoscaling,
        "max_ongoing_requests": v.max_ongoing_requests,
        "max_queued_requests": v.max_queued_requests,
        "ray_actor_options": _actor_options(v),
        "user_config": user_config(v),
        "health_check_period_s": 5,
    }


def _actor_options(variant: VariantConfig) -> dict[str, Any]:
    extra = variant.ray_actor_options
    return {
        "num_cpus": variant.num_cpus,
        "num_gpus": variant.num_gpus,
        "runtime_env": {"env_vars": {**MODEL_REPLICA_ENV, **extra.env_vars}},
        # memory, resources, accelerator_type: only those the config sets
        **extra.model_dump(exclude={"env_vars"}, exclude_defaults=True),
    }


def ingress_options(config: ServeConfig) -> dict[str, Any]:
    return {
        "name": INGRESS,
        "num_replicas": config.ingress_replicas,
        "max_ongoing_requests": 256,
        "ray_actor_options": {"num_cpus": config.ingress_cpus},
    }


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application for a serving config (a Serve application builder)."""
    config = parse_serve_config(args, "serve application args")
    models = {
        name: serve.deployment(ModelServer)  # type: ignore[attr-defined]
        .options(**deployment_options(config, name))
        .bind(name, config.registry)
        for name in config.variants
    }
    shadowed = any(route.shadow for route in config.routes.values())
    ledger = ShadowLedger.bind() if shadowed else None  # type: ignore[attr-defined]
    ingress: Any = Ingress  # a Serve Deployment once decorated
    return ingress.options(**ingress_options(config)).bind(
        config.model_dump(mode="json"), models, ledger
    )
