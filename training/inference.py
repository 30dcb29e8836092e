"""Loading exported models for inference: the one function evaluation and serving share.

`load_model` takes an fmstack export (or any plain Hugging Face directory, or a packaged model's
name), verifies the export's checksums, and returns the model in eval mode with its tokenizer,
task and label names. `classify` and `evaluate_classifier` run it on texts,
`evaluate_causal_lm` and `evaluate_masked_lm` on packed token blocks.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.assets import PACKAGED_MODELS, require
from training.storage import MANIFEST, is_uri, local_copy

_TASK_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "masked_lm": "AutoModelForMaskedLM",
    "encoder": "AutoModel",
}


def resolve_model_dir(ref: str) -> Path:
    """A local directory for a packaged model's name, a directory, or an s3://, gs:// URI."""
    if ref in PACKAGED_MODELS and not Path(ref).exists():
        return require(PACKAGED_MODELS[ref], f"the packaged model '{ref}'")
    if is_uri(ref):
        return local_copy(ref)
    path = Path(ref).expanduser()
    if not (path / "config.json").is_file():
        names = ", ".join(k for k in PACKAGED_MODELS if "gguf" not in k)
        raise FileNotFoundError(
            f"{ref} is not a model directory (no config.json); give an exported model's "
            f"directory or URI, or a packaged model ({names})"
        )
    return path


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference, with what its export says about it."""

    model: Any
    tokenizer: Any
    task: str
    """`classification`, `causal_lm`, `masked_lm` or `encoder`."""
    label_names: list[str]
    """Class names by index (classification), else empty."""
    manifest: dict[str, Any]
    """The export's `fmstack.json` (empty for a plain Hugging Face directory)."""
    path: Path

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def infer_task(config: Any) -> str:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "SequenceClassification" in archs:
        return "classification"
    if "CausalLM" in archs or "LMHead" in archs:
        return "causal_lm"
    if "MaskedLM" in archs:
        return "masked_lm"
    return "encoder"


def load_model(
    ref: str | Path, *, verify: bool = True, dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a model for inference; an export's file checksums are checked first."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from training.checkpoint import read_manifest, verify_files

    transformers.utils.logging.disable_progress_bar()  # fmstack says what it loaded
    path = resolve_model_dir(str(ref))
    manifest: dict[str, Any] = {}
    if (path / MANIFEST).is_file():
        manifest = read_manifest(path)
        if verify:
            verify_files(path)
    config = AutoConfig.from_pretrained(path)
    task = manifest.get("task") or infer_task(config)
    cls = getattr(transformers, _TASK_CLASSES.get(task, "AutoModel"))
    model = cls.from_pretrained(path, dtype=dtype) if dtype else cls.from_pretrained(path)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    labels = manifest.get("label_names")
    if labels is None and task == "classification":
        id2label = config.id2label or {}
        labels = [id2label[i] for i in sorted(id2label)]
    return LoadedModel(model, tokenizer, task, list(labels or []), manifest, path)


def quantize_int8(loaded: LoadedModel) -> LoadedModel:
    """A copy whose `nn.Linear` layers run in int8 with dynamic activation quantisation (CPU):
    smaller and faster, at a small cost in accuracy. Raises RuntimeError where this torch build
    cannot."""
    import copy
    import warnings

    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        raise RuntimeError(f"torch {torch.__version__} has no quantized engine for int8")
    try:
        with warnings.catch_warnings():  # torch.ao.quantization warns that it is deprecated
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(loaded.model), {torch.nn.Linear}, dtype=torch.qint8
            )
    except (AttributeError, NotImplementedError, RuntimeError) as err:
        raise RuntimeError(
            f"dynamic int8 quantisation fails on torch {torch.__version__}: {err}"
        ) from err
    return dataclasses.replace(loaded, model=model)


