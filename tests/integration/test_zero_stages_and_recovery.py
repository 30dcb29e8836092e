"""ZeRO stages and recovery: Ray Train, DeepSpeed on gloo, 2 CPU workers, tiny models.

Kept apart from test_pretraining.py, whose module-long Prometheus scrapes Ray's metrics agent every
second: on 2 cores that scraping slowed these jobs by about 40%.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from cluster.evaluate import compare_models, held_out_blocks
from training import load_model, parse_recipe, read_manifest, run_pretraining, verify_files
from training.data import build_datasets, read_documents

pytestmark = pytest.mark.integration


# Summation order differs between all-reduce (ZeRO-0) and reduce-scatter (ZeRO-2/3) in fp32,
# so per-step losses agree to float rounding, not bit for bit.
ZERO_LOSS_TOLERANCE = 1e-4


def test_masked_lm_on_own_files_matches_across_zero_stages_and_exports(
    ray_cluster, recipe_factory, tiny_text, tmp_path
):
    # The user's own files, half the rows as JSONL (a named text column), half as Parquet.
    lines = tiny_text.read_text().splitlines()
    half = len(lines) // 2
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"body": line}) + "\n" for line in lines[:half]))
    parquet = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": lines[half:]}), parquet)
    sources = [
        {"kind": "jsonl", "path": str(jsonl), "text_column": "body"},
        {"kind": "parquet", "path": str(parquet)},
    ]
    losses, results = {}, {}
    for stage in (0, 2, 3):
        recipe = recipe_factory(
            data={"sources": sources},
            objective="masked_lm",
            model={"arch": "bert", "size": "tiny"},
            tokenizer={"kind": "wordpiece", "vocab_size": 384},
            # Built whole at every stage: a partitioned build draws the same seed's weights in
            # another order.
            deepspeed={"zero_stage": stage, "zero_init": False},
            # fp32 at every stage: `auto` picks bf16 for ZeRO 1-3 on CPUs with AMX.
            train={"max_steps": 4, "log_every": 2, "eval_every": 2, "precision": "fp32"},
            checkpoint={"run_name": f"zero{stage}", "every_steps": 2},
        )
        results[stage] = result = run_pretraining(parse_recipe(recipe))
        assert [m["step"] for m in result.history] == [2, 4]
        losses[stage] = [result.metrics["initial_validation_loss"]] + [
            m[key] for m in result.history for key in ("train_loss", "validation_loss")
        ]
    assert losses[0][0] > losses[0][-1]
    for stage in (2, 3):
        for a, b in zip(losses[0], losses[stage], strict=True):
            assert a == pytest.approx(b, abs=ZERO_LOSS_TOLERANCE), (stage, losses)

    # ZeRO-3's export is whole: a plain masked LM with its WordPiece tokenizer.
    model_dir = results[3].model_dir
    verify_files(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(["the whale [MASK] the storm"], return_tensors="pt")
    assert batch["input_ids"][0, 0] == tokenizer.cls_token_id
    with torch.no_grad():
        assert model(**batch).logits.shape[-1] == len(tokenizer)

    # `fmstack eval` rebuilds the run's validation blocks ([CLS] ... [SEP]) and scores the
    # ZeRO-0 and ZeRO-3 exports on the same masked tokens: they agree as their losses did.
    cfg = parse_recipe(recipe)
    _, validation = build_datasets(cfg, read_documents(cfg.data), model_dir)
    trained_on = np.concatenate(
        [b["input_ids"] for b in validation.iter_batches(batch_size=None, batch_format="numpy")]
    )
    refs = [results[0].model_dir, model_dir]
    held_out = held_out_blocks(refs, [load_model(ref) for ref in refs], None)
    assert np.array_equal(held_out.blocks, trained_on)
    assert (held_out.blocks[:, 0] == tokenizer.cls_token_id).all()
    out = tmp_path / "eval.json"
    compare_models(refs, None, 1, None, out, Console(file=io.StringIO()))
    zero0, zero3 = json.loads(out.read_text())
    assert zero0["task"] == "masked_lm" and zero0["tokens"] == zero3["tokens"] > 0
    assert zero0["loss"] == pytest.approx(zero3["loss"], abs=1e-3)
    assert 0 <= zero3["accuracy"] <= 1


def test_worker_failure_resumes_from_latest_checkpoint(ray_cluster, recipe_factory):
    # ZeRO-3 with the model built partitioned: the restarted workers build it the same way and
    # load their shards; the export gathers the whole model.
    recipe = recipe_factory(
        model={"arch": "llama", "size": "tiny"},
        deepspeed={"zero_stage": 3, "zero_init": True},
        train={"max_steps": 10, "fail_once_at_step": 7},
        checkpoint={"run_name": "crash", "every_steps": 3, "max_failures": 1},
    )
    result = run_pretraining(parse_recipe(recipe))
    assert result.metrics["resumed_from_step"] == 6
    assert result.metrics["step"] == 10
    assert result.metrics["validation_loss"] < result.metrics["initial_validation_loss"]
    verify_files(result.model_dir)
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    parameters = sum(p.numel() for p in model.parameters())
    assert read_manifest(result.model_dir)["parameters"] == parameters
