"""`fmstack eval` on a user's labeled data, its splits and refusals, and causal LMs' loss and
refusals, without Ray (the reading step is Ray Data's, tested in tests/integration; here it is
stubbed)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cluster.cli import app
from cluster.evaluate import EvalError, labeled_source
from tests.conftest import (
    export_tiny_causal_lm,
    export_tiny_classifier,
    tiny_causal_distill_recipe,
)

# 40 distinct reviews and one repeat, which is scored once.
ROWS = pd.DataFrame(
    {
        "text": [f"review number {i}" for i in range(40)] + ["review number 0"],
        "label": ["fresh", "rotten"] * 20 + ["fresh"],
    }
)


def test_the_data_format_follows_the_extension_or_the_option():
    assert labeled_source("data/part-*.csv", None, "text", "label").kind == "csv"
    assert labeled_source("s3://bucket/eval.jsonl", None, "review", "stars").text_column == "review"
    assert labeled_source("data/", "parquet", "text", "label").kind == "parquet"
    with pytest.raises(EvalError, match="name its format with --data-format"):
        labeled_source("data/eval", None, "text", "label")
    with pytest.raises(EvalError, match="--data-format xml"):
        labeled_source("eval.xml", "xml", "text", "label")


@pytest.fixture
def user_data(monkeypatch, tmp_path: Path) -> Path:
    from training import labeled

    path = tmp_path / "eval.csv"
    path.write_text("text,label\n")  # what the check before reading looks for
    monkeypatch.setattr(labeled, "read_labeled", lambda source: ROWS.copy())
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return export_tiny_classifier(tmp_path / "model", seed=0)  # no data recipe of its own


def _eval(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", *args, "--threads", "1"])
    return result.exit_code, result.output


def test_eval_scores_every_row_of_the_users_data(user_data, model, tmp_path):
    out = tmp_path / "results.json"
    code, output = _eval(
        str(model), "--data", str(user_data), "--split", "all", "--output", str(out)
    )
    assert code == 0, output
    (result,) = json.loads(out.read_text())
    assert result["split"] == "all" and result["examples"] == 40 and result["threads"] == 1
    assert result["report"]["weighted avg"]["support"] == 40
    assert sum(map(sum, result["confusion_matrix"])) == 40
    for batch in ("batch_1", "batch_32"):
        assert result["latency"][batch]["p50_ms"] > 0
    assert "all split, 1 threads" in output


def test_eval_of_a_teacher_and_its_student_weighs_a_cascade(user_data, model, tmp_path):
    student = export_tiny_classifier(tmp_path / "student", seed=1, layers=1)
    out = tmp_path / "results.json"
    code, output = _eval(
        str(model), str(student), "--data", str(user_data), "--split", "all", "--output", str(out)
    )
    assert code == 0, output
    teacher_result, student_result = json.loads(out.read_text())
    assert "cascade" not in teacher_result
    cascade = student_result["cascade"]
    assert cascade["fallback"] == str(model) and cascade["relative_cost"] > 0
    rows = cascade["thresholds"]
    assert [r["threshold"] for r in rows] == sorted(r["threshold"] for r in rows)
    escalated = [r["escalated"] for r in rows]
    assert escalated == sorted(escalated)  # a higher threshold escalates no fewer texts
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert "below the threshold" in output and "escalated" in output


def test_eval_compiles_classifiers_on_request(user_data, model, tmp_path):
    out = tmp_path / "results.json"
    args = (str(model), "--data", str(user_data), "--split", "all", "--output", str(out))
    code, output = _eval(*args)
    assert code == 0, output
    (eager,) = json.loads(out.read_text())
    code, output = _eval(*args, "--compile")
    assert code == 0, output
    (compiled,) = json.loads(out.read_text())
    assert (compiled["compiled"], eager["compiled"]) == (True, False)
    assert compiled["report"] == eager["report"]  # the same predictions
    assert "all split, 1 threads, compiled" in output


def test_eval_says_when_a_model_does_not_compile(user_data, model, monkeypatch):
    def no_compiler(loaded):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr("training.inference.compile_classifier", no_compiler)
    code, output = _eval(str(model), "--data", str(user_data), "--split", "all", "--compile")
    assert code == 2, output
    assert f"--compile: {model} did not compile (RuntimeError: InvalidCxxCompiler" in output
    assert "leave --compile out" in output


def test_eval_takes_a_split_of_the_users_data(user_data, model, tmp_path):
    out = tmp_path / "results.json"
    code, output = _eval(str(model), "--data", str(user_data), "--output", str(out))
    assert code == 0, output
    assert json.loads(out.read_text())[0]["examples"] == 8  # the 20% test split


def test_eval_says_what_is_missing(user_data, model, tmp_path):
    code, output = _eval(str(model))
    assert code == 2 and "no data recipe" in output and "--data" in output
    code, output = _eval(str(model), "--split", "all")
    assert code == 2 and "--split all needs --data" in output
    code, output = _eval(str(model), "--data", str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv does not exist" in output
    ROWS.loc[0, "label"] = "meh"
    try:
        code, output = _eval(str(model), "--data", str(user_data), "--split", "all")
    finally:
        ROWS.loc[0, "label"] = "fresh"
    assert code == 2 and "labels ['meh'] are not among the label names" in output


# ---------------------------------------------------------------- causal language models


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory) -> Path:
    return export_tiny_causal_lm(tmp_path_factory.mktemp("causal"))  # no data recipe


def test_causal_lm_loss_is_the_models_own_next_token_loss(causal_lm):
    import numpy as np
    import torch

    from training import load_model
    from training.inference import evaluate_causal_lm, measure_block_latency, measure_generation

    loaded = load_model(causal_lm)
    blocks = np.random.default_rng(0).integers(0, 1000, size=(5, 16), dtype=np.int32)
    result = evaluate_causal_lm(loaded, blocks, batch_size=2)
    ids = torch.from_numpy(blocks).long()
    with torch.no_grad():
        expected = loaded.model(input_ids=ids, labels=ids).loss.item()
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["perplexity"] == pytest.approx(np.exp(expected), rel=1e-5)
    assert result["tokens"] == 5 * 15 and result["blocks"] == 5
    timing = measure_block_latency(loaded, blocks, batch_size=4, batches=2)
    assert timing["tokens_per_second"] == pytest.approx(timing["examples_per_second"] * 16)
    decoding = measure_generation(loaded, blocks, prompt_tokens=8, new_tokens=4, runs=2)
    assert decoding["prompt_tokens"] == 8 and decoding["new_tokens"] == 4
    assert decoding["tokens_per_second"] == pytest.approx(4000 / decoding["p50_ms"])


def test_eval_of_causal_lms_says_what_it_needs(causal_lm, model, tmp_path):
    code, output = _eval(str(causal_lm))
    assert code == 2 and "no data recipe" in output and "--data" in output
    code, output = _eval(str(causal_lm), "--split", "test")
    assert code == 2 and "validation blocks only" in output
    code, output = _eval(str(causal_lm), "--data", str(tmp_path / "held-out"))
    assert code == 2 and "--data-format text|jsonl|csv|parquet" in output
    code, output = _eval(str(causal_lm), "--data", str(tmp_path / "held-out.txt"))
    assert code == 2 and "held-out.txt does not exist" in output
    # A classifier and a causal LM do not compare; nor do two different tokenizers.
    code, output = _eval(str(model), str(causal_lm))
    assert code == 2 and "is a causal_lm model" in output
    code, output = _eval(str(causal_lm), "--compile")
    assert code == 2 and "--compile applies to classifiers" in output
    _, other = tiny_causal_distill_recipe(tmp_path, "other")  # a Llama with its own tokenizer
    code, output = _eval(str(causal_lm), str(other), "--data", str(tmp_path / "held-out.txt"))
    assert code == 2 and "has another tokenizer" in output


def test_masked_lm_loss_counts_the_masked_tokens_alike_for_every_model(tiny_encoder, tmp_path):
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    from training import load_model
    from training.inference import evaluate_masked_lm
    from training.objectives import IGNORE_INDEX, masked_lm_inputs

    torch.manual_seed(0)
    BertForMaskedLM.from_pretrained(tiny_encoder).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    tokenizer = loaded.tokenizer
    rng = np.random.default_rng(0)
    body = rng.integers(1000, 2000, size=(6, 14))
    cls = np.full((6, 1), tokenizer.cls_token_id)
    sep = np.full((6, 1), tokenizer.sep_token_id)
    blocks = np.concatenate([cls, body, sep], axis=1)
    result = evaluate_masked_lm(loaded, blocks, probability=0.3, seed=1, batch_size=6)
    assert result == evaluate_masked_lm(loaded, blocks, probability=0.3, seed=1, batch_size=6)
    # The same masks, drawn here once more: the loss is the model's own on them.
    inputs = masked_lm_inputs(
        torch.from_numpy(blocks).long(),
        mask_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        special_ids=tokenizer.all_special_ids,
        probability=0.3,
        generator=torch.Generator().manual_seed(1),
    )
    with torch.no_grad():
        expected = loaded.model(**inputs).loss.item()
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["tokens"] == int((inputs["labels"] != IGNORE_INDEX).sum()) > 0
    assert 0 <= result["accuracy"] <= 1
