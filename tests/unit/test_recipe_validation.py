"""Bad recipes fail before any worker starts, naming the key and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app
from cluster.handover import resolve_start_model
from cluster.registry import Registry
from tests.conftest import tiny_classifier_recipe
from tests.unit.test_registry import make_export
from training import (
    DistillConfig,
    FinetuneConfig,
    PretrainConfig,
    RecipeError,
    load_recipe,
    parse_recipe,
    preflight,
)
from training.checkpoint import claim_run
from training.data import DataSourceError


def _error(recipe: dict) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    return str(info.value)


def test_tiny_recipe_is_valid_and_derives_accumulation(recipe_factory):
    cfg = parse_recipe(recipe_factory())
    # global 16 = micro 4 x workers 2 x accumulation 2
    assert cfg.grad_accum_steps == 2


def test_cpu_workers_release_freed_memory_by_default_at_zero_3_only(recipe_factory):
    def releases(**sections) -> bool:
        return parse_recipe(recipe_factory(**sections)).releases_freed_memory

    assert releases(deepspeed={"zero_stage": 3})
    assert not releases(deepspeed={"zero_stage": 2})
    assert not releases(deepspeed={"zero_stage": 3}, scaling={"use_gpu": True})
    assert not releases(deepspeed={"zero_stage": 3}, scaling={"release_freed_memory": False})
    assert releases(deepspeed={"zero_stage": 0}, scaling={"release_freed_memory": True})


def test_unknown_key_is_named(recipe_factory):
    message = _error(recipe_factory(train={"learning_rate": 0.1}))
    assert "train.learning_rate" in message
    assert "remove it" in message


def test_zero_stage_4_is_refused(recipe_factory):
    message = _error(recipe_factory(deepspeed={"zero_stage": 4}))
    assert "deepspeed.zero_stage" in message
    assert "0, 1, 2 or 3" in message


def test_parameter_offload_needs_stage_3(recipe_factory):
    message = _error(recipe_factory(deepspeed={"zero_stage": 2, "offload_params": True}))
    assert "offload_params" in message
    assert "zero_stage: 3" in message


def test_global_batch_must_divide(recipe_factory):
    message = _error(recipe_factory(train={"global_batch_size": 18}))
    assert "train.global_batch_size (18)" in message
    assert "try 16 or 24" in message


def test_objective_and_architecture_must_agree(recipe_factory):
    message = _error(recipe_factory(model={"arch": "bert"}))
    assert "does not fit objective 'causal_lm'" in message


def test_bf16_needs_a_zero_stage_with_master_weights(recipe_factory):
    message = _error(recipe_factory(train={"precision": "bf16"}, deepspeed={"zero_stage": 0}))
    assert "zero_stage 1, 2 or 3" in message


def test_a_warm_up_longer_than_the_run_is_refused(recipe_factory, tmp_path):
    message = _error(recipe_factory(optimizer={"warmup_steps": 12}))
    assert "optimizer.warmup_steps 12 is not below train.max_steps 12" in message

    # A classifier's step count follows from its data: checked once the splits are known.
    from tests.conftest import tiny_classifier_recipe
    from training.finetune import classifier_steps

    recipe = tiny_classifier_recipe(tmp_path, "minilm", optimizer={"warmup_steps": 50})
    cfg = FinetuneConfig.model_validate(recipe)
    assert classifier_steps(cfg, 2_000) == (125, 250)  # 2 epochs of 16
    with pytest.raises(RecipeError, match=r"optimizer.warmup_steps: 50 .* run's 43 steps"):
        classifier_steps(
            cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})}), 700
        )


def test_a_classifier_recipe_setting_some_optimizer_keys_keeps_the_others_defaults(tmp_path):
    from tests.conftest import tiny_classifier_recipe

    recipe = tiny_classifier_recipe(tmp_path, "minilm", optimizer={"lr": 3e-5})
    assert FinetuneConfig.model_validate(recipe).optimizer.betas == (0.9, 0.999)
    recipe["optimizer"] = {}
    assert FinetuneConfig.model_validate(recipe).optimizer.lr == 5e-5


def test_missing_required_section_is_named(recipe_factory):
    recipe = recipe_factory()
    del recipe["checkpoint"]
    assert "checkpoint: Field required (add it)" in _error(recipe)


def test_missing_data_path_fails_preflight(recipe_factory, tmp_path):
    cfg = parse_recipe(
        recipe_factory(data={"sources": [{"kind": "jsonl", "path": str(tmp_path / "nope.jsonl")}]})
    )
    with pytest.raises(
        DataSourceError, match=r"data.sources\[0\].path: .*nope.jsonl does not exist"
    ):
        preflight(cfg)


def test_missing_packaged_corpus_says_how_to_fetch(recipe_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("FMSTACK_CACHE", str(tmp_path / "empty-cache"))
    cfg = parse_recipe(recipe_factory(data={"sources": [{"kind": "sotu"}]}))
    with pytest.raises(FileNotFoundError, match="make setup"):
        preflight(cfg)


def test_overrides_apply_dotted_keys(tmp_path, recipe_factory):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_factory()))
    cfg = load_recipe(path, {"train.max_steps": 3, "deepspeed.zero_stage": 3})
    assert cfg.train.max_steps == 3
    assert cfg.deepspeed.zero_stage == 3


def test_cli_refuses_a_bad_recipe_before_ray_starts(tmp_path, recipe_factory):
    # tests/unit/conftest.py makes ray.init raise, so exit code 2 proves Ray never started.
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_factory(deepspeed={"zero_stage": 4})))
    result = CliRunner().invoke(app, ["pretrain", "--config", str(path)])
    assert result.exit_code == 2
    assert "deepspeed.zero_stage" in result.output


def test_cli_refuses_missing_data_before_ray_starts(tmp_path, recipe_factory):
    recipe = recipe_factory(data={"sources": [{"kind": "text", "path": str(tmp_path / "x.txt")}]})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["pretrain", "--config", str(path)])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_a_run_refuses_to_resume_checkpoints_of_a_different_recipe(tmp_path):
    recipe = tiny_classifier_recipe(tmp_path, "minilm", registry={"name": "sentiment"})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "runs" / "tiny-finetune"
    claim_run(str(run_dir), parse_recipe(recipe, schema=FinetuneConfig).model_dump(mode="json"))
    (run_dir / "checkpoint_00000010").mkdir()

    # ray.init raises in unit tests: exit code 2 proves the refusal came before Ray started.
    changed = ["--set", "data.max_length=48", "--set", "train.seed=3"]
    result = CliRunner().invoke(app, ["finetune", "--config", str(path), *changed])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "checkpoint.run_name: run 'tiny-finetune' has checkpoints trained by a" in output
    assert "data.max_length: 32 -> 48; train.seed: 0 -> 3" in output
    assert "set another checkpoint.run_name" in output

    # Running longer, saving more often, a lower learning rate or another registry name resumes.
    resumable = {"train.epochs": 4, "checkpoint.every_steps": 5, "optimizer.lr": 1e-3}
    cfg = load_recipe(path, resumable | {"registry.name": "other"}, schema=FinetuneConfig)
    claim_run(str(run_dir), cfg.model_dump(mode="json"))
    # Without checkpoints there is nothing to mix up: the new recipe takes the run over.
    (run_dir / "checkpoint_00000010").rmdir()
    cfg = load_recipe(path, {"train.seed": 3}, schema=FinetuneConfig)
    claim_run(str(run_dir), cfg.model_dump(mode="json"))
    assert json.loads((run_dir / "recipe.json").read_text())["train"]["seed"] == 3


def test_a_run_in_object_storage_keeps_its_recipe_beside_its_checkpoints(tmp_path):
    # A file:// URI stands in for s3:// and gs://: the same pyarrow.fs code reads and writes it.
    recipe = parse_recipe(tiny_classifier_recipe(tmp_path, "minilm"), schema=FinetuneConfig)
    run_uri = f"file://{tmp_path}/bucket/runs/tiny-finetune"
    claim_run(run_uri, recipe.model_dump(mode="json"))
    (tmp_path / "bucket/runs/tiny-finetune/checkpoint_00000002").mkdir()
    claim_run(run_uri, recipe.model_dump(mode="json"))
    other = recipe.model_copy(update={"model": recipe.model.model_copy(update={"dropout": 0.3})})
    with pytest.raises(RecipeError, match=r"model\.dropout: 0\.1 -> 0\.3"):
        claim_run(run_uri, other.model_dump(mode="json"))


def test_a_recipes_models_resolve_in_its_own_registry(tmp_path, monkeypatch):
    root = tmp_path / "team-registry"
    Registry(root).register(make_export(tmp_path / "export"), "teacher")  # hidden_size 8
    monkeypatch.setenv("FMSTACK_REGISTRY", str(tmp_path / "default-registry"))
    registry = {"name": "student", "root": str(root)}
    recipe = tiny_classifier_recipe(tmp_path, "models:/teacher@1", registry=registry)
    cfg, origin = resolve_start_model(parse_recipe(recipe, schema=FinetuneConfig))
    assert Path(cfg.model.base).is_relative_to(root)
    assert origin == {
        "registry": {"ref": "models:/teacher@1", "version": "teacher@1", "root": str(root)}
    }

    # A teacher resolves there too, before the student is checked against its width.
    del recipe["model"]
    recipe["distillation"] = {
        "teacher": "models:/teacher@1",
        "hidden_weight": 1.0,
        "teacher_logits": "in_worker",
    }
    recipe["student"] = {"init": "scratch", "num_layers": 1, "hidden_size": 16, "num_heads": 2}
    with pytest.raises(RecipeError, match=r"the teacher's hidden size \(8\)"):
        resolve_start_model(parse_recipe(recipe, schema=DistillConfig))


# Job recipes; serving configs (configs/serve) are validated in test_serving_policies.py.
CONFIGS = sorted(
    p
    for p in Path(__file__).resolve().parents[2].glob("configs/*/*.yaml")
    if p.parent.name != "serve"
)
SCHEMAS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.stem}" for p in CONFIGS])
def test_every_shipped_recipe_validates(path):
    schema = SCHEMAS.get(path.parent.name)
    if schema is None:  # distill recipes: a causal LM distills through pretraining
        schema = PretrainConfig if "objective:" in path.read_text() else DistillConfig
    cfg = load_recipe(path, schema=schema)
    assert cfg.grad_accum_steps >= 1
