"""Distillation losses, student construction and the fine-tuning/distillation recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification
from typer.testing import CliRunner

from cluster import handover
from cluster.cli import app
from tests.conftest import tiny_classifier_recipe
from training import DistillConfig, FinetuneConfig, RecipeError, load_recipe, parse_recipe
from training.classifier import (
    classifier_from_pretrained,
    classifier_tokenizer,
    default_student_layers,
    student_from_teacher,
)
from training.config import StudentConfig
from training.objectives import distillation_loss, hidden_state_loss, soft_target_loss


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)), averaged over rows, written out by hand."""
    p = torch.softmax(p_logits, -1)
    return (p * (torch.log(p) - torch.log_softmax(q_logits, -1))).sum(-1).mean()


def test_soft_target_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(6, 5)
    assert soft_target_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # The mixed loss then reduces to the label-loss share.
    label_loss = torch.tensor(0.7)
    mixed = distillation_loss(logits, logits, label_loss, temperature=2.0, alpha=0.25)
    assert mixed.item() == pytest.approx(0.75 * 0.7, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_target_loss_is_t_squared_times_kl_of_softened_distributions(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 4), torch.randn(8, 4)
    expected = temperature**2 * _kl(teacher / temperature, student / temperature)
    got = soft_target_loss(student, teacher, temperature)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_soft_target_loss_flattens_token_positions():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    flat = soft_target_loss(student.reshape(6, 7), teacher.reshape(6, 7), 2.0)
    assert soft_target_loss(student, teacher, 2.0).item() == pytest.approx(flat.item())


def test_labeled_mask_of_ones_is_the_plain_mixed_loss():
    torch.manual_seed(2)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    labels = torch.randint(3, (5,))
    each = torch.nn.functional.cross_entropy(student, labels, reduction="none")
    plain = distillation_loss(student, teacher, each.mean(), temperature=2.0, alpha=0.6)
    masked = distillation_loss(
        student, teacher, each, temperature=2.0, alpha=0.6, labeled=torch.ones(5)
    )
    assert masked.item() == pytest.approx(plain.item(), rel=1e-6)


def test_unlabeled_copies_learn_from_the_teacher_alone():
    torch.manual_seed(3)
    student, teacher = torch.randn(4, 2), torch.randn(4, 2)
    labels = torch.randint(2, (4,))
    each = torch.nn.functional.cross_entropy(student, labels, reduction="none")
    labeled = torch.tensor([1, 1, 0, 0])
    got = distillation_loss(student, teacher, each, temperature=3.0, alpha=0.5, labeled=labeled)
    soft = [soft_target_loss(student[i : i + 1], teacher[i : i + 1], 3.0) for i in range(4)]
    expected = (0.5 * (soft[0] + each[0]) + 0.5 * (soft[1] + each[1]) + soft[2] + soft[3]) / 4
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_alpha_zero_is_the_label_loss_alone():
    label_loss = torch.tensor(1.3)
    out = distillation_loss(
        torch.randn(2, 3), torch.randn(2, 3), label_loss, temperature=2.0, alpha=0
    )
    assert out.item() == pytest.approx(1.3)


def _teacher(layers: int = 6) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config).eval()


def test_default_student_layers_are_evenly_spaced_and_end_with_the_last():
    assert default_student_layers(6, 2) == [2, 5]
    assert default_student_layers(6, 3) == [1, 3, 5]
    assert default_student_layers(6, 6) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="exceeds"):
        default_student_layers(2, 3)


def test_student_copies_the_chosen_teacher_layers():
    teacher = _teacher()
    student, layers = student_from_teacher(teacher, StudentConfig(num_layers=2, layers=[1, 4]))
    assert layers == [1, 4] and student.config.num_hidden_layers == 2
    s_layers, t_layers = student.bert.encoder.layer, teacher.bert.encoder.layer
    torch.testing.assert_close(s_layers[0].state_dict(), t_layers[1].state_dict())
    torch.testing.assert_close(s_layers[1].state_dict(), t_layers[4].state_dict())
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)


def test_a_student_with_every_teacher_layer_reproduces_the_teacher():
    teacher = _teacher(layers=3)
    student, layers = student_from_teacher(teacher, StudentConfig(num_layers=3))
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        s_out = student.eval()(ids, output_hidden_states=True)
        t_out = teacher(ids, output_hidden_states=True)
    torch.testing.assert_close(s_out.logits, t_out.logits)
    loss = hidden_state_loss(s_out.hidden_states, t_out.hidden_states, layers)
    assert loss.item() == pytest.approx(0.0, abs=1e-8)


