"""Distillation benchmark: a distilled classifier side by side with its teacher.

    .venv/bin/python -m benchmarks.distill --teacher REF --student REF [--baseline REF]
        [--threads 2] [--repeats 3] [--max-examples N] [--eager] [--out DIR]

REF is an export directory or a registry reference such as `models:/sentiment@candidate`.

Cases, interleaved over rounds: `teacher`, `student`, `student-int8` (a copy of the student with
dynamic int8 quantisation of its `nn.Linear` layers), `baseline` (the student's architecture
trained on labels alone, when `--baseline` is given), and `teacher-compiled` and
`student-compiled`: the two run through `torch.compile` as a serving variant with
`compile: true` runs them (not with `--eager`). Every case runs with the same
`torch.set_num_threads(threads)` and is scored on the held-out test split of the teacher's recipe,
rebuilt as `fmstack eval` does:

- test accuracy and macro F1 (deterministic: computed once per case, repeated in every round);
- batch-32 throughput (examples/s) and p50/p95 latency, batch-1 p50/p95 latency (forward pass);
- parameter count and the size of the saved weights.

Ratios are paired by round and checked against targets: student/teacher accuracy >= 0.97,
student/teacher batch-32 throughput >= 3, student/baseline accuracy > 1. The compiled pair's
throughput ratio is reported beside the eager one.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import Case, CaseResult, Figures, Ratio, Report, ratio, run_interleaved
from benchmarks.pretrain import _cpu_info, _versions, torch_threads
from cluster import handover
from cluster.evaluate import LATENCY_BATCHES, HeldOutSplit, held_out_split
from training.inference import (
    LoadedModel,
    evaluate_classifier,
    load_model,
    measure_latency,
    quantize_int8,
    try_compile_classifier,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GROUP = "classifiers"
BASELINE_HOWTO = (
    "fmstack distill --config configs/distill/minilm-student.yaml --set distillation.alpha=0 "
    "--set distillation.augment.copies=0 --set train.epochs=8 "
    "--set checkpoint.run_name=minilm-student-labels-only "
    "--set registry.name=sentiment-student-labels-only"
)
LABELS = {
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "b32_ex_per_s": "b32 ex/s",
    "b32_p50_ms": "b32 p50 ms",
    "b32_p95_ms": "b32 p95 ms",
    "b1_p50_ms": "b1 p50 ms",
    "b1_p95_ms": "b1 p95 ms",
    "params": "params",
    "weights_mib": "weights MiB",
}
COLUMNS = {GROUP: list(LABELS)}

ACCURACY = "student / teacher, accuracy"
THROUGHPUT = "student / teacher, b32 throughput"
VS_BASELINE = "student / baseline, accuracy"


@dataclasses.dataclass(frozen=True)
class Target:
    ratio: str
    value: float
    strict: bool = False
    """`>` rather than `>=`."""

    def __str__(self) -> str:
        return f"{self.ratio} {'>' if self.strict else '>='} {self.value:g}"

    def met(self, median: float) -> bool:
        return median > self.value if self.strict else median >= self.value


TARGETS = (
    Target(ACCURACY, 0.97),
    Target(THROUGHPUT, 3.0),
    Target(VS_BASELINE, 1.0, strict=True),  # distillation should beat labels alone
)


def weights_mib(model: torch.nn.Module) -> float:
    """Size of the saved state dict (int8 weights count one byte each)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 2**20


def int8_copy(student: LoadedModel) -> tuple[LoadedModel | None, str | None]:
    """The student with dynamic int8 on its Linear layers, or why that is unavailable."""
    try:
        return quantize_int8(student), None
    except RuntimeError as err:
        return None, str(err)


