"""fmstack training: typed recipes, Ray Data pipelines, models, DeepSpeed loops, checkpoints,
exports and the one function that loads an export for inference."""

from training.checkpoint import read_manifest, verify_files
from training.config import (
    DistillConfig,
    FinetuneConfig,
    LabeledDataConfig,
    PretrainConfig,
    RecipeError,
    RegistryConfig,
    format_validation_error,
    load_recipe,
    parse_recipe,
    read_recipe,
    recipe_from_text,
)
from training.finetune import FinetuneResult, run_finetune
from training.inference import (
    LoadedModel,
    classify,
    load_model,
    quantize_int8,
    resolve_model_dir,
)
from training.pretrain import PretrainResult, preflight, run_pretraining

__all__ = [
    "DistillConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "LabeledDataConfig",
    "LoadedModel",
    "PretrainConfig",
    "PretrainResult",
    "RecipeError",
    "RegistryConfig",
    "classify",
    "format_validation_error",
    "load_model",
    "load_recipe",
    "parse_recipe",
    "preflight",
    "quantize_int8",
    "read_manifest",
    "read_recipe",
    "recipe_from_text",
    "resolve_model_dir",
    "run_finetune",
    "run_pretraining",
    "verify_files",
]
