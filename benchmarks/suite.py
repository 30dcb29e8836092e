"""Every benchmark in one run, and one report: `make bench` (quick) or `make bench ARGS=--full`.

    .venv/bin/python -m benchmarks [--full] [--only pretrain distill serve] [--out DIR]

Runs, one after the other, the pretraining benchmark (this machine's matmul and memory ceilings,
fmstack on 2 workers with ZeRO 0/2/3 in fp32 and bf16 against a plain PyTorch loop, per-worker
memory ZeRO-0 vs ZeRO-3), the distillation benchmark (teacher, student, int8 student and the
labels-only student: accuracy, latency, throughput) and the serving benchmark (fmstack's Serve app
against a plain FastAPI server, the cascade, a promotion under load). Each writes its own report
next to this one; this module adds `<date>.json`, `<date>.md` and PNG plots that put the headline
ratios side by side.

Distillation and serving measure the registry's trained models: those of the full recipes, else
`make demo`'s (the same shapes, so the same speed; trained on a sample, so less accurate); where
neither is registered, those parts are reported as not run, with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Report, fmt

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("pretrain", "distill", "serve")
MODEL_SETS = (
    {
        "teacher": "models:/sentiment@candidate",
        "student": "models:/sentiment-student@candidate",
        "baseline": "models:/sentiment-student-labels-only@candidate",
    },
    # `make demo`'s: the same shapes (so the same speed), trained on a 2,000-review sample.
    {
        "teacher": "models:/demo-sentiment@candidate",
        "student": "models:/demo-sentiment-student@candidate",
    },
)
"""Registry models that distillation and serving measure: the first set whose teacher and
student resolve. The full recipes train the first (configs/finetune, configs/distill)."""


@dataclasses.dataclass(frozen=True)
class SuiteSize:
    pretrain: str
    """Size of the pretraining benchmark (benchmarks.pretrain.SIZES)."""
    distill_repeats: int
    distill_examples: int | None
    serve_repeats: int
    serve_concurrency: tuple[int, ...]


SIZES = {
    # About 15 minutes on 2 cores.
    "quick": SuiteSize("quick", 2, 512, 1, (1, 8, 32)),
    "full": SuiteSize("full", 3, None, 3, (1, 8, 32)),
    # Seconds to a few minutes: the test suite's check of the harness, not a measurement.
    "tiny": SuiteSize("tiny", 1, 32, 1, (1,)),
}


@dataclasses.dataclass
class Part:
    """One benchmark's outcome in the suite."""

    name: str
    report: Report | None = None
    skipped: str | None = None
    """Why it did not run."""
    error: str | None = None
    seconds: float = 0.0
    files: list[str] = dataclasses.field(default_factory=list)
    models: str | None = None
    """Which registry models it measured."""


def _missing_models(refs: list[str]) -> str | None:
    """Why the registry models cannot be used, or None when all are registered (the benchmarks
    verify their checksums when they load them)."""
    from cluster.registry import Registry, default_root

    registry = Registry(default_root())
    for ref in refs:
        try:
            registry.get(ref)
        except Exception as err:  # noqa: BLE001 - any reason is reported, not raised
            return f"{ref} is not available ({err})"
    return None


def bench_models() -> tuple[dict[str, str] | None, str]:
    """The model set to measure, and which it is (or why there is none)."""
    from cluster import handover

    reasons = []
    for models in MODEL_SETS:
        missing = _missing_models([models["teacher"], models["student"]])
        if missing is None:
            if "baseline" in models and _missing_models([models["baseline"]]) is not None:
                models = {k: v for k, v in models.items() if k != "baseline"}
            named = ", ".join(handover.describe_model(ref) for ref in models.values())
            return models, f"models: {named}"
        reasons.append(missing)
    return None, (
        "; ".join(reasons) + ". Train them with configs/finetune/minilm-rotten-tomatoes.yaml and "
        "configs/distill/minilm-student.yaml (about an hour on 2 cores), or run `make demo` "
        "(demo-size models of the same shapes, 10 minutes)"
    )


def _run_pretrain(size: SuiteSize, out: Path) -> Report:
    from benchmarks import pretrain

    report, _, _ = pretrain.run_benchmark(size.pretrain, out_dir=out)
    return report


