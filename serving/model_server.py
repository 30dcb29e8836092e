"""The model deployment: one per variant, serving one loaded model per replica.

Everything that can change while serving arrives through `reconfigure(user_config)`: the model
reference, a pinned registry version, batching, threads. A new model loads beside the old one
(in a thread, while requests keep being answered) and then replaces it; a model that fails to
load leaves the old one serving and is reported by `info()`. Replicas that serve a registry
alias also watch it and reload in place when it moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from ray import serve

from serving import metrics
from serving.inference import Generation, classify_texts, embed_texts
from training import LoadedModel, load_model, quantize_int8, try_compile_classifier
from training.hardware import on_own_thread

logger = logging.getLogger("ray.serve")
T = TypeVar("T")


@dataclasses.dataclass
class Served:
    """The model a replica answers with, and where it came from."""

    loaded: LoadedModel
    ref: str
    """What the config asked for (`models:/sentiment@production`, a directory, ...)."""
    version: str
    """`name/3` for a registry version, else the directory's name."""
    registry_version: int | None
    loaded_at: float
    options: tuple[str, bool] = ("float32", False)
    """What it was loaded with: `load_served`'s dtype and compile."""
    compile_error: str | None = None
    """Why a model asked to compile runs eagerly instead."""


def load_served(
    ref: str,
    registry: str | None,
    version: int | None,
    dtype: str,
    compile: bool = False,
) -> Served:
    """Load `ref` (a registry reference, directory, URI or packaged name), checksums verified.

    `version` pins a registry version of the referenced model (promotion sets it); `compile`
    runs a classifier through torch.compile, or eagerly, saying why, where it cannot (a model
    that is no classifier, a node without a C++ compiler): slower, but serving."""
    from cluster.registry import ModelRef, Registry, default_root, is_model_ref, parse_ref

    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else None
    if is_model_ref(ref):
        parsed = parse_ref(ref)
        reg = Registry(registry or default_root())
        target = reg.get(ModelRef(parsed.name, version=version) if version else parsed)
        loaded = load_model(reg.resolve(target.ref), dtype=torch_dtype)
        name, registry_version = f"{target.name}/{target.version}", target.version
    else:
        loaded = load_model(ref, dtype=torch_dtype)
        name, registry_version = loaded.path.name, None
    if dtype == "int8":
        loaded = quantize_int8(loaded)
    compile_error = None
    if compile:
        compiled, compile_error = try_compile_classifier(loaded)
        if compiled is None:  # eager still works
            logger.error("%s runs eagerly: compiling it failed: %s", name, compile_error)
        loaded = compiled or loaded
    return Served(loaded, ref, name, registry_version, time.time(), (dtype, compile), compile_error)


def fallback_versions(ref: str, registry: str | None, failed: int | None) -> list[int]:
    """What a starting replica may serve when version `failed` of `ref` does not load: the
    version its alias names now, then those it named before, newest first."""
    from cluster.registry import Registry, default_root, is_model_ref, parse_ref

    if not is_model_ref(ref):
        return []
    parsed = parse_ref(ref)
    if parsed.alias is None:
        return []
    reg = Registry(registry or default_root())
    now = reg.aliases(parsed.name).get(parsed.alias)
    before = [int(e["version"]) for e in reversed(reg.alias_history(parsed.name, parsed.alias))]
    versions: list[int] = []
    for version in (now, *before):
        if version is not None and version != failed and version not in versions:
            versions.append(version)
    return versions


def alias_target(ref: str, registry: str | None) -> int | None:
    """The version a `models:/name@alias` reference points at now; None for anything else."""
    from cluster.registry import Registry, default_root, is_model_ref, parse_ref

    if not is_model_ref(ref):
        return None
    parsed = parse_ref(ref)
    if parsed.alias is None:
        return None
    return Registry(registry or default_root()).aliases(parsed.name).get(parsed.alias)


class ComputeThread:
    """Runs a replica's torch work: every forward pass on one long-lived thread, and model loads
    on threads that end with them (`training.hardware.on_own_thread` says why)."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the forward-pass thread, after the passes queued before it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def run_once(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a thread of its own (loads take seconds, and must not hold up the
        passes)."""
        return await asyncio.to_thread(on_own_thread, fn, *args)


