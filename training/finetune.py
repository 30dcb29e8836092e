"""The fine-tuning and distillation driver for sequence classifiers.

labeled data -> de-duplicated stratified splits -> tokenized Ray datasets (and, for distillation
with precomputed soft targets, teacher logits from Ray Data batch inference) -> TorchTrainer ->
the best checkpoint by the validation metric -> export -> test-split report saved with the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.config import DistillConfig, FinetuneConfig, RecipeError
from training.storage import MANIFEST, join, publish_directory

ClassifierJob = FinetuneConfig | DistillConfig
TEACHER_LOGITS = "teacher_logits"
"""The training rows' column of precomputed teacher logits (read by the workers' loop)."""
ROW = "row"
LABELLING_REPORT_S = 30.0
"""Seconds between progress lines while the teacher labels the training texts."""


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    run_dir: str
    """Where the run keeps checkpoints and its export."""
    model_dir: str
    """The exported Hugging Face directory (with `fmstack.json` and the test report)."""
    checkpoint: str
    """The checkpoint that was exported: the best by the validation metric."""
    metrics: dict[str, Any]
    """Test-split metrics of the exported model, plus the best validation metrics."""
    report: str
    """The test-split classification report, as printed."""


def job_name(cfg: ClassifierJob) -> str:
    return "distill" if isinstance(cfg, DistillConfig) else "finetune"


def source_model(cfg: ClassifierJob) -> str:
    """The model the job starts from: the base encoder, or the distillation teacher."""
    return cfg.distillation.teacher if isinstance(cfg, DistillConfig) else cfg.model.base


def precomputed_teacher(cfg: ClassifierJob) -> bool:
    return (
        isinstance(cfg, DistillConfig)
        and cfg.distillation.alpha > 0
        and cfg.distillation.teacher_logits == "precomputed"
    )


def classifier_steps(cfg: ClassifierJob, train_examples: int) -> tuple[int, int]:
    """(steps per epoch, optimizer steps of the run) for `train_examples`; refuses a warm-up
    that the run never finishes."""
    steps_per_epoch = max(1, train_examples // cfg.train.global_batch_size)
    max_steps = math.ceil(cfg.train.epochs * steps_per_epoch)
    if cfg.train.max_steps:
        max_steps = min(max_steps, cfg.train.max_steps)
    if cfg.optimizer.warmup_steps >= max_steps:
        raise RecipeError(
            f"optimizer.warmup_steps: {cfg.optimizer.warmup_steps} is not below the run's "
            f"{max_steps} steps ({train_examples:,} training examples, {cfg.train.epochs:g} "
            f"epochs of {cfg.train.global_batch_size}), so the learning rate would never reach "
            "optimizer.lr; lower it, or train longer"
        )
    return steps_per_epoch, max_steps


def pretrained_student(cfg: ClassifierJob) -> str | None:
    """The model a `pretrained` distillation student starts from, else None."""
    if isinstance(cfg, DistillConfig) and cfg.student.init == "pretrained":
        return cfg.student.base
    return None


def preflight(cfg: ClassifierJob) -> tuple[Path, Path]:
    """Checks that need no Ray: the data source exists and the models resolve. Returns the
    directory of the model the job starts from (base or teacher) and of the one whose tokenizer
    the trained model reads with (that model, or a `pretrained` student's base)."""
    from training.inference import resolve_model_dir
    from training.labeled import check_labeled_source

    check_labeled_source(cfg.data.source)
    start_dir = resolve_model_dir(source_model(cfg))
    student = pretrained_student(cfg)
    return start_dir, resolve_model_dir(student) if student else start_dir


def run_finetune(
    cfg: ClassifierJob, address: str | None = None, origin: dict[str, Any] | None = None
) -> FinetuneResult:
    """Fine-tune (or distill) a classifier to completion, export the best checkpoint, and
    evaluate it on the test split. `origin` describes where the start model came from (e.g. the
    registry version of a teacher) for the manifest's lineage."""
    start_dir, tokenizer_dir = preflight(cfg)
    from training.checkpoint import claim_run
    from training.pretrain import build_trainer, ensure_ray, storage_root

    run_dir = join(storage_root(cfg), cfg.checkpoint.run_name)
    claim_run(run_dir, cfg.model_dump(mode="json"))
    ensure_ray(address, cfg)
    import ray.train

    from training.classifier import classifier_tokenizer
    from training.classifier_loop import classifier_loop_per_worker
    from training.data import configure_ray_data
    from training.labeled import labeled_fingerprint, load_splits

    configure_ray_data()
    job = job_name(cfg)
    splits = load_splits(cfg.data, cfg.train.seed)
    label_names = splits.label_names
    print(f"data: {splits.summary()}", flush=True)
    tokenizer = classifier_tokenizer(tokenizer_dir)
    train_frame = training_frame(cfg, splits.train)
    per_worker = len(train_frame) // cfg.scaling.num_workers
    if per_worker < cfg.train.micro_batch_size:
        raise RecipeError(
            f"train.micro_batch_size: {cfg.train.micro_batch_size} is more than each of the "
            f"{cfg.scaling.num_workers} workers' {per_worker} training examples; lower it, or "
            "scaling.num_workers"
        )
    steps_per_epoch, max_steps = classifier_steps(cfg, len(train_frame))
    extra_columns = {}
    if precomputed_teacher(cfg):
        cpus = max(1, int(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker))
        extra_columns[TEACHER_LOGITS] = teacher_logits(
            train_frame, start_dir, cfg.data.max_length, cfg.train.micro_batch_size, cpus
        )
    train_ds = tokenized_dataset(train_frame, tokenizer, cfg.data.max_length, extra_columns)
    val_ds = tokenized_dataset(splits.validation, tokenizer, cfg.data.max_length)
    train_ds, val_ds = train_ds.materialize(), val_ds.materialize()

    eval_every = cfg.train.eval_every or steps_per_epoch
    lower_is_better = cfg.train.metric == "validation_loss"
    loop_config: dict[str, Any] = {
        "job": job,
        "recipe": cfg.model_dump(mode="json"),
        "label_names": label_names,
        "max_steps": max_steps,
        "eval_every": eval_every,
        "base_dir" if job == "finetune" else "teacher_dir": str(start_dir),
        "student_dir": str(tokenizer_dir),
    }
    trainer = build_trainer(
        classifier_loop_per_worker,
        loop_config,
        cfg,
        {"train": train_ds, "validation": val_ds},
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.checkpoint.num_to_keep,
            checkpoint_score_attribute=cfg.train.metric,
            checkpoint_score_order="min" if lower_is_better else "max",
        ),
    )
    result = trainer.fit()
    scored = [(c, m) for c, m in result.best_checkpoints or [] if cfg.train.metric in m]
    if not scored:
        raise RuntimeError(f"{job} run {run_dir} reported no checkpoint with validation metrics")
    best, best_metrics = (min if lower_is_better else max)(
        scored, key=lambda cm: (cm[1][cfg.train.metric], -cm[1]["step"])
    )
    print(
        f"best checkpoint: step {best_metrics['step']} ({cfg.train.metric} "
        f"{best_metrics[cfg.train.metric]:.4f})",
        flush=True,
    )
    export_uri = join(run_dir, "model")
    manifest_lineage = {
        **_start_lineage(cfg, start_dir, tokenizer_dir, origin),
        "dataset": {
            "source": cfg.data.source.model_dump(mode="json"),
            "sha256": labeled_fingerprint(cfg.data, cfg.train.seed),
            "splits": {
                "train": len(splits.train),
                "validation": len(splits.validation),
                "test": len(splits.test),
            },
        },
        "run": {"name": cfg.checkpoint.run_name, "dir": run_dir, "checkpoint": best.path},
    }
    with best.as_directory() as ckpt_dir:
        metrics, report = export_classifier(
            cfg,
            Path(ckpt_dir),
            start_dir,
            tokenizer_dir,
            label_names,
            splits.test,
            export_uri,
            manifest_lineage,
            {k: v for k, v in best_metrics.items() if isinstance(v, int | float)},
        )
    return FinetuneResult(run_dir, export_uri, best.path, metrics, report)


