"""fmstack training: typed recipes, Ray Data pipelines, models, DeepSpeed loops, checkpoints,
exports and the one function that loads an export for inference.

Names load on first use: Ray Data and Serve workers that unpickle one function of a submodule
(`training.data`, say) then import that module alone, not torch, DeepSpeed and transformers."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        compile_classifier,
        load_model,
        quantize_int8,
        resolve_model_dir,
        try_compile_classifier,
    )
    from training.pretrain import PretrainResult, preflight, run_pretraining

_HOMES = {
    "training.checkpoint": ("read_manifest", "verify_files"),
    "training.config": (
        "DistillConfig",
        "FinetuneConfig",
        "LabeledDataConfig",
        "PretrainConfig",
        "RecipeError",
        "RegistryConfig",
        "format_validation_error",
        "load_recipe",
        "parse_recipe",
        "read_recipe",
        "recipe_from_text",
    ),
    "training.finetune": ("FinetuneResult", "run_finetune"),
    "training.inference": (
        "LoadedModel",
        "classify",
        "compile_classifier",
        "load_model",
        "quantize_int8",
        "resolve_model_dir",
        "try_compile_classifier",
    ),
    "training.pretrain": ("PretrainResult", "preflight", "run_pretraining"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

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
    "compile_classifier",
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
    "try_compile_classifier",
    "verify_files",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
