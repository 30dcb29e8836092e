"""Serving benchmark: fmstack's `/v1/classify` on Ray Serve side by side with a plain server.

    .venv/bin/python -m benchmarks.serve --full REF --distilled REF
        [--threads 2] [--repeats 2] [--concurrency 1 8 32] [--eager] [--out DIR]

REF is an export directory or a registry reference such as `models:/sentiment@candidate`.

Cases, interleaved over rounds, each at every concurrency (one text per request, texts from the
full model's test split, sent to 127.0.0.1 by an asyncio client that keeps `concurrency`
requests in flight):

- `fmstack-full`, `fmstack-distilled`: the Serve application with dynamic batching
  (up to 32 requests, 5 ms wait) and `compile: true` (`--eager`: every variant without it);
- `fmstack-full-nobatch`, `fmstack-distilled-nobatch`: the same with `max_batch_size: 1`;
- `fmstack-full-nobatch-eager` (at concurrency 1 only): `fmstack-full-nobatch` without
  `compile`, so that the report separates Serve's request path from the faster forward pass;
- `fmstack-distilled-int8`: the distilled model served with `dtype: int8` (dynamic int8
  quantisation of its Linear layers; `make bench-distill` reports its accuracy);
- `fmstack-cascade`: no variant named, so the classify route's cascade answers: the distilled
  model first, the full model for texts it scores below 0.9; figure `escalated`, the share of
  requests the full model answered (`fmstack eval` tabulates it for every threshold);
- `plain-full`, `plain-distilled`: the same model behind a minimal FastAPI + transformers app
  under uvicorn (`benchmarks/plain_server.py`), one forward pass per request;
- `fmstack-full-x8`, `fmstack-distilled-x8` (at the highest concurrency only): clients that send
  8 texts a request, which share a request's fixed cost; figure texts/s besides QPS.

And once per round, `promotion`: under steady load (8 clients on the cascade), the full variant is
promoted to another registry version (the same weights registered twice) by redeploying with the
new version pinned in its `user_config`, as `fmstack serve promote` does; figures: seconds from the
redeploy call to the first answer from the new version, and failed requests meanwhile (must be 0).

Every model runs with `torch.set_num_threads(threads)` in one replica or process, and no server
writes a log line per request. Figures: QPS,
p50 and p99 latency (ms), errors, the mean time of one forward pass in the model's process
(tokenising included), and for fmstack the mean batch size the requests ran in (warm-up requests
included in both), and CPU time per request: the whole machine's and the model process's (for
the cascade, both replicas'). Targets: Serve adds at most 5 ms at p50 at concurrency 1
(fmstack-full-nobatch vs plain-full); with batching fmstack reaches at least 2x plain's QPS at
concurrency 32 at equal or better p99; distilled reaches at least 3x full's QPS.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Case, Figures, Report, ratio, run_interleaved
from benchmarks.pretrain import _cpu_info, _versions
from cluster import handover
from cluster.evaluate import held_out_split
from training import load_model

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REQUESTS = {1: 80, 8: 240, 32: 480}
TARGET_CONCURRENCY = 32
"""The concurrency at which the throughput targets apply."""
TEXTS_PER_BATCH_REQUEST = 8
BATCH_REQUESTS = 120
WARMUP = 16
LABELS = {
    "qps": "QPS",
    "texts_per_s": "texts/s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "errors": "errors",
    "forward_ms": "forward ms",
    "mean_batch": "mean batch",
    "cpu_ms": "CPU ms/req",
    "escalated": "escalated",
    "model_cpu_ms": "model CPU ms/req",
    "promote_to_serving_s": "promote to new version (s)",
    "failed_requests": "failed requests",
    "requests_during": "requests during",
}
APP = "bench"
PROMOTION_CLIENTS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _load(url: str, bodies: list[dict], concurrency: int, requests: int) -> Figures:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    counter = iter(range(WARMUP + requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            start = time.perf_counter()
            async with session.post(url, json=bodies[i % len(bodies)]) as response:
                await response.read()
                ok = response.status == 200
            if i >= WARMUP:
                latencies.append(time.perf_counter() - start)
                errors += not ok

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up requests run first, one at a time, and are not timed.
        for _ in range(WARMUP):
            i = next(counter)
            async with session.post(url, json=bodies[i % len(bodies)]) as response:
                await response.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = [t * 1000 for t in latencies]
    figures = {
        "qps": len(latencies) / elapsed,
        "p50_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 0.99),
        "errors": errors,
    }
    texts = sum(len(bodies[i % len(bodies)]["texts"]) for i in range(WARMUP, WARMUP + requests))
    if texts != requests:
        figures["texts_per_s"] = texts / elapsed
    return figures


def load_case(
    url: str, bodies: list[dict], concurrency: int, requests: int | None = None
) -> Callable[[], Figures]:
    def run() -> Figures:
        sent = requests or REQUESTS.get(concurrency, 240)
        return asyncio.run(_load(url, bodies, concurrency, sent))

    return run


Counters = tuple[int, int, float]
"""(forward passes, requests in them, seconds spent in them) since a model process started."""


def replica_counters(base: str, variant: str) -> Counters:
    """What the variant's replica has run so far, from `/v1/models`."""
    with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as response:
        info = json.load(response)["variants"][variant]
    return (
        int(info.get("batches", 0)),
        int(info.get("batched_requests", 0)),
        float(info.get("inference_seconds", 0.0)),
    )


