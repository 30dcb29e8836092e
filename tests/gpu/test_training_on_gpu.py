"""Training on one NVIDIA GPU (NCCL, bf16): the code paths that CPU runs never take.

Skipped without CUDA, so CPU-only machines (and CI) skip them. On a GPU host:
`.venv/bin/python -m pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from tests.conftest import tiny_causal_distill_recipe, tiny_classifier_recipe
from training import (
    DistillConfig,
    FinetuneConfig,
    load_model,
    parse_recipe,
    read_manifest,
    run_finetune,
    run_pretraining,
    verify_files,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU and CUDA torch"),
]

ON_ONE_GPU = {"num_workers": 1, "use_gpu": True}


@pytest.fixture(scope="module")
def gpu_ray():
    """The session's Ray cluster when the integration tests started one (Ray finds the GPU),
    else a Ray of this module's own."""
    import ray

    from training.pretrain import start_local_ray

    if ray.is_initialized():
        yield
        return
    start_local_ray(4, num_gpus=1)
    try:
        yield
    finally:
        ray.shutdown()


def test_masked_lm_trains_resumes_and_exports_on_one_gpu(gpu_ray, recipe_factory):
    # Masking runs on the CPU and moves to the GPU; validation sums go through NCCL.
    recipe = recipe_factory(
        objective="masked_lm",
        model={"arch": "bert", "size": "tiny"},
        tokenizer={"kind": "wordpiece", "vocab_size": 384},
        scaling=ON_ONE_GPU,
        train={"micro_batch_size": 16, "precision": "bf16", "eval_every": 6},
    )
    first = run_pretraining(parse_recipe(recipe))
    assert first.metrics["step"] == 12
    assert first.metrics["validation_loss"] < first.metrics["initial_validation_loss"]
    assert first.metrics["peak_memory_bytes"] > 0  # the GPU's, through NCCL

    # Resubmitted under the same run name with more steps: it resumes from step 12 on the GPU.
    recipe["train"]["max_steps"] = 18
    resumed = run_pretraining(parse_recipe(recipe))
    assert resumed.metrics["resumed_from_step"] == 12 and resumed.metrics["step"] == 18

    verify_files(resumed.model_dir)
    model = AutoModelForMaskedLM.from_pretrained(resumed.model_dir).eval()
    batch = AutoTokenizer.from_pretrained(resumed.model_dir)(
        ["the whale [MASK]"], return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_causal_lm_distils_from_an_in_worker_teacher_on_one_gpu(gpu_ray, tmp_path):
    recipe, teacher_dir = tiny_causal_distill_recipe(tmp_path, "gpu-causal-student")
    recipe["scaling"] = ON_ONE_GPU
    recipe["train"]["precision"] = "bf16"
    result = run_pretraining(parse_recipe(recipe))
    assert read_manifest(result.model_dir)["lineage"]["teacher"]["path"] == str(teacher_dir)


def test_finetune_then_distill_a_classifier_on_one_gpu(gpu_ray, tiny_encoder, tmp_path):
    recipe = tiny_classifier_recipe(
        tmp_path, str(tiny_encoder), scaling=ON_ONE_GPU, train={"global_batch_size": 8}
    )
    teacher = run_finetune(parse_recipe(recipe, schema=FinetuneConfig))
    assert 0.0 <= teacher.metrics["accuracy"] <= 1.0
    assert "precision    recall  f1-score   support" in teacher.report

    # ZeRO-3 student taught in the worker by the teacher on the GPU: logits and hidden states.
    student_recipe = {k: v for k, v in recipe.items() if k not in ("model", "checkpoint")}
    student_cfg = parse_recipe(
        {
            **student_recipe,
            "distillation": {
                "teacher": teacher.model_dir,
                "teacher_logits": "in_worker",
                "hidden_weight": 1.0,
            },
            "student": {"num_layers": 1},
            "deepspeed": {"zero_stage": 3},
            "checkpoint": {"storage_path": str(tmp_path / "runs"), "run_name": "gpu-student"},
        },
        schema=DistillConfig,
    )
    student = run_finetune(student_cfg)
    assert load_model(student.model_dir).model.config.num_hidden_layers == 1
    assert 0.0 <= student.metrics["accuracy"] <= 1.0