# ---------------------------------------------------------------- data


def training_frame(cfg: ClassifierJob, train: Any) -> Any:
    """The rows to train on, shuffled: the training split, plus for distillation with
    `augment.copies` the perturbed copies, marked `labeled` 0 for the teacher to label."""
    import pandas as pd

    from training.labeled import LABELED, perturbed_copies

    augment = cfg.distillation.augment if isinstance(cfg, DistillConfig) else None
    if augment and augment.copies:
        copies = perturbed_copies(
            train,
            augment.copies,
            word_dropout=augment.word_dropout,
            swap_probability=augment.swap_probability,
            seed=cfg.train.seed,
        )
        train = pd.concat(
            [train.assign(**{LABELED: 1}), copies.assign(**{LABELED: 0})], ignore_index=True
        )
        print(f"data: {len(copies)} perturbed copies for the teacher to label", flush=True)
    # Small enough to shuffle here; a Ray shuffle costs more than the data.
    return train.sample(frac=1.0, random_state=cfg.train.seed)


def tokenized_dataset(
    frame: Any, tokenizer: Any, max_length: int, extra: dict[str, np.ndarray] | None = None
) -> Any:
    """A Ray dataset of fixed-length rows: input_ids, attention_mask (padded, on the right for
    `trim_padding`: see `classifier_tokenizer`) and label, `labeled` where the frame has it, and
    the `extra` columns (one entry a row)."""
    import ray.data

    from training.labeled import LABELED

    enc = tokenizer(
        frame["text"].tolist(),
        truncation=True,
        max_length=max_length,
        padding="max_length",
        return_tensors="np",
    )
    columns = {
        "input_ids": enc["input_ids"].astype(np.int32),
        "attention_mask": enc["attention_mask"].astype(np.int8),
        "label": frame["label"].to_numpy(np.int64),
    }
    if LABELED in frame:
        columns[LABELED] = frame[LABELED].to_numpy(np.int8)
    columns |= extra or {}
    rows = zip(*columns.values(), strict=True)
    return ray.data.from_items([dict(zip(columns, row, strict=True)) for row in rows])