def classifier_case(loaded: LoadedModel, split: HeldOutSplit, params: int) -> Callable[[], Figures]:
    """Accuracy and macro F1 (first round, then reused) and latency at batch 1 and 32."""
    fixed: dict[str, float] = {}

    def run() -> Figures:
        max_length = split.data.max_length
        if not fixed:
            evaluation = evaluate_classifier(
                loaded, split.texts, split.labels, max_length=max_length
            )
            metrics = evaluation["metrics"]
            fixed.update(
                accuracy=metrics["accuracy"],
                macro_f1=metrics["macro_f1"],
                params=params,
                weights_mib=weights_mib(loaded.model),
            )
        figures = dict(fixed)
        for batch, batches in sorted(LATENCY_BATCHES.items(), reverse=True):
            latency = measure_latency(
                loaded, split.texts, batch_size=batch, batches=batches, max_length=max_length
            )
            figures[f"b{batch}_ex_per_s"] = latency["examples_per_second"]
            figures[f"b{batch}_p50_ms"] = latency["p50_ms"]
            figures[f"b{batch}_p95_ms"] = latency["p95_ms"]
        return figures

    return run


def ratios(results: list[CaseResult]) -> list[Ratio]:
    return [
        ratio(results, ACCURACY, "student", "teacher", "accuracy"),
        ratio(results, THROUGHPUT, "student", "teacher", "b32_ex_per_s"),
        ratio(
            results,
            "student-int8 / teacher, b32 throughput",
            "student-int8",
            "teacher",
            "b32_ex_per_s",
        ),
        ratio(results, "student-int8 / teacher, accuracy", "student-int8", "teacher", "accuracy"),
        ratio(
            results,
            "student-int8 / student, b32 throughput",
            "student-int8",
            "student",
            "b32_ex_per_s",
        ),
        ratio(results, VS_BASELINE, "student", "baseline", "accuracy"),
        ratio(
            results,
            "student-compiled / teacher-compiled, b32 throughput",
            "student-compiled",
            "teacher-compiled",
            "b32_ex_per_s",
        ),
    ]


def target_notes(found: list[Ratio]) -> list[str]:
    by_label = {r.label: r for r in found}
    notes = ["targets: " + "; ".join(str(t) for t in TARGETS) + "."]
    for target in TARGETS:
        stat = by_label[target.ratio].stat
        if stat is None:
            notes.append(f"NOT CHECKED: {target} ({by_label[target.ratio].reason}).")
        else:
            verdict = "PASS" if target.met(stat.median) else "FAIL"
            notes.append(f"{verdict}: {target} (median {stat.median:.3f}).")
    return notes