def plain_counters(url: str) -> Counters:
    """What a plain server has run so far (one request per forward pass)."""
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
        stats = json.load(response)
    return stats["forward_passes"], stats["forward_passes"], stats["inference_seconds"]


def counted_case(
    load: Callable[[], Figures], counters: Callable[[], Counters], batching: bool
) -> Callable[[], Figures]:
    """A load case that also reports the mean time of one forward pass in the model process
    (tokenising included) and, where requests are batched, the mean batch size (warm-up
    requests included in both): the difference between a slower model and a longer path."""

    def run() -> Figures:
        passes, requests, seconds = counters()
        figures = dict(load())
        passes_after, requests_after, seconds_after = counters()
        if passes_after > passes:
            figures["forward_ms"] = 1000 * (seconds_after - seconds) / (passes_after - passes)
            if batching:
                figures["mean_batch"] = (requests_after - requests) / (passes_after - passes)
        return figures

    return run


def escalation_case(
    load: Callable[[], Figures], fallback_counters: Callable[[], Counters], requests: int
) -> Callable[[], Figures]:
    """A cascade's load case that also reports the share of its requests (one text each) that
    the fallback answered, from the fallback replica's count of requests (warm-up included)."""

    def run() -> Figures:
        before = fallback_counters()[1]
        figures = dict(load())
        figures["escalated"] = (fallback_counters()[1] - before) / requests
        return figures

    return run


def busy_cpu_ms() -> float:
    """CPU time the whole machine has spent busy since boot, in ms (all cores; guest time is
    already inside user time)."""
    import psutil

    t = psutil.cpu_times()
    busy = ("user", "nice", "system", "irq", "softirq", "steal")
    return 1000 * sum(getattr(t, field, 0.0) for field in busy)


def processes_cpu_ms(pids: Callable[[], list[int]]) -> float:
    """CPU time (user + system, all threads) of the given processes, in ms."""
    import psutil

    total = 0.0
    for pid in pids():
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += 1000 * (t.user + t.system)
    return total


def replica_pids(variants: tuple[str, ...]) -> Callable[[], list[int]]:
    """The processes of this benchmark's model replicas for `variants`, found by the title Ray
    gives a replica's worker process (`ray::ServeReplica:<app>:<deployment>`)."""
    import psutil

    titles = tuple(f"ServeReplica:{APP}:model-{v}" for v in variants)

    def find() -> list[int]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if any(cmdline.startswith(f"ray::{t}") for t in titles):
                found.append(proc.pid)
        return found

    return find