class TeacherLogits:
    """Ray Data batch inference: the frozen teacher's logits for each training example.

    Computed once before training, so that the workers' steps cost only the student's forward
    and backward passes, for every epoch.
    """

    def __init__(self, model_dir: str, threads: int) -> None:
        import torch
        import transformers
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar per actor
        self.torch = torch
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from training.classifier_loop import trim_padding

        with self.torch.no_grad():
            inputs = trim_padding(
                {k: self.torch.tensor(batch[k]) for k in ("input_ids", "attention_mask")}
            )
            logits = self.model(**inputs).logits.float().numpy()
        return {ROW: batch[ROW], TEACHER_LOGITS: logits}


def teacher_logits(
    frame: Any, teacher_dir: Path, max_length: int, batch_size: int, cpus: int
) -> np.ndarray:
    """The teacher's logits for each row of `frame`, in its order, from one Ray Data actor using
    `cpus` CPUs (the training workers' CPUs, free until training starts). The teacher reads the
    texts with its own tokenizer, so the student may have another. They are kept in the cache
    (`teacher_logits_path`), and a later run of the same teacher on the same texts reuses them."""
    import ray.data

    from training.classifier import classifier_tokenizer
    from training.loop import format_duration

    cached = teacher_logits_path(frame["text"].tolist(), teacher_dir, max_length)
    if cached.is_file():
        print(f"data: the teacher's logits for these texts, from {cached}", flush=True)
        return np.load(cached)
    tokenizer = classifier_tokenizer(teacher_dir)
    # Shortest texts first, so that each batch pads little; the row numbers restore the
    # frame's order.
    lengths = frame["text"].str.len().to_numpy()
    order = np.argsort(lengths, kind="stable")
    ds = tokenized_dataset(frame.iloc[order], tokenizer, max_length, {ROW: order})
    scored = ds.map_batches(
        TeacherLogits,
        fn_constructor_kwargs={"model_dir": str(teacher_dir), "threads": cpus},
        batch_size=max(32, batch_size),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=cpus,
    )
    # The texts go shortest first, so the work done is measured in characters, not texts.
    work_done = np.cumsum(lengths[order])
    parts, done = [], 0
    started = reported = time.monotonic()
    for part in scored.iter_batches(batch_size=None, batch_format="numpy"):
        parts.append(part)
        done += len(part[ROW])
        now = time.monotonic()
        if now - reported >= LABELLING_REPORT_S or done == len(frame):
            reported = now
            share = work_done[done - 1] / max(work_done[-1], 1)
            eta = (now - started) * (1 - share) / max(share, 1e-9)
            print(
                f"teacher: labelled {done:,}/{len(frame):,} texts | "
                f"{done / max(now - started, 1e-9):,.0f} texts/s | eta {format_duration(eta)}",
                flush=True,
            )
    rows = np.concatenate([p[ROW] for p in parts])
    logits = np.empty((len(frame), parts[0][TEACHER_LOGITS].shape[1]), dtype=np.float32)
    logits[rows] = np.concatenate([p[TEACHER_LOGITS] for p in parts])
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".npy", delete=False) as tmp:
        np.save(tmp, logits)
    os.replace(tmp.name, cached)  # whole or not at all
    return logits


def teacher_logits_path(texts: list[str], teacher_dir: Path, max_length: int) -> Path:
    """Where the teacher's logits for `texts` are kept: named by a digest of the teacher's
    files, the texts and `max_length`, so that any change to one of them computes them anew."""
    import hashlib

    from training.assets import cache_dir
    from training.checkpoint import sha256_file

    digest = hashlib.sha256(f"{max_length}\0".encode())
    for path in sorted(p for p in teacher_dir.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(teacher_dir)}\0{sha256_file(path)}\0".encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    return cache_dir() / "teacher-logits" / f"{digest.hexdigest()[:32]}.npy"


# ---------------------------------------------------------------- export


