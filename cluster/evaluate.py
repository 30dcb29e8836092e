"""`fmstack eval`: evaluate classifiers or language models on held-out data and compare them in
one table.

The held-out data is rebuilt from the first model's own recipe, so that a teacher and its
distilled student are scored on exactly what neither was trained on: a classifier's test or
validation split (data section and seed), a causal or masked LM's validation blocks (the same
documents, packing and stable hash as its training run). Or it comes from data the user names
(`--data`): labeled rows for classifiers, text for language models; all of it, or a split.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from cluster import handover

if TYPE_CHECKING:
    import numpy as np

    from training import LabeledDataConfig, LoadedModel
    from training.config import DataConfig, LabeledSourceConfig, SourceConfig

LATENCY_BATCHES = {1: 40, 32: 10}  # batch size -> timed batches


class EvalError(ValueError):
    """The models cannot be evaluated as asked."""


SPLITS = ("test", "validation", "all")


@dataclasses.dataclass(frozen=True)
class DataOption:
    """`--data` and its options, read as labeled rows or as documents once the models' task is
    known."""

    path: str
    data_format: str | None = None
    text_column: str = "text"
    label_column: str = "label"


def compare_models(
    refs: list[str],
    split: str | None,
    threads: int,
    max_examples: int | None,
    output: Path | None,
    console: Console,
    data: DataOption | None = None,
    registry: str | None = None,
    compile: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate every model on the same held-out data (`split` None: the task's default), print
    the reports and a comparison table, and return the results. `compile` runs classifiers
    through torch.compile first, as serving's `compile: true` does."""
    import torch
    import transformers

    from training import load_model

    if split is not None and split not in SPLITS:
        raise EvalError(f"--split {split}: use {', '.join(SPLITS)}")
    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()  # the tables are the output
    loaded = [load_model(handover.resolve_model(ref, registry)) for ref in refs]
    tasks = {model.task for model in loaded}
    if tasks in ({"causal_lm"}, {"masked_lm"}):
        if compile:
            raise EvalError("--compile applies to classifiers; leave it out for language models")
        results = _evaluate_language_models(
            refs, loaded, split, threads, max_examples, data, console
        )
        console.print(lm_comparison_table(results))
    else:
        for ref, model in zip(refs, loaded, strict=True):
            if model.task != "classification":
                raise EvalError(
                    f"{ref} is a {model.task} model; fmstack eval compares classifiers, causal "
                    "LMs or masked LMs, each with their own kind"
                )
        if compile:
            loaded = [_compiled(ref, model) for ref, model in zip(refs, loaded, strict=True)]
        source = (
            labeled_source(data.path, data.data_format, data.text_column, data.label_column)
            if data
            else None
        )
        results = _evaluate_classifiers(
            refs, loaded, split or "test", threads, max_examples, source, console
        )
        for result in results:
            result["compiled"] = compile
        console.print(comparison_table(results))
        for result in results:
            if "cascade" in result:
                console.print(cascade_table(result, results[0]["metrics"]["accuracy"]))
    if output:
        output.write_text(json.dumps(results, indent=2))
        console.print(f"results written to {output}")
    return results


def _evaluate_classifiers(
    refs: list[str],
    loaded: list[LoadedModel],
    split: str,
    threads: int,
    max_examples: int | None,
    source: LabeledSourceConfig | None,
    console: Console,
) -> list[dict[str, Any]]:
    from training.evaluation import (
        format_classification_report,
        format_confusion_matrix,
        score_predictions,
    )
    from training.inference import classify, measure_latency

    held_out = held_out_split(refs, loaded, split, max_examples, source)
    data, names = held_out.data, held_out.label_names
    texts, labels = held_out.texts, held_out.labels
    results, probabilities = [], []
    for ref, model in zip(refs, loaded, strict=True):
        probs = classify(model, texts, max_length=data.max_length)
        probabilities.append(probs)
        evaluation = score_predictions(probs.argmax(-1), labels, model.label_names)
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
    _add_cascades(results, loaded, probabilities, labels)
    return results