def cpu_case(
    load: Callable[[], Figures], model_pids: Callable[[], list[int]], requests: int
) -> Callable[[], Figures]:
    """A load case that also reports CPU time per request: the whole machine's (`cpu_ms`:
    server, client and everything else on it) and the model process's (`model_cpu_ms`). Their
    difference is what a request costs outside the forward passes, for every model alike; it
    is why a model that is N times cheaper does not serve N times the requests."""

    def run() -> Figures:
        machine, model = busy_cpu_ms(), processes_cpu_ms(model_pids)
        figures = dict(load())
        figures["cpu_ms"] = (busy_cpu_ms() - machine) / requests
        figures["model_cpu_ms"] = (processes_cpu_ms(model_pids) - model) / requests
        return figures

    return run


def _wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start_plain_server(model_dir: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.plain_server",
            "--model",
            model_dir,
            "--port",
            str(port),
            "--threads",
            str(threads),
        ],
        cwd=Path(__file__).resolve().parent.parent,
    )
    base = f"http://127.0.0.1:{port}"
    _wait_http(f"{base}/healthz")
    return process, base


def serving_config(
    full: str,
    distilled: str,
    threads: int,
    port: int,
    registry: str | None = None,
    compile: bool = True,
) -> dict[str, Any]:
    def variant(
        model: str, batch: int, dtype: str = "float32", compiled: bool = compile
    ) -> dict[str, Any]:
        return {
            "model": model,
            "dtype": dtype,
            "compile": compiled and dtype != "int8",
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "batching": {"max_batch_size": batch, "batch_wait_timeout_s": 0.005},
            "max_ongoing_requests": 64,
            "max_queued_requests": -1,
            "num_cpus": 0.1,
            "threads": threads,
            "watch_interval_s": 0,
        }

    variants = {
        "full": variant(full, 32),
        "full-nobatch": variant(full, 1),
        "distilled": variant(distilled, 32),
        "distilled-nobatch": variant(distilled, 1),
        "distilled-int8": variant(distilled, 32, "int8"),
    }
    if compile:
        variants["full-nobatch-eager"] = variant(full, 1, compiled=False)
    return {
        "name": APP,
        "registry": registry,
        "http": {"host": "127.0.0.1", "port": port},
        "variants": variants,
        "routes": {
            "classify": {
                "policy": "cascade",
                "variant": "distilled",
                "fallback": "full",
                "threshold": 0.9,
            },
        },
        "limits": {"max_texts": 64},
        # As the plain server, which uvicorn runs at log level warning: no line per request.
        "logging": {"access_log": False},
    }


def _post_ok(url: str, body: dict) -> bool:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status == 200
    except OSError:
        return False


def _served_version(base: str, variant: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as response:
            return json.loads(response.read())["variants"][variant].get("version")
    except (OSError, KeyError, ValueError):
        return None


def promotion_case(
    client: Any, base: str, bodies: list[dict], model: str, versions: tuple[int, int]
) -> Callable[[], Figures]:
    """Promote the full variant back and forth between two registry versions under load."""
    from serving import running_serve_config, with_pinned_version

    target = iter(versions[i % 2] for i in range(1, 1_000_000))

    def run() -> Figures:
        version = next(target)
        stop = threading.Event()
        counts = {"ok": 0, "failed": 0}
        lock = threading.Lock()

        def client_loop(offset: int) -> None:
            i = offset
            while not stop.is_set():
                ok = _post_ok(f"{base}/v1/classify", bodies[i % len(bodies)])
                with lock:
                    counts["ok" if ok else "failed"] += 1
                i += PROMOTION_CLIENTS

        workers = [
            threading.Thread(target=client_loop, args=(k,)) for k in range(PROMOTION_CLIENTS)
        ]
        for w in workers:
            w.start()
        try:
            time.sleep(1)
            pinned = with_pinned_version(
                running_serve_config(client.details()), APP, "model-full", version
            )
            started = time.perf_counter()
            client.deploy(pinned)
            wanted, deadline = f"{model}/{version}", time.monotonic() + 300
            while _served_version(base, "full") != wanted:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"full did not serve {wanted} within 300 s")
                time.sleep(0.1)
            seconds = time.perf_counter() - started
            time.sleep(1)
        finally:
            stop.set()
            for w in workers:
                w.join()
        return {
            "promote_to_serving_s": seconds,
            "failed_requests": counts["failed"],
            "requests_during": counts["ok"] + counts["failed"],
        }

    return run