def _chosen_models() -> dict[str, str]:
    models, why = bench_models()
    if models is None:
        raise LookupError(why)
    return models


def _run_distill(size: SuiteSize, out: Path) -> Report:
    from benchmarks import distill

    models = _chosen_models()
    report, _, _ = distill.run_benchmark(
        models["teacher"],
        models["student"],
        models.get("baseline"),
        repeats=size.distill_repeats,
        max_examples=size.distill_examples,
        out_dir=out,
    )
    return report


def _run_serve(size: SuiteSize, out: Path) -> Report:
    from benchmarks import serve

    models = _chosen_models()
    report, _, _ = serve.run_benchmark(
        models["teacher"],
        models["student"],
        repeats=size.serve_repeats,
        concurrency=size.serve_concurrency,
        out_dir=out,
    )
    return report


RUNNERS: dict[str, Callable[[SuiteSize, Path], Report]] = {
    "pretrain": _run_pretrain,
    "distill": _run_distill,
    "serve": _run_serve,
}


def run_suite(
    size_name: str = "quick",
    only: tuple[str, ...] = BENCHMARKS,
    out_dir: str | Path = RESULTS_DIR,
    runners: dict[str, Callable[[SuiteSize, Path], Report]] | None = None,
) -> tuple[list[Part], Path, Path]:
    """Run the chosen benchmarks in order; write the combined JSON, Markdown and plots."""
    size, out = SIZES[size_name], Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runners = runners or RUNNERS
    parts = []
    for name in only:
        part = Part(name)
        if name in ("distill", "serve"):
            models, why = bench_models()
            part.skipped, part.models = (why, None) if models is None else (None, why)
        if part.skipped is None:
            started = time.perf_counter()
            try:
                part.report = runners[name](size, out)
            except Exception as err:  # noqa: BLE001 - one failure must not lose the rest
                part.error = f"{type(err).__name__}: {err}"
            part.seconds = round(time.perf_counter() - started, 1)
        parts.append(part)
    date = _dt.date.today().isoformat()
    plots = write_plots(parts, out, date)
    json_path, md_path = out / f"{date}.json", out / f"{date}.md"
    json_path.write_text(json.dumps(to_json(parts, size_name, plots), indent=2, default=str) + "\n")
    md_path.write_text(markdown(parts, size_name, date, plots, out))
    return parts, json_path, md_path


# ---------------------------------------------------------------- the combined report


def headline(parts: list[Part]) -> list[tuple[str, str, str]]:
    """(benchmark, ratio label, median (min-max)) for every ratio of every report."""
    rows = []
    for part in parts:
        for r in part.report.ratios if part.report else []:
            if r.stat is None:
                rows.append((part.name, r.label, f"n/a ({r.reason})"))
                continue
            spread = "" if r.stat.n == 1 else f" ({fmt(r.stat.min)}-{fmt(r.stat.max)})"
            rows.append((part.name, r.label, f"{r.stat.median:.3f}{spread}"))
    return rows


def to_json(parts: list[Part], size_name: str, plots: list[str]) -> dict[str, Any]:
    return {
        "size": size_name,
        "date": _dt.date.today().isoformat(),
        "plots": plots,
        "benchmarks": {
            p.name: {
                "seconds": p.seconds,
                "models": p.models,
                "skipped": p.skipped,
                "error": p.error,
                "report": p.report.to_json() if p.report else None,
            }
            for p in parts
        },
        "headline": [{"benchmark": b, "ratio": r, "value": v} for b, r, v in headline(parts)],
    }


def gpu_section(results_dir: Path) -> list[str]:
    """The newest `benchmarks/gpu.sh` result in `results_dir`, which this suite cannot run."""
    from benchmarks import gpu

    path = gpu.latest_result(results_dir)
    if path is None:
        return []
    return [
        "",
        f"## On one GPU ({path.name}, from `benchmarks/gpu.sh`)",
        "",
        gpu.summary(json.loads(path.read_text())).rstrip(),
    ]