def _add_cascades(
    results: list[dict[str, Any]],
    loaded: list[LoadedModel],
    probabilities: list[np.ndarray],
    labels: list[int],
) -> None:
    """Every later model with the first one's labels, as the student of a cascade that falls
    back to the first (a teacher and its students, as `fmstack eval` is usually asked)."""
    from training.evaluation import cascade_tradeoffs

    rate = results[0]["latency"]["batch_32"]["examples_per_second"]
    for i in range(1, len(results)):
        if loaded[i].label_names != loaded[0].label_names:
            continue
        cost = rate / results[i]["latency"]["batch_32"]["examples_per_second"]
        results[i]["cascade"] = {
            "fallback": results[0]["model"],
            "relative_cost": cost,
            "thresholds": cascade_tradeoffs(
                probabilities[i], probabilities[0], labels, relative_cost=cost
            ),
        }


def cascade_table(result: dict[str, Any], fallback_accuracy: float) -> Table:
    """A student's cascade to the first model, one row per threshold."""
    cascade = result["cascade"]
    table = Table(
        title=f"cascade: {result['model'].removeprefix('models:/')}, then "
        f"{cascade['fallback'].removeprefix('models:/')} below the threshold",
        caption="escalated: texts the fallback answers; cost: compute per text over the "
        f"fallback's alone, from batch-32 throughput (the student alone "
        f"{cascade['relative_cost']:.2f}); a serving config's cascade route takes the threshold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("threshold", "escalated", "acc", "vs fallback", "cost"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in cascade["thresholds"]:
        table.add_row(
            f"{row['threshold']:g}",
            f"{row['escalated']:.1%}",
            f"{row['accuracy']:.4f}",
            f"{row['accuracy'] / fallback_accuracy:.3f}x" if fallback_accuracy else "-",
            f"{row['cost']:.2f}",
        )
    return table


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
    """Classifiers, one row each; speed-up is throughput at batch 32 over the first model's."""
    return _comparison_table(
        results,
        title=f"{results[0]['split']} split",
        caption="b1, b32: latency p50/p95 in ms at batch 1, 32; b32/s: examples/s at batch 32; "
        "speed: b32/s over the first model's",
        scores={
            "acc": lambda r: f"{r['metrics']['accuracy']:.4f}",
            "macro F1": lambda r: f"{r['metrics']['macro_f1']:.4f}",
        },
        rate=("b32/s", "examples_per_second"),
    )


def _comparison_table(
    results: list[dict[str, Any]],
    *,
    title: str,
    caption: str,
    scores: dict[str, Callable[[dict[str, Any]], str]],
    rate: tuple[str, str],
) -> Table:
    """Parameters, `scores`, latency at batch 1 and 32, the batch-32 `rate` (column, latency
    key) and its ratio to the first model's."""
    compiled = ", compiled" if results[0].get("compiled") else ""
    table = Table(
        title=f"{title}, {results[0]['threads']} threads{compiled}",
        caption=caption,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # Numbers never wrap; long model references fold, so the table fits 80 columns.
    table.add_column("model", overflow="fold", min_width=12)
    for column in ("params", *scores, "b1", "b32", rate[0], "speed"):
        table.add_column(column, justify="right", no_wrap=True)
    base = results[0]["latency"]["batch_32"][rate[1]]
    for r in results:
        b1, b32 = r["latency"]["batch_1"], r["latency"]["batch_32"]
        table.add_row(
            r["model"].removeprefix("models:/"),
            f"{r['parameters'] / 1e6:.1f}M",
            *(score(r) for score in scores.values()),
            f"{b1['p50_ms']:.0f}/{b1['p95_ms']:.0f}",
            f"{b32['p50_ms']:.0f}/{b32['p95_ms']:.0f}",
            f"{b32[rate[1]]:,.0f}",
            f"{b32[rate[1]] / base:.2f}x",
        )
    return table


# ---------------------------------------------------------------- language models

LM_LATENCY_BATCHES = {1: 10, 32: 3}  # batch size -> timed batches of seq_len tokens
DOCUMENT_FORMATS = FORMATS | {".txt": "text"}


def document_source(data: DataOption) -> SourceConfig:
    """`--data` as text to score a language model on; the format from the extension unless
    given."""
    from pydantic import ValidationError

    from training.config import SourceConfig

    kind = data.data_format or DOCUMENT_FORMATS.get(Path(data.path.rstrip("/")).suffix.lower())
    if kind is None:
        raise EvalError(
            f"--data {data.path}: name its format with --data-format text|jsonl|csv|parquet"
        )
    if kind not in ("text", "jsonl", "csv", "parquet"):
        raise EvalError(f"--data-format {kind}: use text, jsonl, csv or parquet")
    try:
        return SourceConfig.model_validate(
            {"kind": kind, "path": data.path, "text_column": data.text_column}
        )
    except ValidationError as err:
        raise EvalError(f"--data {data.path}: {err.errors()[0]['msg']}") from None


@dataclasses.dataclass
class HeldOutBlocks:
    """Packed token blocks to score language models on."""

    blocks: np.ndarray
    """Token ids, one block of `data.seq_len` per row."""
    data: DataConfig
    split: str
    mlm_probability: float
    """The share of tokens a masked LM is scored on (its recipe's, else the default)."""


def held_out_blocks(
    refs: list[str],
    models: list[LoadedModel],
    split: str | None,
    max_examples: int | None = None,
    data: DataOption | None = None,
) -> HeldOutBlocks:
    """The validation blocks of the first model's recipe (its documents, packed by its
    tokenizer as in training, `[CLS] ... [SEP]` for masked LMs, chosen by the same stable hash),
    or the blocks of `data` (`all` by default, or its `validation` blocks). Every model must
    share the first one's tokenizer: losses over different tokens do not compare."""
    import numpy as np

    from training.config import DataConfig, TrainConfig
    from training.data import check_sources, configure_ray_data, pack_documents, read_documents

    vocab = models[0].tokenizer.get_vocab()
    for ref, model in zip(refs[1:], models[1:], strict=True):
        if model.tokenizer.get_vocab() != vocab:
            raise EvalError(
                f"{ref} has another tokenizer than {refs[0]}; their losses count different "
                "tokens and do not compare: evaluate them one at a time"
            )
    recipe = models[0].manifest.get("recipe") or {}
    recipe_data = recipe.get("data")
    mlm_probability = (recipe.get("train") or {}).get(
        "mlm_probability", TrainConfig.model_fields["mlm_probability"].default
    )
    if data is None:
        if split not in (None, "validation"):
            raise EvalError(
                f"--split {split}: a language model's recipe holds out validation blocks only; use "
                "--split validation, or name held-out text with --data"
            )
        if not recipe_data or "sources" not in recipe_data:
            raise EvalError(
                f"{refs[0]} has no data recipe in its fmstack.json to rebuild its validation "
                "blocks; name held-out text with --data"
            )
        cfg, split = DataConfig.model_validate(recipe_data), "validation"
    else:
        if split not in (None, "all", "validation"):
            raise EvalError(
                f"--split {split}: a language model scores --data whole (all) or its validation "
                "blocks (validation)"
            )
        # Blocks as long as the model's training blocks, where its recipe says.
        own = DataConfig.model_validate(recipe_data) if recipe_data else None
        packing = own.model_dump(include={"seq_len", "validation_fraction"}) if own else {}
        cfg = DataConfig(sources=[document_source(data)], **packing)
        split = split or "all"
    check_sources(cfg)
    configure_ray_data()
    masked = models[0].task == "masked_lm"
    packed = pack_documents(cfg, read_documents(cfg), str(models[0].path), masked=masked)
    parts = [
        b["input_ids"][b["is_validation"]] if split == "validation" else b["input_ids"]
        for b in packed.iter_batches(batch_size=None, batch_format="numpy")
    ]
    blocks = np.concatenate(parts) if parts else np.zeros((0, cfg.seq_len), np.int32)
    if max_examples:
        blocks = blocks[:max_examples]
    if not len(blocks):
        raise EvalError(
            f"no {split} blocks of {cfg.seq_len} tokens in the data; give more text"
            + (" or score it all with --split all" if split == "validation" and data else "")
        )
    return HeldOutBlocks(blocks, cfg, split, mlm_probability)


def _compiled(ref: str, model: Any) -> Any:
    from training import try_compile_classifier

    compiled, why = try_compile_classifier(model)
    if compiled is None:
        raise EvalError(f"--compile: {ref} did not compile ({why}); leave --compile out")
    return compiled


def _evaluate_language_models(
    refs: list[str],
    loaded: list[LoadedModel],
    split: str | None,
    threads: int,
    max_examples: int | None,
    data: DataOption | None,
    console: Console,
) -> list[dict[str, Any]]:
    from training.inference import (
        evaluate_causal_lm,
        evaluate_masked_lm,
        measure_block_latency,
        measure_generation,
    )

    held_out = held_out_blocks(refs, loaded, split, max_examples, data)
    blocks, seq_len = held_out.blocks, held_out.data.seq_len
    results = []
    for ref, model in zip(refs, loaded, strict=True):
        latency = {
            f"batch_{bs}": measure_block_latency(model, blocks, batch_size=bs, batches=n)
            for bs, n in LM_LATENCY_BATCHES.items()
        }
        if model.task == "masked_lm":
            evaluation = evaluate_masked_lm(model, blocks, probability=held_out.mlm_probability)
            extra = f", masked-token accuracy {evaluation['accuracy']:.4f}"
        else:
            evaluation = evaluate_causal_lm(model, blocks)
            latency["generate"] = generate = measure_generation(model, blocks)
            extra = (
                f"; greedy decoding at batch 1: {generate['new_tokens']} tokens in "
                f"{generate['p50_ms']:.0f} ms ({generate['tokens_per_second']:.1f} tokens/s)"
            )
        console.print(
            f"\n[bold]{ref}[/bold] ({held_out.split}: {len(blocks)} blocks of {seq_len} "
            f"tokens): loss {evaluation['loss']:.4f}, perplexity {evaluation['perplexity']:.2f}"
            + extra
        )
        results.append(
            {
                "model": ref,
                "path": str(model.path),
                "parameters": model.parameters,
                "task": model.task,
                "split": held_out.split,
                "threads": threads,
                "seq_len": seq_len,
                **evaluation,
                "latency": latency,
            }
        )
    return results


def lm_comparison_table(results: list[dict[str, Any]]) -> Table:
    """Language models, one row each; speed-up is tokens/s at batch 32 over the first model's.
    Masked LMs' loss, perplexity and accuracy count the masked tokens."""
    scores: dict[str, Callable[[dict[str, Any]], str]] = {
        "loss": lambda r: f"{r['loss']:.4f}",
        "ppl": lambda r: f"{r['perplexity']:,.2f}",
    }
    masked = results[0]["task"] == "masked_lm"
    if masked:
        scores["acc"] = lambda r: f"{r['accuracy']:.4f}"
    return _comparison_table(
        results,
        title=f"{results[0]['split']} blocks of {results[0]['seq_len']} tokens",
        caption=(
            "loss: mean loss on masked tokens (nats); ppl: its perplexity; acc: masked tokens "
            "predicted; "
            if masked
            else "loss: mean next-token loss (nats); ppl: perplexity; "
        )
        + "b1, b32: forward latency p50/p95 in ms at batch 1, 32; tok/s: tokens/s at batch 32; "
        "speed: over the first model's",
        scores=scores,
        rate=("tok/s", "tokens_per_second"),
    )
