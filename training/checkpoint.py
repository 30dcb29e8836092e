"""Checkpoints (each rank's ZeRO shard in one reported Ray Train checkpoint) and the export.

Format conversion happens at one boundary, `export_model`: the live DeepSpeed engine's fp32
master weights become a Hugging Face directory with the tokenizer and an `fmstack.json`
manifest (task, metrics, lineage, recipe, file checksums).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from training.config import RecipeError
from training.storage import MANIFEST, join, list_names, read_text, write_text

DEEPSPEED_TAG = "deepspeed"
STATE_FILE = "trainer_state.json"
RECIPE_FILE = "recipe.json"
"""The recipe a run's checkpoints were trained by, beside them in the run directory."""
FORMAT_VERSION = 1

RESUMABLE_CHANGES = (
    "registry",
    "checkpoint.every_steps",
    "checkpoint.num_to_keep",
    "checkpoint.max_failures",
    "optimizer.lr",
    "optimizer.warmup_steps",
    "optimizer.grad_clip",
    "train.max_steps",
    "train.epochs",
    "train.early_stopping_patience",
    "train.eval_every",
    "train.eval_batches",
    "train.log_every",
    "train.fail_once_at_step",
    "scaling.cpus_per_worker",
    "scaling.torch_threads",
    "scaling.release_freed_memory",
)
"""Recipe keys a resubmission may change and still resume: where the model is registered, how
long the run goes on, how often it reports, saves and validates, and the learning rate, warm-up
and clipping (what a diverged run is resumed with). Any other change would mix two recipes in
one model."""


@dataclasses.dataclass
class TrainerState:
    """Where training stands; saved with every checkpoint so that a restart continues exactly."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Passes over the training shard started."""
    batches_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed (the data position)."""
    tokens_seen: int = 0
    """Training tokens across all workers."""
    initial_validation_loss: float | None = None
    """Validation loss before the first step, kept to show progress across restarts."""
    resumed_from_step: int | None = None
    """Step of the checkpoint this attempt started from, if any."""
    best_score: float | None = None
    """Best validation score so far (fine-tuning), oriented so that higher is better."""
    best_step: int | None = None
    """Step at which `best_score` was reached."""
    evals_without_improvement: int = 0
    """Validation passes since the best one (early stopping)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        return cls(**json.loads(text))


def claim_run(run_dir: str, recipe: dict[str, Any]) -> None:
    """Record the recipe a run trains by; refuse a resubmission under the same run name whose
    recipe differs in more than `RESUMABLE_CHANGES` while the run has checkpoints to resume."""
    record = join(run_dir, RECIPE_FILE)
    saved = read_text(record)
    has_checkpoints = any(n.startswith("checkpoint_") for n in list_names(run_dir))
    if saved is not None and has_checkpoints:
        changed = recipe_changes(json.loads(saved), recipe)
        if changed:
            name = recipe["checkpoint"]["run_name"]
            raise RecipeError(
                f"checkpoint.run_name: run {name!r} has checkpoints trained by a different recipe "
                f"({'; '.join(changed)}), and a resubmission under its name resumes them; set "
                f"another checkpoint.run_name for a new run, or delete {run_dir} to start over"
            )
    write_text(record, json.dumps(recipe, indent=2, sort_keys=True) + "\n")


def recipe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each leaf that differs, outside `RESUMABLE_CHANGES`."""
    old, new = _leaves(before), _leaves(after)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key):
            continue
        if any(key == k or key.startswith(f"{k}.") for k in RESUMABLE_CHANGES):
            continue
        changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _leaves(value, f"{prefix}.{key}" if prefix else key)
    return out


def save_checkpoint(engine: Any, state: TrainerState, metrics: dict[str, float]) -> float:
    """Save this rank's shard and report it; every rank must call this. Returns the time taken."""
    import ray.train

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fmstack-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=DEEPSPEED_TAG)
        if engine.global_rank == 0:
            Path(tmp, STATE_FILE).write_text(state.to_json())
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_{state.step:08d}",
        )
    return time.monotonic() - start


def restore_checkpoint(engine: Any) -> TrainerState:
    """Load the latest reported checkpoint into `engine`; a fresh state when there is none."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainerState()
    with checkpoint.as_directory() as directory:
        load_path, _ = engine.load_checkpoint(directory, tag=DEEPSPEED_TAG)
        if load_path is None:
            raise RuntimeError(f"checkpoint {checkpoint.path} has no DeepSpeed state to resume")
        state = TrainerState.from_json(Path(directory, STATE_FILE).read_text())
    state.resumed_from_step = state.step
    return state


def gather_fp32_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full fp32 weights on every rank, whatever the ZeRO stage (a collective call)."""
    from deepspeed.utils import safe_get_full_fp32_param

    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        full = safe_get_full_fp32_param(param)
        state[name] = (param.detach() if full is None else full).float().cpu().clone()
    return state


def consolidated_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a reported checkpoint, in one process, for any ZeRO stage."""
    tagged = Path(checkpoint_dir, DEEPSPEED_TAG)
    if list(tagged.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=DEEPSPEED_TAG)
    else:  # ZeRO-0 keeps the whole model in one file
        saved = torch.load(tagged / "mp_rank_00_model_states.pt", map_location="cpu")
        state = saved["module"]
    return {k: v.float() for k, v in state.items()}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load consolidated weights; only tied copies of another parameter may be missing."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied - _tied_names(model):
        raise RuntimeError(
            f"weights do not match the model: missing {missing}, unexpected {unexpected}"
        )
    tie = getattr(model, "tie_weights", None)
    if tie is not None:
        tie()


def write_export(
    out_dir: Path,
    model: Any,
    tokenizer: Any,
    manifest: dict[str, Any],
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a Hugging Face directory (plus `extra_files`, name -> text) and `fmstack.json`
    with every file's checksum; the manifest is written last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    for name, text in (extra_files or {}).items():
        (out_dir / name).write_text(text)
    files = {
        p.relative_to(out_dir).as_posix(): sha256_file(p)
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"format_version": FORMAT_VERSION, **manifest, "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return out_dir


def _tied_names(model: torch.nn.Module) -> set[str]:
    """Parameters that share storage with an earlier one (dropped by named_parameters)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.setdefault(id(param), name)
    return tied


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir, MANIFEST)
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not an fmstack export: {MANIFEST} is missing")
    return json.loads(path.read_text())


def verify_files(model_dir: str | Path) -> None:
    """Raise if any file of an export differs from the checksum in its manifest."""
    manifest = read_manifest(model_dir)
    for rel, expected in manifest["files"].items():
        actual = sha256_file(Path(model_dir, rel))
        if actual != expected:
            raise ValueError(f"{model_dir}/{rel} is corrupted: sha256 {actual} != {expected}")