class BatchGate:
    """Holds requests back from a `@serve.batch` method while one of its batches runs.

    Serve's batcher forms the next batch from whatever arrives within `batch_wait_timeout_s`,
    even while the previous batch is still running. A compute-bound model then runs a queue of
    batches of one or two requests under load (measured: a mean of 1.2 at 32 concurrent
    requests). Held here instead, everything that arrives during a forward pass enters the
    batcher together when it ends and forms one batch at once: waiting `batch_wait_timeout_s`
    for more would leave the model idle. When nothing was held, the configured wait applies
    unless the last `QUIET_BATCHES` batches each ran one request alone: at such a quiet replica
    (one client, light traffic) the wait would find no one to batch with and add itself to
    every request.
    """

    QUIET_BATCHES = 8

    def __init__(self, batcher: Any, wait_s: float = 0.005) -> None:
        self._batcher = batcher
        self.wait_s = wait_s
        self._idle = asyncio.Event()
        self._idle.set()
        self._held = 0
        self._alone = 0  # consecutive batches of one request, up to the last one

    async def admit(self) -> None:
        if self._idle.is_set():
            return
        self._held += 1
        try:
            await self._idle.wait()
        finally:
            self._held -= 1

    @contextlib.asynccontextmanager
    async def running(self, requests: int) -> AsyncIterator[None]:
        """Around a batch of `requests` requests."""
        self._idle.clear()
        try:
            yield
        finally:
            # Read by the batcher when the next request reaches it, after this.
            self._alone = self._alone + 1 if requests == 1 else 0
            quiet = self._alone >= self.QUIET_BATCHES
            wait = 0.0 if self._held or quiet else self.wait_s
            self._batcher.set_batch_wait_timeout_s(wait)
            self._idle.set()