def compile_classifier(loaded: LoadedModel) -> LoadedModel:
    """A copy whose forward pass runs through `torch.compile` (Inductor), compiled here for one
    text and for batches: any larger batch and any length reuse those graphs, as does a later
    model of the same architecture (a new version). On CPUs, fused kernels and no Python between
    operators make a batch-1 pass of MiniLM about a quarter faster; the first compile in a
    process takes tens of seconds and a C++ compiler. Classifiers only: generation changes
    shapes with every token."""
    import torch._inductor.config

    if loaded.task != "classification":
        raise ValueError(f"compile serves classifiers; {loaded.path} is a {loaded.task} model")
    # Kernels that read the thread count when they run, not when they were compiled: passes
    # run on another thread than this one, and `threads` may change in place.
    torch._inductor.config.cpp.dynamic_threads = True
    compiled = dataclasses.replace(loaded, model=torch.compile(loaded.model, dynamic=True))
    for texts in (["a"], ["a short text", "and a somewhat longer one, to pad"]):
        classify(compiled, texts)
    return compiled


def try_compile_classifier(loaded: LoadedModel) -> tuple[LoadedModel | None, str | None]:
    """`compile_classifier`, or None and why it failed (Inductor fails in many ways: no C++
    compiler, an unsupported model); the caller decides whether to run eagerly."""
    try:
        return compile_classifier(loaded), None
    except Exception as err:  # noqa: BLE001
        return None, f"{type(err).__name__}: {err}"[:500]


