"""Hand-over between jobs and the registry: resolve `models:/` references in recipes before a
job starts, and register (and gate-promote) its export when it ends."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console

from cluster.registry import (
    ModelVersion,
    PromotionRefused,
    Registry,
    RegistryError,
    default_root,
    is_model_ref,
    parse_requirement,
)

if TYPE_CHECKING:
    from training import DistillConfig, FinetuneConfig, PretrainConfig, RegistryConfig

Job = TypeVar("Job", "PretrainConfig", "FinetuneConfig", "DistillConfig")

__all__ = [
    "RegistryError",
    "check_gates",
    "check_student",
    "describe_model",
    "register_export",
    "resolve_model",
    "resolve_start_model",
]


def resolve_model(ref: str, registry: str | None = None) -> str:
    """A directory for a registry reference (checksums verified); anything else unchanged."""
    if not is_model_ref(ref):
        return ref
    return str(Registry(registry or default_root()).resolve(ref))


def describe_model(ref: str, registry: str | None = None) -> str:
    """A reference as a report should name it: an alias with the version it names now
    (`models:/sentiment@candidate (sentiment@2)`), anything else unchanged."""
    if not is_model_ref(ref):
        return ref
    version = Registry(registry or default_root()).get(ref)
    return f"{ref} ({version.name}@{version.version})"


def check_gates(cfg: Any) -> None:
    """The recipe's promotion gates parse; a bad one would otherwise show only after training.
    Raises `RecipeError` naming the key."""
    from training import RecipeError

    for gate in cfg.registry.require if cfg.registry is not None else []:
        try:
            parse_requirement(gate)
        except ValueError as err:
            raise RecipeError(f"registry.require: {err}") from None


def check_student(cfg: Any) -> None:
    """A distill recipe's student against its teacher, whose shape only its config.json tells
    (`cfg.distillation.teacher` already resolved, not a `models:/` reference): layers that exist,
    heads that divide the width, the teacher's width under hidden-state matching. Raises
    `RecipeError` naming the key; a teacher that cannot be read is left to the job's preflight."""
    from training import DistillConfig, RecipeError
    from training.classifier import check_student as check

    if not isinstance(cfg, DistillConfig):
        return
    teacher = _model_config(cfg.distillation.teacher)
    if teacher is None:
        return
    try:
        check(cfg.student, teacher, hidden_matching=cfg.distillation.hidden_weight > 0)
    except ValueError as err:
        raise RecipeError(str(err)) from None


def _model_config(model: str) -> SimpleNamespace | None:
    """The config.json of a model directory, URI or packaged model; None where there is none
    to read. Of a URI only that file is read, not the whole model."""
    from training.inference import resolve_model_dir
    from training.storage import is_uri, join

    try:
        if is_uri(model):
            import pyarrow.fs as pafs

            fs, path = pafs.FileSystem.from_uri(join(model, "config.json"))
            with fs.open_input_stream(path) as f:
                fields = json.loads(f.read())
        else:
            fields = json.loads((resolve_model_dir(model) / "config.json").read_text())
        keys = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")
        return SimpleNamespace(**{key: int(fields[key]) for key in keys})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_start_model(cfg: Job) -> tuple[Job, dict[str, Any] | None]:
    """Check the recipe's promotion gates, then replace a `models:/` base model or teacher by its
    verified directory, and say which registry version it was (for the new model's lineage).
    References resolve in the recipe's `registry.root`, else the default registry. A distill
    recipe's student is then checked against its teacher (`check_student`)."""
    check_gates(cfg)
    cfg, origin = _resolve_reference(cfg)
    cfg = _resolve_student_base(cfg)
    check_student(cfg)
    return cfg, origin


def _resolve_student_base(cfg: Job) -> Job:
    """A `pretrained` student's `models:/` base as its verified directory."""
    from training import DistillConfig

    if not isinstance(cfg, DistillConfig) or not is_model_ref(cfg.student.base or ""):
        return cfg
    registry = _recipe_registry(cfg)
    version = registry.get(cfg.student.base or "")
    student = cfg.student.model_copy(update={"base": str(registry.resolve(version.ref))})
    return cfg.model_copy(update={"student": student})


def _resolve_reference(cfg: Job) -> tuple[Job, dict[str, Any] | None]:
    from training import FinetuneConfig

    if isinstance(cfg, FinetuneConfig):
        ref = cfg.model.base
    elif cfg.distillation is not None:  # DistillConfig, or a causal-LM PretrainConfig
        ref = cfg.distillation.teacher
    else:
        return cfg, None
    if not is_model_ref(ref):
        return cfg, None
    registry = _recipe_registry(cfg)
    version = registry.get(ref)
    path = str(registry.resolve(version.ref))  # the version just read, even if the alias moves
    origin = {"registry": {"ref": ref, "version": version.ref, "root": registry.root}}
    if isinstance(cfg, FinetuneConfig):
        model = cfg.model.model_copy(update={"base": path})
        return cfg.model_copy(update={"model": model}), origin
    assert cfg.distillation is not None
    distillation = cfg.distillation.model_copy(update={"teacher": path})
    return cfg.model_copy(update={"distillation": distillation}), origin


def register_export(model_dir: str, cfg: RegistryConfig, console: Console) -> ModelVersion:
    """Register an export as a new version and point `cfg.alias` at it if it meets the gates.

    A version that fails a gate stays registered (and can be promoted later); the alias stays.
    """
    registry = Registry(cfg.root or default_root())
    version = registry.register(model_dir, cfg.name)
    console.print(f"registered:  {version.ref} in {registry.root}")
    if cfg.alias:
        try:
            registry.promote(version.name, version.version, cfg.alias, cfg.require)
            console.print(f"alias:       {version.name}@{cfg.alias} -> version {version.version}")
        except PromotionRefused as err:
            console.print(f"[yellow]not promoted[/yellow]: {err}")
    return version


def _recipe_registry(cfg: Job) -> Registry:
    """Where a recipe's `models:/` references resolve: its `registry.root`, else the default."""
    root = cfg.registry.root if cfg.registry is not None else None
    return Registry(root or default_root())