def export_classifier(
    cfg: ClassifierJob,
    checkpoint_dir: Path,
    start_dir: Path,
    tokenizer_dir: Path,
    label_names: list[str],
    test: Any,
    export_uri: str,
    lineage: dict[str, Any],
    validation: dict[str, float],
) -> tuple[dict[str, Any], str]:
    """Consolidate a checkpoint into a Hugging Face classifier, evaluate it on the test split,
    and publish it with its report and `tokenizer_dir`'s tokenizer. Returns the manifest metrics
    and the printed report."""
    import time

    import torch
    import transformers

    from training.checkpoint import consolidated_state_dict, load_weights, write_export
    from training.classifier import classifier_tokenizer
    from training.evaluation import format_classification_report, format_confusion_matrix
    from training.inference import LoadedModel, evaluate_classifier

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = build_classifier(cfg, start_dir, tokenizer_dir, label_names)
    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed narrates the consolidation
        load_weights(model, consolidated_state_dict(checkpoint_dir))
    model.eval()
    tokenizer = classifier_tokenizer(tokenizer_dir)
    torch.set_num_threads(os.cpu_count() or 1)
    loaded = LoadedModel(model, tokenizer, "classification", label_names, {}, tokenizer_dir)
    evaluation = evaluate_classifier(
        loaded, test["text"].tolist(), test["label"].tolist(), max_length=cfg.data.max_length
    )
    report = format_classification_report(evaluation["report"])
    confusion = format_confusion_matrix(evaluation["confusion_matrix"], label_names)
    metrics = {
        **evaluation["metrics"],  # test split
        "validation_loss": validation["validation_loss"],
        "validation_accuracy": validation["accuracy"],
        "validation_macro_f1": validation["macro_f1"],
        "best_step": validation["step"],
    }
    manifest = {
        "task": "classification",
        "architecture": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "label_names": label_names,
        "max_length": cfg.data.max_length,
        "metrics": metrics,
        "evaluation": {"split": "test", "examples": evaluation["examples"]},
        "lineage": lineage,
        "recipe": cfg.model_dump(mode="json"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    extra = {
        "evaluation.json": json.dumps(evaluation, indent=2),
        "classification_report.txt": f"{report}\n\nconfusion matrix (rows: true)\n{confusion}\n",
    }
    with tempfile.TemporaryDirectory(prefix="fmstack-export-") as tmp:
        write_export(Path(tmp), model, tokenizer, manifest, extra)
        publish_directory(Path(tmp), export_uri, manifest_last=MANIFEST)
    print(f"\ntest split ({evaluation['examples']} examples):\n{report}\n\n{confusion}", flush=True)
    print(f"exported model to {export_uri}", flush=True)
    return metrics, report


def build_classifier(
    cfg: ClassifierJob, start_dir: Path, student_dir: Path, label_names: list[str]
) -> Any:
    """The architecture the workers trained (its weights are replaced by the checkpoint's)."""
    from transformers import AutoModelForSequenceClassification

    from training.classifier import classifier_from_pretrained, student_from_teacher

    if isinstance(cfg, FinetuneConfig):
        return classifier_from_pretrained(start_dir, label_names, cfg.model.dropout)
    if pretrained_student(cfg):
        return classifier_from_pretrained(student_dir, label_names)
    teacher = AutoModelForSequenceClassification.from_pretrained(start_dir)
    student, _ = student_from_teacher(teacher, cfg.student)
    return student


def _start_lineage(
    cfg: ClassifierJob, start_dir: Path, student_dir: Path, origin: dict[str, Any] | None
) -> dict[str, Any]:
    parent = _model_lineage(source_model(cfg), start_dir, origin)
    if isinstance(cfg, FinetuneConfig):
        return {"base_model": parent, "teacher": None}
    if student := pretrained_student(cfg):
        return {"teacher": parent, "base_model": _model_lineage(student, student_dir, None)}
    # A student built from the teacher descends from the teacher's own base model.
    base = _manifest(start_dir).get("lineage", {}).get("base_model")
    return {"teacher": parent, "base_model": base}


def _model_lineage(ref: str, path: Path, origin: dict[str, Any] | None) -> dict[str, Any]:
    """A start model as a new model's lineage names it: its reference and directory, and for an
    fmstack export its task, metrics and run."""
    entry: dict[str, Any] = {"ref": ref, "path": str(path), **(origin or {})}
    if manifest := _manifest(path):
        entry |= {
            "task": manifest.get("task"),
            "metrics": manifest.get("metrics", {}),
            "run": manifest.get("lineage", {}).get("run"),
        }
    return entry


def _manifest(model_dir: Path) -> dict[str, Any]:
    """An fmstack export's manifest; empty for a plain Hugging Face directory."""
    from training.checkpoint import read_manifest

    return read_manifest(model_dir) if (model_dir / MANIFEST).is_file() else {}
