"""The whole flow at tiny scale, through the `fmstack` command line a user types:
pretrain a masked LM -> fine-tune it for sentiment -> distill a student from the registered
teacher -> promote with a metric gate -> evaluate both side by side -> serve both (the student
first) -> promote a new student version under the running application -> count the requests in a
real Prometheus."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app
from cluster.registry import Registry
from tests.conftest import free_port, tiny_classifier_recipe, tiny_recipe

pytestmark = pytest.mark.e2e


def _fmstack(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"fmstack {' '.join(args)} failed:\n{result.output}"
    return result.output


def _write(path: Path, recipe: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _classify_requests_exported(metrics_url: str) -> float:
    """Sum of Ray's exported fmstack_serve_requests_total{route="classify"} samples."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(r"^ray_fmstack_serve_requests_total\{([^}]*)\} (\S+)$", re.M)
    return sum(float(v) for labels, v in pattern.findall(text) if 'route="classify"' in labels)


def test_pretrain_finetune_distill_register_promote_evaluate_serve_scrape(
    ray_cluster, prometheus, tmp_path, monkeypatch
):
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
    assert rows[1]["cascade"]["fallback"] == "models:/e2e-sentiment@candidate"  # thresholds

    # Serve: the student answers first, texts it is unsure of go on to the teacher.
    serve_config = {
        "registry": str(registry_root),
        "http": {"host": "127.0.0.1", "port": free_port()},
        "variants": {
            "full": {"model": "models:/e2e-sentiment@candidate", "num_cpus": 0.1},
            "distilled": {"model": "models:/e2e-sentiment-student@production", "num_cpus": 0.1},
        },
        "routes": {
            "classify": {"policy": "cascade", "variant": "distilled", "fallback": "full"},
        },
    }
    serve_path = _write(tmp_path / "serve.yaml", serve_config)
    _fmstack("serve", "up", "--config", serve_path, "--address", ray_cluster)
    base = f"http://127.0.0.1:{serve_config['http']['port']}"
    try:
        import ray

        node = next(n for n in ray.nodes() if n["Alive"])
        metrics_target = f"127.0.0.1:{node['MetricsExportPort']}"
        before = _classify_requests_exported(f"http://{metrics_target}/metrics")
        texts = ["A gripping, beautifully acted film.", "Dull, overlong and badly written."]
        sent = 0
        for _ in range(3):
            answer = _post(f"{base}/v1/classify", {"texts": texts})
            sent += 1
            assert len(answer["predictions"]) == len(texts)
            assert answer["version"] == "e2e-sentiment-student/1"

        # A retrained student (here: the same export registered again) is promoted on the
        # running application; its replicas reload in place.
        _fmstack(
            "models",
            "register",
            str(tmp_path / "runs" / "e2e-student" / "model"),
            "--name",
            "e2e-sentiment-student",
        )
        out = _fmstack(
            "serve",
            "promote",
            "distilled",
            "2",
            "--require",
            "accuracy>=0.0",
            "--address",
            ray_cluster,
            "--timeout",
            "120",
        )
        assert "now serves e2e-sentiment-student/2" in " ".join(out.split())
        for _ in range(2):
            assert _post(f"{base}/v1/classify", {"texts": texts})["version"] == (
                "e2e-sentiment-student/2"
            )
            sent += 1
        models = _get_json(f"{base}/v1/models")
        assert "e2e-sentiment-student/2" in json.dumps(models)

        # A real Prometheus scrapes Ray's metrics agent and counts exactly what was sent.
        prometheus_url = prometheus([metrics_target])
        query = 'sum(fmstack_serve_requests_total{route="classify"})'
        deadline, seen = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            result = _get_json(url)["data"]["result"]
            seen = float(result[0]["value"][1]) if result else None
            if seen == before + sent:
                break
            time.sleep(1)
        assert seen == before + sent, f"Prometheus counted {seen}, sent {sent} after {before}"
    finally:
        _fmstack("serve", "down", "--address", ray_cluster)
