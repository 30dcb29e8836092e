"""`fmstack eval`: evaluate classifiers on a held-out split and compare them in one table.

The split is rebuilt from the first model's own recipe (data section and seed), so a fine-tuned
teacher and its distilled student are scored on exactly the examples neither was trained on. Or
the examples come from labeled data the user names (`--data`): every row, or a split of it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from cluster import handover

if TYPE_CHECKING:
    from training import LabeledDataConfig, LoadedModel
    from training.config import LabeledSourceConfig

LATENCY_BATCHES = {1: 40, 32: 10}  # batch size -> timed batches


class EvalError(ValueError):
    """The models cannot be evaluated as asked."""


SPLITS = ("test", "validation", "all")


def compare_models(
    refs: list[str],
    split: str,
    threads: int,
    max_examples: int | None,
    output: Path | None,
    console: Console,
    source: LabeledSourceConfig | None = None,
    registry: str | None = None,
) -> list[dict[str, Any]]:
    import torch
    import transformers

    from training import load_model
    from training.evaluation import format_classification_report, format_confusion_matrix
    from training.inference import evaluate_classifier, measure_latency

    if split not in SPLITS:
        raise EvalError(f"--split {split}: use {', '.join(SPLITS)}")
    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()  # the tables are the output
    loaded = [load_model(handover.resolve_model(ref, registry)) for ref in refs]
    held_out = held_out_split(refs, loaded, split, max_examples, source)
    data, names = held_out.data, held_out.label_names
    texts, labels = held_out.texts, held_out.labels

    results = []
    for ref, model in zip(refs, loaded, strict=True):
        evaluation = evaluate_classifier(model, texts, labels, max_length=data.max_length)
        latency = {
            f"batch_{bs}": measure_latency(
                model, texts, batch_size=bs, batches=n, max_length=data.max_length
            )
            for bs, n in LATENCY_BATCHES.items()
        }
        console.print(f"\n[bold]{ref}[/bold] ({split} split, {len(texts)} examples)")
        console.print(format_classification_report(evaluation["report"]), markup=False)
        console.print(format_confusion_matrix(evaluation["confusion_matrix"], names), markup=False)
        results.append(
            {
                "model": ref,
                "path": str(model.path),
                "parameters": model.parameters,
                "split": split,
                "threads": threads,
                **evaluation,
                "latency": latency,
            }
        )
    console.print(comparison_table(results))
    if output:
        output.write_text(json.dumps(results, indent=2))
        console.print(f"results written to {output}")
    return results


FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def labeled_source(
    path: str, data_format: str | None, text_column: str, label_column: str
) -> LabeledSourceConfig:
    """`--data` and its options as a labeled source; the format from the extension unless
    given."""
    from pydantic import ValidationError

    from training.config import LabeledSourceConfig

    kind = data_format or FORMATS.get(Path(path.rstrip("/")).suffix.lower())
    if kind is None:
        raise EvalError(f"--data {path}: name its format with --data-format csv|jsonl|parquet")
    try:
        return LabeledSourceConfig.model_validate(
            {"kind": kind, "path": path, "text_column": text_column, "label_column": label_column}
        )
    except ValidationError as err:
        reason = err.errors()[0]["msg"]
        raise EvalError(f"--data-format {kind}: {reason}") from None


@dataclasses.dataclass
class HeldOutSplit:
    """Labeled examples of one split, rebuilt from a model's recipe."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    data: LabeledDataConfig
    """The recipe's data section (source, max_length, fractions, max_examples)."""
    seed: int


def held_out_split(
    refs: list[str],
    models: list[LoadedModel],
    split: str = "test",
    max_examples: int | None = None,
    source: LabeledSourceConfig | None = None,
) -> HeldOutSplit:
    """The `split` rows of the first model's recipe (its data section and seed), or of `source`
    (`all`: every row), after checking that every model is a classifier predicting the data's
    labels; `max_examples` keeps the first rows only."""
    from training import LabeledDataConfig
    from training.labeled import (
        all_rows,
        check_labeled_source,
        load_splits,
        prepare_splits,
        read_labeled,
    )

    for ref, model in zip(refs, models, strict=True):
        if model.task != "classification":
            raise EvalError(f"{ref} is a {model.task} model; fmstack eval scores classifiers")
    recipe = models[0].manifest.get("recipe") or {}
    if source is None:
        if split == "all":
            raise EvalError(
                "--split all needs --data: every row of a model's own data includes the rows it "
                "was trained on"
            )
        if "data" not in recipe:
            raise EvalError(
                f"{refs[0]} has no data recipe in its fmstack.json to rebuild the split; name "
                "labeled data with --data"
            )
        data = LabeledDataConfig.model_validate(recipe["data"])
        seed = recipe.get("train", {}).get("seed", 0)
        splits = load_splits(data, seed)
        names = splits.label_names
        rows = getattr(splits, split)
    else:
        # The models' own label space; every label in the data must be one of them.
        names = models[0].label_names or []
        if not names:
            raise EvalError(f"{refs[0]} has no label names to score {source.path} against")
        max_length = int((recipe.get("data") or {}).get("max_length", 128))
        data = LabeledDataConfig(source=source, max_length=max_length)
        seed = 0
        check_labeled_source(source)
        frame = read_labeled(source)
        if split == "all":
            rows = all_rows(frame, names, seed)
        else:
            splits = prepare_splits(
                frame,
                names,
                validation_fraction=data.validation_fraction,
                test_fraction=data.test_fraction,
                max_examples=None,
                seed=seed,
            )
            rows = getattr(splits, split)
    for ref, model in zip(refs, models, strict=True):
        if model.label_names != names:
            raise EvalError(f"{ref} predicts {model.label_names}, but the data has {names}")
    if max_examples:
        rows = rows.head(max_examples)
    return HeldOutSplit(rows["text"].tolist(), rows["label"].tolist(), names, data, seed)


def comparison_table(results: list[dict[str, Any]]) -> Table:
    """One row per model; speed-up is throughput at batch 32 relative to the first model."""
    table = Table(
        title=f"{results[0]['split']} split, {results[0]['threads']} threads",
        caption="b1, b32: latency p50/p95 in ms at batch 1, 32; b32/s: examples/s at batch 32; "
        "speed: b32/s over the first model's",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # Numbers never wrap; long model references fold, so the table fits 80 columns.
    table.add_column("model", overflow="fold", min_width=12)
    for column in ("params", "acc", "macro F1", "b1", "b32", "b32/s", "speed"):
        table.add_column(column, justify="right", no_wrap=True)
    base = results[0]["latency"]["batch_32"]["examples_per_second"]
    for r in results:
        b1, b32 = r["latency"]["batch_1"], r["latency"]["batch_32"]
        table.add_row(
            r["model"].removeprefix("models:/"),
            f"{r['parameters'] / 1e6:.1f}M",
            f"{r['metrics']['accuracy']:.4f}",
            f"{r['metrics']['macro_f1']:.4f}",
            f"{b1['p50_ms']:.0f}/{b1['p95_ms']:.0f}",
            f"{b32['p50_ms']:.0f}/{b32['p95_ms']:.0f}",
            f"{b32['examples_per_second']:,.0f}",
            f"{b32['examples_per_second'] / base:.2f}x",
        )
    return table