def test_a_causal_lm_classifies_from_its_last_real_token(tiny_causal_lm_dir):
    # The tiny Llama's config has no pad_token_id; its classifier takes the tokenizer's.
    model = classifier_from_pretrained(tiny_causal_lm_dir, ["rotten", "fresh"]).eval()
    tokenizer = classifier_tokenizer(tiny_causal_lm_dir)
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    texts = ["a fine film", "dull, long and much too loud for its own good"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, -1] == 0  # padded on the right
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_a_narrower_student_keeps_the_feed_forward_neurons_that_matter():
    teacher = _teacher(layers=3)
    with torch.no_grad():  # 8 of each layer's 32 neurons cannot reach the output
        for layer in teacher.bert.encoder.layer:
            layer.output.dense.weight[:, ::4] = 0.0
    student, _ = student_from_teacher(teacher, StudentConfig(num_layers=3, intermediate_size=24))
    assert student.config.intermediate_size == 24
    assert student.bert.encoder.layer[0].intermediate.dense.weight.shape == (24, 16)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(ids).logits, teacher(ids).logits)
    with pytest.raises(ValueError, match="exceeds the teacher's 32"):
        student_from_teacher(teacher, StudentConfig(num_layers=3, intermediate_size=64))


def test_scratch_student_has_the_requested_size():
    student, _ = student_from_teacher(
        _teacher(), StudentConfig(init="scratch", num_layers=1, hidden_size=8, num_heads=2)
    )
    assert student.config.hidden_size == 8 and student.config.num_hidden_layers == 1
    assert student.config.vocab_size == 50 and student.config.num_labels == 2


