"""fmstack training: typed recipes, Ray Data pipelines, models, DeepSpeed loop, checkpoints."""

from training.checkpoint import read_manifest, verify_files
from training.config import PretrainConfig, RecipeError, load_recipe, parse_recipe
from training.pretrain import PretrainResult, preflight, run_pretraining

__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "RecipeError",
    "load_recipe",
    "parse_recipe",
    "preflight",
    "read_manifest",
    "run_pretraining",
    "verify_files",
]
