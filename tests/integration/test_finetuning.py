"""Fine-tuning and distillation for real: Ray Train, DeepSpeed on gloo, 2 CPU workers."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from transformers import AutoTokenizer

from cluster.evaluate import compare_models, held_out_blocks
from tests.conftest import tiny_causal_distill_recipe, tiny_classifier_recipe
from training import (
    DistillConfig,
    FinetuneConfig,
    classify,
    load_model,
    parse_recipe,
    read_manifest,
    run_finetune,
    run_pretraining,
    verify_files,
)
from training.data import build_datasets, read_documents
from training.evaluation import classification_report
from training.finetune import teacher_logits, teacher_logits_path
from training.labeled import load_splits

pytestmark = pytest.mark.integration


def test_finetune_then_distill_a_classifier(ray_cluster, tiny_encoder, tmp_path, capsys):
    recipe = tiny_classifier_recipe(tmp_path, str(tiny_encoder))
    teacher_cfg = parse_recipe(recipe, schema=FinetuneConfig)
    teacher = run_finetune(teacher_cfg)

    # The export loads through the shared inference path, and its saved report is what the
    # model predicts on the held-out test split.
    verify_files(teacher.model_dir)
    manifest = read_manifest(teacher.model_dir)
    assert manifest["task"] == "classification"
    assert manifest["label_names"] == ["rotten", "fresh"]
    assert manifest["lineage"]["base_model"]["path"] == str(tiny_encoder)
    assert sum(manifest["lineage"]["dataset"]["splits"].values()) == 320
    loaded = load_model(teacher.model_dir)
    test = load_splits(teacher_cfg.data, teacher_cfg.train.seed).test
    predictions = classify(loaded, test["text"].tolist(), max_length=32).argmax(-1).tolist()
    report = classification_report(test["label"].tolist(), predictions, loaded.label_names)
    saved = json.loads(Path(teacher.model_dir, "evaluation.json").read_text())
    assert saved["report"]["accuracy"] == pytest.approx(report["accuracy"])
    assert saved["report"]["fresh"] == pytest.approx(report["fresh"])
    # The confusion matrix saved with the model: rows are the true labels, the diagonal is
    # what the accuracy counts.
    matrix = saved["confusion_matrix"]
    assert [sum(row) for row in matrix] == [test["label"].tolist().count(i) for i in (0, 1)]
    assert (matrix[0][0] + matrix[1][1]) / len(test) == pytest.approx(report["accuracy"])
    saved_text = (Path(teacher.model_dir) / "classification_report.txt").read_text()
    assert "confusion matrix (rows: true)" in saved_text
    assert manifest["metrics"]["accuracy"] == pytest.approx(report["accuracy"])
    assert "precision    recall  f1-score   support" in teacher.report
    assert manifest["metrics"]["best_step"] >= 1

    # Distil into a 1-layer student from the teacher's logits, precomputed by Ray Data batch
    # inference for the training split and one perturbed copy of it, with ZeRO-3.
    student_recipe = {
        key: value for key, value in recipe.items() if key not in ("model", "checkpoint")
    }
    student_cfg = parse_recipe(
        {
            **student_recipe,
            "distillation": {
                "teacher": teacher.model_dir,
                "temperature": 2.0,
                "alpha": 0.8,
                "augment": {"copies": 1},
            },
            "student": {"num_layers": 1},
            "deepspeed": {"zero_stage": 3},
            # A validation pass every 8 of 56 steps, stopping at the first that is no better.
            "train": {**recipe["train"], "eval_every": 8, "early_stopping_patience": 1},
            "checkpoint": {"storage_path": str(tmp_path / "runs"), "run_name": "tiny-student"},
        },
        schema=DistillConfig,
    )
    capsys.readouterr()
    student = run_finetune(student_cfg)
    train_rows = manifest["lineage"]["dataset"]["splits"]["train"]
    printed = capsys.readouterr().out
    assert f"data: {train_rows} perturbed copies for the teacher to label" in printed
    s_manifest = read_manifest(student.model_dir)
    assert s_manifest["lineage"]["teacher"]["path"] == teacher.model_dir
    assert s_manifest["lineage"]["base_model"]["path"] == str(tiny_encoder)
    student_model = load_model(student.model_dir)
    assert student_model.model.config.num_hidden_layers == 1
    assert student_model.parameters < loaded.parameters
    assert 0.0 <= student.metrics["accuracy"] <= 1.0
    # Early stopping: the run ended before its 56 steps, one pass after its best checkpoint,
    # which is the one exported.
    stop = re.search(r"early stopping at step (\d+): .* \(best at step (\d+)\)", printed)
    assert stop, printed[-2000:]
    stopped, best = int(stop[1]), int(stop[2])
    assert stopped < 56 and best == stopped - 8 == s_manifest["metrics"]["best_step"]


def test_a_causal_lm_classifier_teaches_an_encoder_with_its_own_tokenizer(
    ray_cluster, tiny_causal_lm_dir, tiny_encoder, tmp_path, capsys
):
    # A Llama fine-tuned as a classifier (its head on the last token) ...
    recipe = tiny_classifier_recipe(
        tmp_path,
        str(tiny_causal_lm_dir),
        data={"max_examples": 160},
        train={"epochs": 1},
        checkpoint={"run_name": "tiny-llama-classifier"},
    )
    teacher = run_finetune(parse_recipe(recipe, schema=FinetuneConfig))
    manifest = read_manifest(teacher.model_dir)
    assert manifest["architecture"] == "llama"
    assert manifest["lineage"]["base_model"]["path"] == str(tiny_causal_lm_dir)
    teacher_model = load_model(teacher.model_dir)
    assert teacher_model.task == "classification"

    # ... labels the texts with its tokenizer, in the frame's order whatever order Ray Data
    # returns them in ...
    cfg = parse_recipe(recipe, schema=FinetuneConfig)
    texts = load_splits(cfg.data, cfg.train.seed).train.head(40)
    capsys.readouterr()
    logits = teacher_logits(texts, Path(teacher.model_dir), 32, batch_size=8, cpus=1)
    assert "teacher: labelled 40/40 texts" in capsys.readouterr().out  # a progress line
    probabilities = classify(teacher_model, texts["text"].tolist(), max_length=32)
    from_logits = torch.softmax(torch.from_numpy(logits), -1).numpy()
    np.testing.assert_allclose(from_logits, probabilities, atol=1e-4, rtol=1e-4)
    # A second run of the same teacher on the same texts reads them from the cache.
    cached = teacher_logits_path(texts["text"].tolist(), Path(teacher.model_dir), 32)
    assert cached.is_file()
    capsys.readouterr()
    again = teacher_logits(texts, Path(teacher.model_dir), 32, batch_size=8, cpus=1)
    assert f"the teacher's logits for these texts, from {cached}" in capsys.readouterr().out
    np.testing.assert_array_equal(again, logits)
    assert teacher_logits_path(texts["text"].tolist(), Path(teacher.model_dir), 24) != cached
    cached.unlink()

    # ... for a pretrained encoder that reads them with its own.
    student_recipe = {key: value for key, value in recipe.items() if key != "model"}
    student_cfg = parse_recipe(
        {
            **student_recipe,
            "distillation": {"teacher": teacher.model_dir, "alpha": 0.7, "augment": {"copies": 1}},
            "student": {"init": "pretrained", "base": str(tiny_encoder)},
            "checkpoint": {"storage_path": str(tmp_path / "runs"), "run_name": "tiny-bert-student"},
        },
        schema=DistillConfig,
    )
    student = run_finetune(student_cfg)
    s_manifest = read_manifest(student.model_dir)
    assert s_manifest["architecture"] == "bert"
    assert s_manifest["lineage"]["teacher"]["path"] == teacher.model_dir
    assert s_manifest["lineage"]["teacher"]["metrics"] == manifest["metrics"]
    assert s_manifest["lineage"]["base_model"]["path"] == str(tiny_encoder)
    student_tokenizer = AutoTokenizer.from_pretrained(student.model_dir)
    assert student_tokenizer.get_vocab() == AutoTokenizer.from_pretrained(tiny_encoder).get_vocab()
    assert 0.0 <= student.metrics["accuracy"] <= 1.0


def test_causal_lm_distillation_from_a_frozen_teacher(ray_cluster, tmp_path):
    recipe, teacher_dir = tiny_causal_distill_recipe(tmp_path, "tiny-causal-student")
    result = run_pretraining(parse_recipe(recipe))
    manifest = read_manifest(result.model_dir)
    assert manifest["lineage"]["teacher"]["path"] == str(teacher_dir)
    student_tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    assert student_tokenizer.get_vocab() == AutoTokenizer.from_pretrained(teacher_dir).get_vocab()
    assert result.metrics["step"] == 4

    # `fmstack eval` finds the run's validation blocks again, and scores student and teacher
    # on them.
    cfg = parse_recipe(recipe)
    _, validation = build_datasets(cfg, read_documents(cfg.data), result.model_dir)
    trained_on = np.concatenate(
        [b["input_ids"] for b in validation.iter_batches(batch_size=None, batch_format="numpy")]
    )
    models = [load_model(result.model_dir), load_model(teacher_dir)]
    refs = [result.model_dir, str(teacher_dir)]
    held_out = held_out_blocks(refs, models, None)
    assert held_out.split == "validation" and np.array_equal(held_out.blocks, trained_on)
    out = tmp_path / "eval.json"
    compare_models(refs, None, 1, None, out, Console(file=io.StringIO()))
    student_eval, teacher_eval = json.loads(out.read_text())
    assert student_eval["blocks"] == teacher_eval["blocks"] == len(trained_on)
    assert student_eval["parameters"] < teacher_eval["parameters"]
    for evaluation in (student_eval, teacher_eval):
        assert 0 < evaluation["loss"] < 10 and evaluation["latency"]["batch_32"]["p50_ms"] > 0
        assert evaluation["latency"]["generate"]["tokens_per_second"] > 0


def test_users_labeled_files_read_through_ray_data(ray_cluster, tmp_path):
    """CSV (as a glob over two files), JSONL and Parquet give the same examples."""
    import pandas as pd

    from training.config import LabeledSourceConfig
    from training.labeled import read_labeled

    rows = pd.DataFrame({"review": [f"text {i}" for i in range(6)], "stars": [0, 1] * 3})
    rows.iloc[:3].to_csv(tmp_path / "part-1.csv", index=False)
    rows.iloc[3:].to_csv(tmp_path / "part-2.csv", index=False)
    rows.to_json(tmp_path / "all.jsonl", orient="records", lines=True)
    rows.to_parquet(tmp_path / "all.parquet")
    expected = sorted(zip(rows["review"], rows["stars"].astype(str), strict=True))
    for kind, path in (
        ("csv", tmp_path / "part-*.csv"),
        ("jsonl", tmp_path / "all.jsonl"),
        ("parquet", tmp_path / "all.parquet"),
    ):
        src = LabeledSourceConfig(
            kind=kind, path=str(path), text_column="review", label_column="stars"
        )
        frame = read_labeled(src)
        assert sorted(zip(frame["text"], frame["label"], strict=True)) == expected, kind