def run_benchmark(
    teacher: str,
    student: str,
    baseline: str | None = None,
    *,
    threads: int = 2,
    repeats: int = 3,
    max_examples: int | None = None,
    compile: bool = True,
    out_dir: str | Path = RESULTS_DIR,
) -> tuple[Report, Path, Path]:
    """Run the benchmark, write its JSON and Markdown report, print the Markdown."""
    started = time.time()
    load_start = os.getloadavg()
    refs = {"teacher": teacher, "student": student, **({"baseline": baseline} if baseline else {})}
    models = {name: load_model(handover.resolve_model(ref)) for name, ref in refs.items()}
    split = held_out_split(list(refs.values()), list(models.values()), "test", max_examples)
    int8, int8_reason = int8_copy(models["student"])
    student_params = models["student"].parameters

    def case(name: str, model: LoadedModel | None, reason: str | None, **params: Any) -> Case:
        run = classifier_case(model, split, params["parameters"]) if model is not None else None
        return Case(name, run, GROUP, not_applicable=reason, params=params)

    cases = [
        case(
            "teacher", models["teacher"], None, ref=teacher, parameters=models["teacher"].parameters
        ),
        case("student", models["student"], None, ref=student, parameters=student_params),
        case(
            "student-int8",
            int8,
            int8_reason,
            ref=student,
            parameters=student_params,
            quantization="torch.ao.quantization.quantize_dynamic, nn.Linear, qint8",
            engine=torch.backends.quantized.engine,
        ),
        case(
            "baseline",
            models.get("baseline"),
            None if baseline else f"no --baseline; train one with `{BASELINE_HOWTO}`",
            ref=baseline,
            parameters=models["baseline"].parameters if baseline else None,
        ),
    ]
    with torch_threads(threads):
        if compile:
            for name in ("teacher", "student"):
                compiled, reason = try_compile_classifier(models[name])
                cases.append(
                    case(
                        f"{name}-compiled",
                        compiled,
                        reason,
                        ref=refs[name],
                        parameters=models[name].parameters,
                    )
                )
        results = run_interleaved(cases, repeats)
    found = ratios(results)

    meta: dict[str, Any] = {
        "machine": _cpu_info(),
        "versions": _versions(),
        "threads": threads,
        "compile": compile,
        "models": {
            name: {"ref": refs[name], "path": str(m.path), "parameters": m.parameters}
            for name, m in models.items()
        },
        "split": {
            "name": "test",
            "examples": len(split.texts),
            "limit": max_examples,
            "seed": split.seed,
            "data": split.data.model_dump(mode="json"),
        },
        "latency_batches": LATENCY_BATCHES,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "wall_seconds": round(time.time() - started, 1),
    }
    capped = max_examples is not None and len(split.texts) == max_examples
    limited = f" (the first {max_examples}: --max-examples)" if capped else ""
    notes = [
        *target_notes(found),
        f"data: the test split of the teacher's recipe ({split.data.source.kind}, seed "
        f"{split.seed}), {len(split.texts)} examples{limited}, max_length "
        f"{split.data.max_length}; accuracy and macro F1 are computed once per case and "
        "repeated in every round.",
        f"speed: torch.set_num_threads({threads}) for every case; forward pass only "
        "(tokenisation excluded), batches cycle through the split, padded to their longest "
        "text; timed batches "
        + ", ".join(f"{n} at batch {b}" for b, n in LATENCY_BATCHES.items())
        + ", after 3 warm-up batches.",
        "student-int8: `quantize_dynamic` of the student's nn.Linear layers (embeddings stay "
        "fp32); params counts the student's weights, weights MiB the saved state dict.",
        "compiled cases: "
        + (
            "`training.compile_classifier` (torch.compile, Inductor, dynamic shapes), as a "
            "serving variant with `compile: true`; compiled before the rounds."
            if compile
            else "not run (`--eager`)."
        ),
        "models: "
        + ", ".join(f"{name} {handover.describe_model(ref)}" for name, ref in refs.items())
        + ".",
    ]
    if baseline and models["baseline"].parameters != student_params:
        notes.append(
            f"the baseline has {models['baseline'].parameters:,} parameters and the student "
            f"{student_params:,}: not the same architecture, so student / baseline measures "
            "more than distillation."
        )
    notes.append(
        f"load average (1 min) {load_start[0]:.1f} at the start, "
        f"{meta['load_average_end'][0]:.1f} at the end, on {os.cpu_count()} CPUs."
    )
    report = Report(
        name="distill",
        title="distillation benchmark",
        repeats=repeats,
        cases=results,
        ratios=found,
        meta=meta,
        notes=notes,
        labels=LABELS,
        columns=COLUMNS,
    )
    json_path, md_path = report.write(out_dir)
    print(report.markdown(), flush=True)
    print(f"wrote {json_path} and {md_path}", flush=True)
    return report, json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.distill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teacher", required=True, help="export directory or models:/name@alias")
    parser.add_argument("--student", required=True, help="the distilled student")
    parser.add_argument("--baseline", help="the student's architecture trained on labels alone")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every case")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of interleaved cases")
    parser.add_argument("--max-examples", type=int, help="use the first N test examples only")
    parser.add_argument(
        "--eager", action="store_true", help="skip the compiled teacher and student cases"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where reports go")
    args = parser.parse_args(argv)
    report, _, _ = run_benchmark(
        args.teacher,
        args.student,
        args.baseline,
        threads=args.threads,
        repeats=args.repeats,
        max_examples=args.max_examples,
        compile=not args.eager,
        out_dir=args.out,
    )
    return 1 if any(c.status == "error" for c in report.cases) else 0


if __name__ == "__main__":
    sys.exit(main())
