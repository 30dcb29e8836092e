"""Causal-LM pretraining for real (Ray Train, DeepSpeed on gloo, 2 CPU workers, a tiny model),
watched by a real Prometheus. ZeRO stages and recovery: test_zero_stages_and_recovery.py."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import urllib.parse
import urllib.request
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import missing, prometheus_servers, tiny_recipe
from training import RecipeError, parse_recipe, read_manifest, run_pretraining, verify_files
from training.models import build_model

pytestmark = pytest.mark.integration


def _consolidated_from_checkpoint(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    """The fp32 weights rebuilt from the ZeRO shards by DeepSpeed's own offline tool."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag="deepspeed")


@pytest.fixture(scope="module")
def causal_runs(ray_cluster, tmp_path_factory) -> SimpleNamespace:
    """The tiny causal LM trained to step 6, then resubmitted under the same run name to step
    12, while a real Prometheus (where installed) scrapes Ray's metrics agent throughout."""
    import ray

    tmp = tmp_path_factory.mktemp("causal")
    node = next(n for n in ray.nodes() if n["Alive"])
    with contextlib.ExitStack() as stack:
        prometheus = None
        if shutil.which("prometheus"):
            start = stack.enter_context(prometheus_servers(tmp))
            prometheus = start([f"127.0.0.1:{node['MetricsExportPort']}"])
        started = time.monotonic()
        first = run_pretraining(parse_recipe(tiny_recipe(tmp, train={"max_steps": 6})))
        second = run_pretraining(parse_recipe(tiny_recipe(tmp, train={"max_steps": 12})))
        other = tiny_recipe(tmp, train={"max_steps": 18}, optimizer={"schedule": "constant"})
        with pytest.raises(RecipeError) as refused:
            run_pretraining(parse_recipe(other))
        yield SimpleNamespace(
            first=first,
            second=second,
            refused=str(refused.value),
            prometheus=prometheus,
            started=started,
        )


def test_causal_pretraining_learns_resumes_by_run_name_and_exports(causal_runs):
    assert causal_runs.first.metrics["step"] == 6

    # Resubmitting under the same run name continues from the latest checkpoint.
    result = causal_runs.second
    m = result.metrics
    assert m["resumed_from_step"] == 6
    assert m["step"] == 12
    assert m["validation_loss"] < 0.8 * m["initial_validation_loss"]
    # Another recipe under the same run name is refused rather than resumed.
    assert "optimizer.schedule: 'cosine' -> 'constant'" in causal_runs.refused

    # The export is a plain Hugging Face directory with an intact manifest.
    verify_files(result.model_dir)
    manifest = read_manifest(result.model_dir)
    assert manifest["task"] == "causal_lm"
    assert manifest["lineage"]["dataset"]["sha256"]
    assert manifest["metrics"]["steps"] == 12
    model = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    batch = tokenizer(["the whale watched the storm at dawn"], return_tensors="pt")

    # Same logits as the trained weights that DeepSpeed consolidates from the last checkpoint.
    reference = build_model(model.config).eval()
    reference.load_state_dict(_consolidated_from_checkpoint(result.checkpoint), strict=False)
    reference.tie_weights()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits)

    generated = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 5


def _query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)["data"]["result"]


def test_training_step_and_loss_reach_a_real_prometheus(causal_runs):
    base = causal_runs.prometheus
    if base is None:
        missing("prometheus is not installed (make setup installs Debian's package)")

    # Ray drops a worker's series once it exits, so ask for the largest value Prometheus
    # scraped (every second) over a range covering both runs and the wait below.
    def window() -> str:
        return f"{int(time.monotonic() - causal_runs.started) + 120}s"

    def steps() -> list[tuple[dict, float]]:
        series = f'fmstack_train_step{{run="tiny"}}[{window()}]'
        expr = f"max by (run, objective) (max_over_time({series}))"
        return [(s["metric"], float(s["value"][1])) for s in _query(base, expr)]

    deadline = time.monotonic() + 60
    while steps() != [({"run": "tiny", "objective": "causal_lm"}, 12)]:
        assert time.monotonic() < deadline, steps()
        time.sleep(1)

    losses = _query(base, f'fmstack_train_loss{{run="tiny"}}[{window()}]')
    samples = [float(v) for series in losses for _, v in series["values"]]
    assert samples, "no fmstack_train_loss samples for run 'tiny'"
    assert all(math.isfinite(v) and v > 0 for v in samples), samples
    assert {s["metric"]["objective"] for s in losses} == {"causal_lm"}