def _distill_recipe(tmp_path, **sections):
    recipe = tiny_classifier_recipe(tmp_path, "minilm")
    del recipe["model"]
    recipe["distillation"] = {"teacher": "runs/teacher/model"}
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def test_classifier_recipes_validate(tmp_path):
    cfg = parse_recipe(tiny_classifier_recipe(tmp_path, "minilm"), schema=FinetuneConfig)
    assert cfg.grad_accum_steps == 1 and cfg.model.base == "minilm"
    cfg = parse_recipe(_distill_recipe(tmp_path), schema=DistillConfig)
    assert cfg.distillation.teacher_logits == "precomputed"


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"distillation": {"hidden_weight": 1.0}},
            "distillation.hidden_weight needs the teacher's hidden states",
        ),
        ({"student": {"num_layers": 2, "layers": [0]}}, "student.layers lists 1 layers"),
        ({"student": {"hidden_size": 64}}, "are for init 'scratch'"),
        ({"train": {"global_batch_size": 20}}, "train.global_batch_size (20) must be a multiple"),
        ({"data": {"source": {"kind": "csv"}}}, "kind 'csv' needs a path"),
        ({"distillation": {"alpha": 1.5}}, "distillation.alpha"),
        (
            {"distillation": {"alpha": 0, "augment": {"copies": 2}}},
            "distillation.augment.copies: the copies are labeled by the teacher alone",
        ),
        ({"distillation": {"augment": {"copies": 17}}}, "distillation.augment.copies"),
        (
            {"distillation": {"alpha": 0, "hidden_weight": 1.0, "teacher_logits": "in_worker"}},
            "distillation.hidden_weight: hidden-state matching is part of the teacher's loss, "
            "which alpha 0 switches off",
        ),
        ({"student": {"init": "pretrained"}}, "student.base is the model a student.init"),
        ({"student": {"base": "minilm"}}, "student.base is the model a student.init"),
        (
            {"student": {"init": "pretrained", "base": "minilm", "num_layers": 3}},
            "student.num_layers: a 'pretrained' student has the shape of student.base",
        ),
        (
            {"student": {"init": "pretrained", "base": "minilm", "layers": [0]}},
            "student.layers is only read when student.init is teacher_layers",
        ),
        (
            {
                "student": {"init": "pretrained", "base": "minilm"},
                "distillation": {"teacher_logits": "in_worker"},
            },
            "a student.init 'pretrained' student reads the texts with its own tokenizer",
        ),
    ],
)
def test_bad_distill_recipes_name_the_key(tmp_path, sections, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe(_distill_recipe(tmp_path, **sections), schema=DistillConfig)
    assert message in str(err.value)


def test_causal_distillation_refuses_augmented_copies(recipe_factory):
    recipe = recipe_factory(
        distillation={"teacher": "smollm2", "teacher_logits": "in_worker", "augment": {"copies": 1}}
    )
    recipe.pop("tokenizer", None)
    with pytest.raises(RecipeError, match="augment.copies is for classifiers"):
        parse_recipe(recipe)


def test_causal_distillation_uses_the_teachers_tokenizer(recipe_factory):
    recipe = recipe_factory(distillation={"teacher": "smollm2", "teacher_logits": "in_worker"})
    with pytest.raises(RecipeError, match="remove the tokenizer section"):
        parse_recipe(recipe)
    del recipe["tokenizer"]
    assert parse_recipe(recipe).distillation.teacher == "smollm2"
    recipe["distillation"]["teacher_logits"] = "precomputed"
    with pytest.raises(RecipeError, match="use 'in_worker'"):
        parse_recipe(recipe)


def test_causal_distillation_refuses_hidden_state_matching():
    recipe = Path(__file__).resolve().parents[2] / "configs/distill/smollm2-tiny.yaml"
    with pytest.raises(RecipeError, match="distillation.hidden_weight is for classifiers"):
        load_recipe(recipe, {"distillation.hidden_weight": 1.0})


SCRATCH = {"init": "scratch", "num_layers": 1, "hidden_size": 16, "num_heads": 2}
HIDDEN_STATES = {"hidden_weight": 1.0, "teacher_logits": "in_worker"}


def _teacher_dir(tmp_path: Path, hidden_size: int) -> Path:
    """As much of an exported teacher as the student check reads: 4 layers, 4 heads."""
    path = tmp_path / f"teacher-{hidden_size}"
    path.mkdir()
    shape = {
        "model_type": "bert",
        "hidden_size": hidden_size,
        "num_attention_heads": 4,
        "num_hidden_layers": 4,
        "intermediate_size": 4 * hidden_size,
    }
    (path / "config.json").write_text(json.dumps(shape))
    return path


@pytest.mark.parametrize(
    ("student", "message"),
    [
        (
            {"num_layers": 2, "layers": [0, 4]},
            r"student.layers \[0, 4\]: the teacher has layers 0..3",
        ),
        ({"num_layers": 5}, r"student.num_layers \(5\) exceeds the teacher's 4 layers"),
        (
            {"intermediate_size": 256},
            r"student.intermediate_size \(256\) exceeds the teacher's 128",
        ),
        (
            {**SCRATCH, "hidden_size": 18, "num_heads": 4},
            r"student.hidden_size \(18\) must be a multiple of student.num_heads \(4\)",
        ),
    ],
)
def test_a_student_its_teacher_cannot_give_is_refused_before_training(tmp_path, student, message):
    teacher = str(_teacher_dir(tmp_path, 32))
    recipe = _distill_recipe(tmp_path, distillation={"teacher": teacher}, student=student)
    cfg = parse_recipe(recipe, schema=DistillConfig)
    with pytest.raises(RecipeError, match=message):
        handover.resolve_start_model(cfg)


def test_a_pretrained_student_needs_nothing_of_its_teachers_shape(tmp_path):
    teacher = str(_teacher_dir(tmp_path, 32))
    student = {"init": "pretrained", "base": "minilm"}
    recipe = _distill_recipe(tmp_path, distillation={"teacher": teacher}, student=student)
    cfg = parse_recipe(recipe, schema=DistillConfig)
    assert handover.resolve_start_model(cfg) == (cfg, None)
    # Without the teacher, it is the labels-only baseline: in_worker then has nothing to run.
    recipe["distillation"] |= {"alpha": 0, "teacher_logits": "in_worker"}
    assert parse_recipe(recipe, schema=DistillConfig).student.base == "minilm"


def test_hidden_state_matching_needs_the_teachers_width(tmp_path):
    teacher = str(_teacher_dir(tmp_path, 32))
    distillation = {"teacher": teacher, **HIDDEN_STATES}
    cfg = parse_recipe(
        _distill_recipe(tmp_path, distillation=distillation, student=SCRATCH), schema=DistillConfig
    )
    with pytest.raises(RecipeError) as err:
        handover.resolve_start_model(cfg)
    message = str(err.value)
    assert "student.hidden_size (16) differs from the teacher's hidden size (32)" in message
    assert "remove student.hidden_size" in message
    assert "distillation.hidden_weight: 0" in message

    # The teacher's width, or no hidden-state matching, go ahead.
    for sections in (
        {"distillation": distillation, "student": {**SCRATCH, "hidden_size": 32}},
        {"distillation": {**distillation, "hidden_weight": 0}, "student": SCRATCH},
        {"distillation": distillation, "student": {**SCRATCH, "hidden_size": None}},
    ):
        cfg = parse_recipe(_distill_recipe(tmp_path, **sections), schema=DistillConfig)
        assert handover.resolve_start_model(cfg) == (cfg, None)


def test_distill_cli_refuses_a_student_of_another_width_before_ray_starts(tmp_path):
    # tests/unit/conftest.py makes ray.init raise, so exit code 2 proves Ray never started.
    teacher = str(_teacher_dir(tmp_path, 32))
    recipe = _distill_recipe(
        tmp_path, distillation={"teacher": teacher, **HIDDEN_STATES}, student=SCRATCH
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["distill", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "student.hidden_size (16)" in result.output
