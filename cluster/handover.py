"""Hand-over between jobs and the registry: resolve `models:/` references in recipes before a
job starts, and register (and gate-promote) its export when it ends."""

from __future__ import annotations

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
    "register_export",
    "resolve_model",
    "resolve_start_model",
]


def resolve_model(ref: str, registry: str | None = None) -> str:
    """A directory for a registry reference (checksums verified); anything else unchanged."""
    if not is_model_ref(ref):
        return ref
    return str(Registry(registry or default_root()).resolve(ref))


def check_gates(cfg: Any) -> None:
    """The recipe's promotion gates parse; a bad one would otherwise show only after training.
    Raises `RecipeError` naming the key."""
    from training import RecipeError

    for gate in cfg.registry.require if cfg.registry is not None else []:
        try:
            parse_requirement(gate)
        except ValueError as err:
            raise RecipeError(f"registry.require: {err}") from None


def resolve_start_model(cfg: Job) -> tuple[Job, dict[str, Any] | None]:
    """Check the recipe's promotion gates, then replace a `models:/` base model or teacher by its
    verified directory, and say which registry version it was (for the new model's lineage)."""
    from training import FinetuneConfig

    check_gates(cfg)

    if isinstance(cfg, FinetuneConfig):
        ref = cfg.model.base
    elif cfg.distillation is not None:  # DistillConfig, or a causal-LM PretrainConfig
        ref = cfg.distillation.teacher
    else:
        return cfg, None
    if not is_model_ref(ref):
        return cfg, None
    registry = Registry(default_root())
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