class ModelServer:
    """A Serve deployment class; `serving.app` binds one per variant."""

    def __init__(self, variant: str, registry: str | None) -> None:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        self.variant = variant
        self.registry = registry
        self._served: Served | None = None
        self._settings: dict[str, Any] = {}
        self._switch_lock = asyncio.Lock()
        self._failed: dict[str, str] = {}  # version or ref -> why it did not load
        self._last_error: str | None = None
        self._watcher: asyncio.Task | None = None
        self._batches = 0
        self._batched_requests = 0
        self._inference_seconds = 0.0
        self._batch_sizes: list[int] = []
        self._metrics = metrics.ModelMetrics(variant)
        self._classify_gate = BatchGate(self._classify_batch)
        self._embed_gate = BatchGate(self._embed_batch)
        self._compute = ComputeThread(f"fmstack-{variant}")

    # ------------------------------------------------------------ configuration

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new configuration; load the model it names if that differs from the current
        one. Before any model is loaded a failure is raised (the replica does not start), unless
        it was a pinned version and the version the alias names loads instead; afterwards it is
        recorded and the old model keeps serving."""
        settings = dict(user_config)
        # OpenMP's thread count is per thread: set it where the passes run.
        await self._compute.run(torch.set_num_threads, int(settings.get("threads", 1)))
        size = int(settings.get("max_batch_size", 16))
        wait = float(settings.get("batch_wait_timeout_s", 0.005))
        for gate, method in (
            (self._classify_gate, self._classify_batch),
            (self._embed_gate, self._embed_batch),
        ):
            batcher: Any = method  # @serve.batch adds the setters
            batcher.set_max_batch_size(size)
            batcher.set_batch_wait_timeout_s(wait)
            gate.wait_s = wait
        self._settings = settings
        await self._switch(settings["model"], settings.get("version"))
        if self._watcher is None and float(settings.get("watch_interval_s", 0)) > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _switch(self, ref: str, version: int | None) -> None:
        async with self._switch_lock:
            current = self._served
            # A new dtype or compile setting reloads the same model with it.
            if (
                current is not None
                and current.ref == ref
                and current.options == self._load_options()
            ):
                wanted = (
                    version
                    if version is not None
                    else await asyncio.to_thread(alias_target, ref, self.registry)
                )
                if wanted is None or wanted == current.registry_version:
                    return
                version = wanted
            elif version is None:
                # The version the alias names, so that a failure is recorded against it.
                with contextlib.suppress(Exception):  # the load below reports any error
                    version = await asyncio.to_thread(alias_target, ref, self.registry)
            key = f"{ref}#{version}"
            try:
                served = await self._compute.run_once(
                    load_served, ref, self.registry, version, *self._load_options()
                )
            except Exception as err:  # noqa: BLE001 - any load failure keeps the old model
                why = f"{type(err).__name__}: {err}"
                self._failed[key] = why
                self._last_error = (
                    f"could not load {ref}"
                    + (f" version {version}" if version else "")
                    + f": {why}"
                )
                self._metrics.load_failures.inc()
                logger.error("variant %s: %s", self.variant, self._last_error)
                if current is None:
                    # A replica starting (an upscale, a restart) under a pin or an alias whose
                    # version does not load serves the alias's latest version that does, as the
                    # running replicas keep their model: a bad version never takes capacity away.
                    fallback = await self._fallback(ref, version)
                    if fallback is None:
                        raise RuntimeError(self._last_error) from err
                    self._install(fallback)
                return
            self._failed.pop(key, None)
            self._last_error = None
            self._install(served)

    async def _fallback(self, ref: str, failed: int | None) -> Served | None:
        """`ref` at the newest version its alias names or named that loads; None if none does."""
        try:
            versions = await asyncio.to_thread(fallback_versions, ref, self.registry, failed)
        except Exception as err:  # noqa: BLE001 - the first failure is the one reported
            logger.error("variant %s: cannot read the registry: %s", self.variant, err)
            return None
        for version in versions:
            if f"{ref}#{version}" in self._failed:
                continue
            try:
                return await self._compute.run_once(
                    load_served, ref, self.registry, version, *self._load_options()
                )
            except Exception as err:  # noqa: BLE001 - try the next one
                self._failed[f"{ref}#{version}"] = f"{type(err).__name__}: {err}"
                logger.error(
                    "variant %s: %s version %s also failed: %s", self.variant, ref, version, err
                )
        return None

    def _load_options(self) -> tuple[str, bool]:
        """`load_served`'s dtype and compile, from the settings."""
        return self._settings.get("dtype", "float32"), bool(self._settings.get("compile"))

    def _install(self, served: Served) -> None:
        self._served = served
        self._metrics.set_version(served.version)
        logger.info("variant %s now serves %s", self.variant, served.version)

    async def _watch(self) -> None:
        """Follow a registry alias: reload when it points at a version not yet tried."""
        while True:
            await asyncio.sleep(float(self._settings.get("watch_interval_s", 5.0)) or 5.0)
            served = self._served
            if served is None:
                continue
            try:
                target = await asyncio.to_thread(alias_target, served.ref, self.registry)
            except Exception as err:  # noqa: BLE001 - a registry hiccup must not kill the watcher
                logger.warning("variant %s: cannot read the registry: %s", self.variant, err)
                continue
            if target is None or target == served.registry_version:
                continue
            if f"{served.ref}#{target}" in self._failed:
                continue
            await self._switch(served.ref, target)

    def check_health(self) -> None:
        """Serve's periodic health check; also re-reports the loaded version, since Ray's agent
        only exports gauges recorded since its last export."""
        if self._served is None:
            raise RuntimeError(self._last_error or "no model loaded")
        self._metrics.set_version(self._served.version)

    # ------------------------------------------------------------ inference

    def _model(self, task: str | tuple[str, ...]) -> Served:
        served = self._served
        if served is None:
            raise RuntimeError(self._last_error or "no model loaded")
        tasks = (task,) if isinstance(task, str) else task
        if served.loaded.task not in tasks:
            raise TaskMismatch(self.variant, served.loaded.task, tasks)
        return served

    def _answer(self, served: Served, result: Any) -> dict[str, Any]:
        return {"result": result, "variant": self.variant, "version": served.version}

    async def classify(self, texts: list[str]) -> dict[str, Any]:
        """Per text: label, score and class probabilities; batched with concurrent requests."""
        self._model("classification")
        await self._classify_gate.admit()
        return await self._classify_batch(texts)

    async def embed(self, texts: list[str], normalize: bool = True) -> dict[str, Any]:
        self._model(("classification", "encoder", "masked_lm", "causal_lm"))
        await self._embed_gate.admit()
        return await self._embed_batch((texts, normalize))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _classify_batch(self, requests: list[list[str]]) -> list[dict[str, Any]]:
        served = self._model("classification")
        flat = [t for texts in requests for t in texts]
        async with self._classify_gate.running(len(requests)):
            results = await self._run_batch(
                len(requests),
                classify_texts,
                served.loaded,
                flat,
                self._max_length(),
                int(self._settings.get("forward_batch_size", 16)),
            )
        return [self._answer(served, part) for part in _split(results, requests)]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, requests: list[tuple[list[str], bool]]) -> list[dict[str, Any]]:
        served = self._model(("classification", "encoder", "masked_lm", "causal_lm"))
        answers: list[dict[str, Any]] = []
        async with self._embed_gate.running(len(requests)):
            for normalize in (True, False):  # one forward pass per normalisation choice
                group = [texts for texts, n in requests if n is normalize]
                if not group:
                    continue
                flat = [t for texts in group for t in texts]
                vectors = await self._run_batch(
                    len(group), embed_texts, served.loaded, flat, self._max_length(), normalize
                )
                answers.extend(self._answer(served, part) for part in _split(vectors, group))
        # Put answers back in request order.
        order = [i for n in (True, False) for i, (_, m) in enumerate(requests) if m is n]
        result: list[dict[str, Any]] = [{}] * len(requests)
        for i, answer in zip(order, answers, strict=True):
            result[i] = answer
        return result

    async def _run_batch(self, requests: int, fn: Any, *args: Any) -> Any:
        self._batches += 1
        self._batched_requests += requests
        self._batch_sizes = (self._batch_sizes + [requests])[-1000:]
        self._metrics.batch_size.observe(requests)
        start = time.perf_counter()
        try:
            return await self._compute.run(fn, *args)
        finally:
            elapsed = time.perf_counter() - start
            self._inference_seconds += elapsed
            self._metrics.inference_seconds.observe(elapsed)

    def _max_length(self) -> int:
        return int(self._settings.get("max_length", 128))

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """The whole generated text at once."""
        served = self._model("causal_lm")
        gen = Generation(served.loaded, **request)
        # Token by token, so that concurrent generations take turns on the compute thread.
        while not gen.finish_reason:
            await self._compute.run(gen.step)
        return self._answer(
            served, {"text": gen.text, "tokens": gen.tokens, "finish_reason": gen.finish_reason}
        )

    async def generate_stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Text pieces as they are generated, then a final summary."""
        served = self._model("causal_lm")
        gen = Generation(served.loaded, **request)
        while not gen.finish_reason:
            piece = await self._compute.run(gen.step)
            if piece:
                yield {"token": piece}
        yield self._answer(
            served, {"text": gen.text, "tokens": gen.tokens, "finish_reason": gen.finish_reason}
        )

    # ------------------------------------------------------------ introspection

    def info(self) -> dict[str, Any]:
        """What this replica serves, how it got there, and its batching so far."""
        served = self._served
        sizes = self._batch_sizes
        base: dict[str, Any] = {
            "variant": self.variant,
            "loaded": served is not None,
            "last_error": self._last_error,
            "batches": self._batches,
            "batched_requests": self._batched_requests,
            "inference_seconds": self._inference_seconds,
            "max_batch_size_seen": max(sizes, default=0),
            "mean_batch_size": sum(sizes) / len(sizes) if sizes else 0.0,
        }
        if served is None:
            return base
        manifest = served.loaded.manifest
        return {
            **base,
            "model": served.ref,
            "version": served.version,
            "dtype": served.options[0],
            "compiled": served.options[1] and served.compile_error is None,
            "compile_error": served.compile_error,
            "task": served.loaded.task,
            "labels": served.loaded.label_names,
            "parameters": served.loaded.parameters,
            "metrics": manifest.get("metrics", {}),
            "lineage": manifest.get("lineage", {}),
            "loaded_at": served.loaded_at,
        }


class TaskMismatch(ValueError):
    def __init__(self, variant: str, task: str, wanted: tuple[str, ...]) -> None:
        super().__init__(
            f"model: variant '{variant}' serves a {task} model; this endpoint needs "
            f"{' or '.join(wanted)}"
        )


def _split(flat: list[Any], requests: list[Any]) -> list[list[Any]]:
    parts, start = [], 0
    for texts in requests:
        parts.append(flat[start : start + len(texts)])
        start += len(texts)
    return parts