def run_benchmark(
    full: str,
    distilled: str,
    *,
    threads: int = 2,
    repeats: int = 2,
    concurrency: tuple[int, ...] = (1, 8, 32),
    max_examples: int = 512,
    compile: bool = True,
    out_dir: str | Path = RESULTS_DIR,
) -> tuple[Report, Path, Path]:
    import ray

    from cluster.registry import Registry
    from serving import (
        LOCAL_SERVE_ENV,
        ServeClient,
        parse_serve_config,
        serve_config,
        side_ports_env,
    )
    from training.pretrain import start_local_ray

    started = time.time()
    load_start = os.getloadavg()
    dirs = {"full": handover.resolve_model(full), "distilled": handover.resolve_model(distilled)}
    models = {name: load_model(path) for name, path in dirs.items()}
    split = held_out_split([full, distilled], list(models.values()), "test", max_examples)
    params = {name: m.parameters for name, m in models.items()}
    del models
    bodies = [{"texts": [t]} for t in split.texts]

    # The full model registered twice, so that a promotion has another version to move to.
    registry_dir = tempfile.mkdtemp(prefix="fmstack-bench-registry-")
    registry = Registry(registry_dir)
    promoted = "bench-full"
    versions = (
        registry.register(str(dirs["full"]), promoted).version,
        registry.register(str(dirs["full"]), promoted).version,
    )
    registry.promote(promoted, versions[0], "production")

    plain = {name: start_plain_server(str(path), threads) for name, path in dirs.items()}
    env = {**LOCAL_SERVE_ENV, **side_ports_env(keep_defaults=False)}
    ctx = start_local_ray(2, env=env, include_dashboard=True, log_to_driver=False)
    client = ServeClient(f"http://{ctx.dashboard_url}")
    port = _free_port()
    try:
        cfg = parse_serve_config(
            serving_config(
                f"models:/{promoted}@production",
                str(dirs["distilled"]),
                threads,
                port,
                registry_dir,
                compile,
            )
        )
        client.deploy(serve_config(cfg))
        client.wait(cfg.name, timeout_s=600)
        base = f"http://127.0.0.1:{port}"
        cases = []
        for c in concurrency:
            group = f"concurrency {c}"
            sent = WARMUP + REQUESTS.get(c, 240)
            variants = [
                "full",
                "full-nobatch",
                "distilled",
                "distilled-nobatch",
                "distilled-int8",
                "cascade",
            ]
            if compile and c == 1:
                variants.insert(2, "full-nobatch-eager")
            for variant in variants:
                fm_bodies = (
                    bodies if variant == "cascade" else [{**b, "model": variant} for b in bodies]
                )
                # The cascade asks the distilled variant first, and the full one for some texts.
                served_by = ("distilled", "full") if variant == "cascade" else (variant,)
                load = cpu_case(
                    load_case(f"{base}/v1/classify", fm_bodies, c), replica_pids(served_by), sent
                )
                if variant == "cascade":
                    load = escalation_case(
                        load, functools.partial(replica_counters, base, "full"), sent
                    )
                cases.append(
                    Case(
                        f"fmstack-{variant}-c{c}",
                        counted_case(
                            load,
                            functools.partial(replica_counters, base, served_by[0]),
                            batching=True,
                        ),
                        group,
                        params={"concurrency": c, "variant": variant},
                    )
                )
            for name, (process, url) in plain.items():
                cases.append(
                    Case(
                        f"plain-{name}-c{c}",
                        counted_case(
                            cpu_case(
                                load_case(f"{url}/classify", bodies, c),
                                lambda pid=process.pid: [pid],
                                sent,
                            ),
                            functools.partial(plain_counters, url),
                            batching=False,
                        ),
                        group,
                        params={"concurrency": c, "model": name},
                    )
                )
        # Clients that send several texts a request share its fixed cost among them.
        top, k = max(concurrency), TEXTS_PER_BATCH_REQUEST
        multi = [{"texts": split.texts[i : i + k]} for i in range(0, len(split.texts) - k + 1, k)]
        for variant in ("full", "distilled"):
            cases.append(
                Case(
                    f"fmstack-{variant}-x{k}-c{top}",
                    counted_case(
                        cpu_case(
                            load_case(
                                f"{base}/v1/classify",
                                [{**b, "model": variant} for b in multi],
                                top,
                                BATCH_REQUESTS,
                            ),
                            replica_pids((variant,)),
                            WARMUP + BATCH_REQUESTS,
                        ),
                        functools.partial(replica_counters, base, variant),
                        batching=True,
                    ),
                    f"{k} texts per request, concurrency {top}",
                    params={"concurrency": top, "variant": variant, "texts_per_request": k},
                )
            )
        cases.append(
            Case(
                "promotion",
                promotion_case(client, base, bodies, promoted, versions),
                "promotion under load",
                params={"clients": PROMOTION_CLIENTS, "variant": "full"},
            )
        )
        results = run_interleaved(cases, repeats)
    finally:
        client.delete()
        ray.shutdown()
        shutil.rmtree(registry_dir, ignore_errors=True)
        for process, _ in plain.values():
            process.terminate()
            process.wait(30)

    found = [
        ratio(
            results,
            f"fmstack-full / plain-full, QPS at c{top}",
            f"fmstack-full-c{top}",
            f"plain-full-c{top}",
            "qps",
        ),
        ratio(
            results,
            f"fmstack-full / plain-full, p99 at c{top}",
            f"fmstack-full-c{top}",
            f"plain-full-c{top}",
            "p99_ms",
        ),
        ratio(
            results,
            f"fmstack-full-nobatch / plain-full, QPS at c{top}",
            f"fmstack-full-nobatch-c{top}",
            f"plain-full-c{top}",
            "qps",
        ),
        ratio(
            results,
            f"fmstack-distilled / fmstack-full, QPS at c{top}",
            f"fmstack-distilled-c{top}",
            f"fmstack-full-c{top}",
            "qps",
        ),
        ratio(
            results,
            f"fmstack-distilled-int8 / fmstack-full, QPS at c{top}",
            f"fmstack-distilled-int8-c{top}",
            f"fmstack-full-c{top}",
            "qps",
        ),
        ratio(
            results,
            f"fmstack-full / fmstack-distilled, model CPU per request at c{top}",
            f"fmstack-full-c{top}",
            f"fmstack-distilled-c{top}",
            "model_cpu_ms",
        ),
        ratio(
            results,
            f"fmstack-distilled / fmstack-full, texts/s with {k} texts a request at c{top}",
            f"fmstack-distilled-x{k}-c{top}",
            f"fmstack-full-x{k}-c{top}",
            "texts_per_s",
        ),
        ratio(
            results,
            f"fmstack-cascade / fmstack-full, QPS at c{top}",
            f"fmstack-cascade-c{top}",
            f"fmstack-full-c{top}",
            "qps",
        ),
        ratio(
            results,
            f"plain-distilled / plain-full, QPS at c{top}",
            f"plain-distilled-c{top}",
            f"plain-full-c{top}",
            "qps",
        ),
        ratio(
            results,
            f"fmstack-distilled / plain-distilled, QPS at c{top}",
            f"fmstack-distilled-c{top}",
            f"plain-distilled-c{top}",
            "qps",
        ),
    ]
    notes = target_notes(results, found, top)
    notes += [
        f"load: one text per request from the test split ({len(split.texts)} texts, cycled); "
        f"requests per case {', '.join(f'{REQUESTS[c]} at c{c}' for c in concurrency)}, after "
        f"{WARMUP} untimed warm-up requests ({BATCH_REQUESTS} of {TEXTS_PER_BATCH_REQUEST} "
        "texts each for the x8 cases); an asyncio client (aiohttp) on the same machine.",
        "compile: "
        + (
            "`compile: true` on every float32 variant (torch.compile, Inductor); the int8 "
            "variant, fmstack-full-nobatch-eager and the plain servers run eagerly."
            if compile
            else "off (`--eager`): every model runs eagerly."
        ),
        f"threads: torch.set_num_threads({threads}) in every model replica and plain server; "
        "one replica per variant; Serve's proxy and ingress share the same cores; no access "
        "log (Serve's `logging.access_log: false`, uvicorn at log level warning).",
        "forward passes: a replica runs all of them on one thread; the plain server, as a "
        "minimal FastAPI app does, loads its model on the main thread and runs each pass on "
        "FastAPI's thread pool, which leaves two OpenMP teams and makes a small pass wait for "
        "sleeping OpenMP threads (`training.hardware.on_own_thread`: about 2x on a batch-1 "
        "pass on 2 cores).",
        f"models: full {params['full']:,} parameters ({handover.describe_model(full)}), "
        f"distilled {params['distilled']:,} ({handover.describe_model(distilled)}).",
        f"load average (1 min) {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        f"the end, on {os.cpu_count()} CPUs.",
    ]
    report = Report(
        name="serve",
        title="serving benchmark",
        repeats=repeats,
        cases=results,
        ratios=found,
        meta={
            "machine": _cpu_info(),
            "versions": _versions(),
            "threads": threads,
            "compile": compile,
            "concurrency": list(concurrency),
            "requests": REQUESTS,
            "models": {"full": full, "distilled": distilled, "parameters": params},
            "wall_seconds": round(time.time() - started, 1),
        },
        notes=notes,
        labels=LABELS,
    )
    json_path, md_path = report.write(out_dir)
    print(report.markdown(), flush=True)
    print(f"wrote {json_path} and {md_path}", flush=True)
    return report, json_path, md_path