def markdown(
    parts: list[Part], size_name: str, date: str, plots: list[str], results_dir: Path
) -> str:
    out = [
        f"# fmstack performance report ({date}, size {size_name})",
        "",
        "Every figure is a median over interleaved rounds, with (min-max) where rounds differ; "
        "each ratio is taken round by round between cases measured in the same run.",
        "",
        "## Headline ratios",
        "",
        "| benchmark | ratio | median (min-max) |",
        "| --- | --- | --- |",
    ]
    out += [f"| {b} | {r} | {v} |" for b, r, v in headline(parts)]
    for part in parts:
        if part.report is None:
            reason = part.skipped or part.error
            out += ["", f"## {part.name}", "", f"Not run: {reason}"]
    out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    for part in parts:
        if part.report is None:
            continue
        body = part.report.markdown().splitlines()
        out += ["", f"## {part.name} ({part.seconds:.0f} s)", ""]
        out += [f"Registry {part.models}.", ""] if part.models else []
        out += body[2:]
    out += gpu_section(results_dir)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- plots


def write_plots(parts: list[Part], out: Path, date: str) -> list[str]:
    """PNG charts of the reports that ran; returns their file names (relative to `out`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for part in parts:
        if part.report is None:
            continue
        draw = {"pretrain": _plot_pretrain, "distill": _plot_distill, "serve": _plot_serve}
        fig = draw[part.name](part.report, plt)
        if fig is None:
            continue
        name = f"{date}-{part.name}.png"
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(name)
    return written


def _bars(ax: Any, cases: list[Any], figure: str, title: str) -> None:
    """One bar per case: its median, with a min-max error bar."""
    shown = [c for c in cases if figure in c.summary()]
    medians = [c.summary()[figure].median for c in shown]
    low = [m - c.summary()[figure].min for m, c in zip(medians, shown, strict=True)]
    high = [c.summary()[figure].max - m for m, c in zip(medians, shown, strict=True)]
    ax.bar(range(len(shown)), medians, yerr=[low, high], capsize=3, color="#4C72B0")
    ax.set_xticks(range(len(shown)), [c.name for c in shown], rotation=30, ha="right")
    ax.set_title(title)


def _plot_pretrain(report: Report, plt: Any) -> Any:
    throughput = [c for c in report.cases if c.group == "throughput" and c.samples]
    memory = [c for c in report.cases if c.group == "memory" and c.samples]
    if not throughput:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    _bars(axes[0], throughput, "tokens_per_s", "training tokens/s (2 CPU workers vs plain loop)")
    _bars(axes[1], memory, "peak_rss_mib", "peak memory per worker (MiB)")
    return fig


def _plot_distill(report: Report, plt: Any) -> Any:
    cases = [c for c in report.cases if c.samples]
    if not cases:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    _bars(axes[0], cases, "accuracy", "test accuracy")
    _bars(axes[1], cases, "b32_ex_per_s", "examples/s at batch 32")
    _bars(axes[2], cases, "b1_p50_ms", "p50 latency at batch 1 (ms)")
    return fig


def _plot_serve(report: Report, plt: Any) -> Any:
    series: dict[str, list[tuple[int, float, float]]] = {}
    for c in report.cases:
        if "concurrency" not in c.params or "texts_per_request" in c.params or not c.samples:
            continue
        family = c.name.rsplit("-c", 1)[0]
        s = c.summary()
        series.setdefault(family, []).append(
            (c.params["concurrency"], s["qps"].median, s["p99_ms"].median)
        )
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for family, points in sorted(series.items()):
        points.sort()
        xs = [p[0] for p in points]
        style = "--" if family.startswith("plain") else "-"
        axes[0].plot(xs, [p[1] for p in points], style, marker="o", label=family)
        axes[1].plot(xs, [p[2] for p in points], style, marker="o", label=family)
    for ax, title in zip(axes, ("QPS", "p99 latency (ms)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(f"/v1/classify {title}")
    axes[0].legend(fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--full", action="store_true", help="the full size (hours, not minutes)")
    parser.add_argument("--size", choices=sorted(SIZES), help="overrides --full")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where reports go")
    args = parser.parse_args(argv)
    size = args.size or ("full" if args.full else "quick")
    parts, json_path, md_path = run_suite(size, tuple(args.only), args.out)
    for part in parts:
        state = part.error or part.skipped or f"done in {part.seconds:.0f} s"
        print(f"{part.name}: {state}", flush=True)
    print(f"wrote {json_path} and {md_path}", flush=True)
    return 1 if any(p.error for p in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