# ---------------------------------------------------------------- classification


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of the items in batches of similar length (shortest first), so that padding
    each batch to its longest item wastes little."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def classify(
    loaded: LoadedModel, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128
) -> np.ndarray:
    """Class probabilities, shape [len(texts), classes], in the order of `texts`; the texts run
    in batches of similar length."""
    if loaded.task != "classification":
        raise ValueError(f"{loaded.path} is a {loaded.task} model, not a classifier")
    texts = list(texts)
    probs = np.zeros((len(texts), loaded.model.config.num_labels), dtype=np.float32)
    if not texts:
        return probs
    # Tokenized once; each batch is then padded to its own longest text.
    encoded = loaded.tokenizer(texts, truncation=True, max_length=max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    for batch in length_sorted_batches(lengths, batch_size):
        enc = loaded.tokenizer.pad(
            {key: [values[i] for i in batch] for key, values in encoded.items()},
            return_tensors="pt",
        )
        logits = loaded.model(**enc).logits.float()
        probs[batch] = torch.softmax(logits, -1).numpy()
    return probs


def evaluate_classifier(
    loaded: LoadedModel,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    batch_size: int = 64,
    max_length: int = 128,
) -> dict[str, Any]:
    """Classification report, confusion matrix and flat metrics for labeled texts."""
    from training.evaluation import score_predictions

    probs = classify(loaded, texts, batch_size=batch_size, max_length=max_length)
    return score_predictions(probs.argmax(-1).tolist(), labels, loaded.label_names)


def measure_latency(
    loaded: LoadedModel,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_length: int = 128,
    batches: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """Forward-pass latency percentiles (ms) and throughput (examples/s) at a batch size.

    Batches cycle through `texts`; the caller fixes the thread count, so that two models are
    measured under the same conditions.
    """
    if not texts:
        raise ValueError("measure_latency needs at least one text")

    def inputs(i: int) -> dict[str, torch.Tensor]:
        chunk = [texts[(i * batch_size + j) % len(texts)] for j in range(batch_size)]
        return loaded.tokenizer(
            chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )

    return _timed_forward(loaded, inputs, batch_size, batches, warmup)


def measure_block_latency(
    loaded: LoadedModel, blocks: np.ndarray, *, batch_size: int, batches: int, warmup: int = 2
) -> dict[str, float]:
    """`measure_latency` for a language model on packed token blocks (rows of `blocks`), with
    throughput also in tokens/s."""
    if not len(blocks):
        raise ValueError("measure_block_latency needs at least one block")

    def inputs(i: int) -> dict[str, torch.Tensor]:
        rows = [(i * batch_size + j) % len(blocks) for j in range(batch_size)]
        return {"input_ids": torch.from_numpy(blocks[rows]).long()}

    timing = _timed_forward(loaded, inputs, batch_size, batches, warmup)
    return {**timing, "tokens_per_second": timing["examples_per_second"] * blocks.shape[1]}


@torch.no_grad()
def measure_generation(
    loaded: LoadedModel,
    blocks: np.ndarray,
    *,
    prompt_tokens: int = 32,
    new_tokens: int = 32,
    runs: int = 3,
    warmup: int = 1,
) -> dict[str, float]:
    """Greedy decoding at batch 1, as `/v1/generate` serves: the time to generate `new_tokens`
    after a prompt of the first `prompt_tokens` tokens of a block (p50, ms), and tokens/s."""
    if not len(blocks):
        raise ValueError("measure_generation needs at least one block")
    pad = loaded.tokenizer.pad_token_id
    pad = loaded.tokenizer.eos_token_id if pad is None else pad
    times = []
    for i in range(warmup + runs):
        prompt = torch.from_numpy(blocks[i % len(blocks), :prompt_tokens][None]).long()
        start = time.perf_counter()
        loaded.model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        if i >= warmup:
            times.append(time.perf_counter() - start)
    p50 = statistics.median(times)
    return {
        "prompt_tokens": min(prompt_tokens, blocks.shape[1]),
        "new_tokens": new_tokens,
        "p50_ms": p50 * 1000,
        "tokens_per_second": new_tokens / p50,
    }


@torch.no_grad()
def _timed_forward(
    loaded: LoadedModel,
    inputs: Callable[[int], dict[str, torch.Tensor]],
    batch_size: int,
    batches: int,
    warmup: int,
) -> dict[str, float]:
    """Time the forward pass alone on `inputs(i)` for `warmup + batches` batches."""
    times = []
    for i in range(warmup + batches):
        batch = inputs(i)
        start = time.perf_counter()
        loaded.model(**batch)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    times_ms = sorted(t * 1000 for t in times)
    return {
        "batch_size": batch_size,
        "p50_ms": statistics.median(times_ms),
        "p95_ms": times_ms[min(len(times_ms) - 1, int(round(0.95 * (len(times_ms) - 1))))],
        "examples_per_second": batch_size * len(times) / sum(times),
    }


# ---------------------------------------------------------------- language models


@torch.no_grad()
def evaluate_causal_lm(
    loaded: LoadedModel, blocks: np.ndarray, *, batch_size: int = 8
) -> dict[str, float]:
    """Mean next-token loss (nats) and perplexity over packed token blocks, every position
    predicting the next as in training."""
    if loaded.task != "causal_lm":
        raise ValueError(f"{loaded.path} is a {loaded.task} model, not a causal LM")
    total, tokens = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        ids = torch.from_numpy(blocks[i : i + batch_size]).long()
        logits = loaded.model(input_ids=ids).logits[:, :-1].float()
        targets = ids[:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
        ).item()
        tokens += targets.numel()
    loss = total / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens, "blocks": len(blocks)}


@torch.no_grad()
def evaluate_masked_lm(
    loaded: LoadedModel,
    blocks: np.ndarray,
    *,
    probability: float = 0.15,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, float]:
    """Loss (nats), perplexity and accuracy on masked tokens of packed `[CLS] ... [SEP]` blocks.

    BERT masking as in training, drawn from one generator seeded with `seed`: models that share
    a tokenizer see the same masks."""
    from training.objectives import IGNORE_INDEX, masked_lm_inputs

    if loaded.task != "masked_lm":
        raise ValueError(f"{loaded.path} is a {loaded.task} model, not a masked LM")
    tokenizer = loaded.tokenizer
    special = [t for t in tokenizer.all_special_ids if t is not None]
    generator = torch.Generator().manual_seed(seed)
    total, correct, tokens = 0.0, 0, 0
    for i in range(0, len(blocks), batch_size):
        inputs = masked_lm_inputs(
            torch.from_numpy(blocks[i : i + batch_size]).long(),
            mask_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            special_ids=special,
            probability=probability,
            generator=generator,
        )
        chosen = inputs["labels"] != IGNORE_INDEX
        logits = loaded.model(input_ids=inputs["input_ids"]).logits[chosen].float()
        targets = inputs["labels"][chosen]
        total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        correct += int((logits.argmax(-1) == targets).sum())
        tokens += int(chosen.sum())
    loss = total / max(tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "accuracy": correct / max(tokens, 1),
        "tokens": tokens,
        "blocks": len(blocks),
    }
