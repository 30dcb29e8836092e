"""The whole flow at tiny scale, through the `fmstack` command line a user types:
pretrain a masked LM -> fine-tune it for sentiment -> distill a student from the registered
teacher -> promote with a metric gate -> evaluate both side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app
from cluster.registry import Registry
from tests.conftest import tiny_classifier_recipe, tiny_recipe

pytestmark = pytest.mark.e2e


def _fmstack(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"fmstack {' '.join(args)} failed:\n{result.output}"
    return result.output


def _write(path: Path, recipe: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_pretrain_finetune_distill_register_promote_evaluate(ray_cluster, tmp_path, monkeypatch):
    registry_root = tmp_path / "registry"
    monkeypatch.setenv("FMSTACK_REGISTRY", str(registry_root))
    runs = {"storage_path": str(tmp_path / "runs")}

    pretrain = tiny_recipe(
        tmp_path,
        objective="masked_lm",
        model={"arch": "bert", "size": "tiny"},
        tokenizer={"kind": "wordpiece", "vocab_size": 384},
        train={"max_steps": 6, "eval_every": 6},
        checkpoint={**runs, "run_name": "e2e-mlm"},
    )
    _fmstack("pretrain", "--config", _write(tmp_path / "pretrain.yaml", pretrain))
    encoder = tmp_path / "runs" / "e2e-mlm" / "model"
    assert (encoder / "fmstack.json").is_file()

    finetune = tiny_classifier_recipe(
        tmp_path,
        str(encoder),
        checkpoint={**runs, "run_name": "e2e-teacher"},
        registry={"name": "e2e-sentiment", "alias": "candidate"},
    )
    out = _fmstack("finetune", "--config", _write(tmp_path / "finetune.yaml", finetune))
    assert "precision    recall  f1-score   support" in out
    assert "registered:  e2e-sentiment@1" in out

    distill = {k: v for k, v in finetune.items() if k != "model"} | {
        "distillation": {
            "teacher": "models:/e2e-sentiment@candidate",
            "teacher_logits": "in_worker",
            "hidden_weight": 0.1,
        },
        "student": {"num_layers": 1},
        "checkpoint": {**runs, "run_name": "e2e-student"},
        "registry": {"name": "e2e-sentiment-student", "alias": "candidate"},
    }
    _fmstack("distill", "--config", _write(tmp_path / "distill.yaml", distill))

    registry = Registry(str(registry_root))
    student = registry.get("e2e-sentiment-student@candidate")
    lineage = student.manifest["lineage"]
    assert lineage["teacher"]["registry"]["version"] == "e2e-sentiment@1"
    assert lineage["base_model"]["path"] == str(encoder)

    # Promotion is gated on the student's own test metrics.
    refused = CliRunner().invoke(
        app, ["models", "promote", "e2e-sentiment-student@1", "--require", "accuracy>=1.01"]
    )
    assert refused.exit_code != 0 and "accuracy" in refused.output
    _fmstack("models", "promote", "e2e-sentiment-student@1", "--require", "accuracy>=0.0")
    assert registry.aliases("e2e-sentiment-student")["production"] == 1
    assert "e2e-sentiment@1" in _fmstack("models", "show", "e2e-sentiment-student@production")

    results = tmp_path / "eval.json"
    out = _fmstack(
        "eval",
        "models:/e2e-sentiment@candidate",
        "models:/e2e-sentiment-student@production",
        "--max-examples",
        "32",
        "--output",
        str(results),
    )
    rows = json.loads(results.read_text())
    assert [r["model"] for r in rows] == [
        "models:/e2e-sentiment@candidate",
        "models:/e2e-sentiment-student@production",
    ]
    assert rows[1]["parameters"] < rows[0]["parameters"]
    assert all(r["examples"] == 32 for r in rows)
    assert out.count("precision    recall  f1-score   support") == 2  # one report per model