def _median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def target_notes(results: list, found: list, top: int) -> list[str]:
    by_name = {r.name: r for r in results}
    notes = []

    def median(case: str, figure: str) -> float | None:
        res = by_name.get(case)
        values = res.values(figure) if res else []
        return statistics.median(values) if values else None

    fm, plain = median("fmstack-full-nobatch-c1", "p50_ms"), median("plain-full-c1", "p50_ms")
    if fm is not None and plain is not None:
        added = fm - plain
        verdict = "PASS" if added <= 5 else "FAIL"
        note = (
            f"{verdict}: Serve adds at most 5 ms at p50 at concurrency 1 (fmstack-full-nobatch "
            f"{fm:.1f} ms - plain-full {plain:.1f} ms = {added:+.1f} ms)."
        )
        fm_forward = median("fmstack-full-nobatch-c1", "forward_ms")
        plain_forward = median("plain-full-c1", "forward_ms")
        if fm_forward is not None and plain_forward is not None:
            slower = fm_forward - plain_forward
            note += (
                f" Of that, {slower:+.1f} ms is a slower forward pass (a mean of "
                f"{fm_forward:.1f} ms in the replica, {plain_forward:.1f} ms in the plain server) "
                f"and {added - slower:+.1f} ms the longer request path (HAProxy, ingress, the "
                "call to the model replica)."
            )
        eager = median("fmstack-full-nobatch-eager-c1", "p50_ms")
        if eager is not None:
            note += (
                f" Without compile (fmstack-full-nobatch-eager): {eager:.1f} ms, "
                f"{eager - plain:+.1f} ms."
            )
        batched = median("fmstack-full-c1", "p50_ms")
        if batched is not None:
            note += (
                f" With batching on (fmstack-full): {batched:.1f} ms, {batched - plain:+.1f} ms."
            )
        notes.append(note)
    promotion = by_name.get("promotion")
    if promotion is not None and promotion.samples:
        failed = sum(promotion.values("failed_requests"))
        sent = sum(promotion.values("requests_during"))
        notes.append(
            f"{'PASS' if failed == 0 else 'FAIL'}: no failed request during a promotion "
            f"({failed:g} of {sent:g} over {len(promotion.samples)} promotion(s); the new "
            f"version answered after {_median_of(promotion.values('promote_to_serving_s')):.1f} s)."
        )
    by_label = {r.label: r for r in found}
    for label, target, higher in [
        (f"fmstack-full / plain-full, QPS at c{top}", 2.0, True),
        (f"fmstack-full / plain-full, p99 at c{top}", 1.0, False),
        (f"fmstack-distilled / fmstack-full, QPS at c{top}", 3.0, True),
        (f"fmstack-distilled-int8 / fmstack-full, QPS at c{top}", 3.0, True),
    ]:
        if label not in by_label:
            continue
        if top < TARGET_CONCURRENCY:
            notes.append(
                f"NOT CHECKED: {label} {'>=' if higher else '<='} {target:g} (the target is at "
                f"concurrency {TARGET_CONCURRENCY}; this run went up to {top})."
            )
            continue
        stat = by_label[label].stat
        if stat is None:
            notes.append(f"NOT CHECKED: {label} ({by_label[label].reason}).")
            continue
        met = stat.median >= target if higher else stat.median <= target
        sign = ">=" if higher else "<="
        notes.append(
            f"{'PASS' if met else 'FAIL'}: {label} {sign} {target:g} (median {stat.median:.2f})."
        )
    cpu = {
        name: (
            median(f"fmstack-{name}-c{top}", "cpu_ms"),
            median(f"fmstack-{name}-c{top}", "model_cpu_ms"),
        )
        for name in ("full", "distilled")
    }
    if all(a is not None and b for a, b in cpu.values()):
        (full_all, full_model), (dist_all, dist_model) = cpu["full"], cpu["distilled"]
        paired = by_label.get(f"fmstack-full / fmstack-distilled, model CPU per request at c{top}")
        bound = paired.stat.median if paired and paired.stat else full_model / dist_model
        notes.append(
            f"CPU per request at c{top} (whole machine / model replica / the rest): full "
            f"{full_all:.1f} / {full_model:.1f} / {full_all - full_model:.1f} ms, distilled "
            f"{dist_all:.1f} / {dist_model:.1f} / {dist_all - dist_model:.1f} ms. The rest "
            "(ingress, HAProxy, Ray's own processes, the client) costs about the same for every "
            "model. Were it free, QPS could scale at most as the model replicas' CPU per "
            f"request: distilled / full {bound:.2f}x."
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--full", required=True, help="export directory or models:/name@alias")
    parser.add_argument("--distilled", required=True, help="the distilled student")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per model")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of interleaved cases")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--eager", action="store_true", help="serve every variant without `compile`"
    )
    parser.add_argument("--out", default=str(RESULTS_DIR), help="where reports are written")
    args = parser.parse_args(argv)
    run_benchmark(
        args.full,
        args.distilled,
        threads=args.threads,
        repeats=args.repeats,
        concurrency=tuple(args.concurrency),
        compile=not args.eager,
        out_dir=args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
