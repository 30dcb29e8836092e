"""Pretraining benchmark: fmstack (Ray Train + DeepSpeed ZeRO) against a plain PyTorch loop.

    .venv/bin/python -m benchmarks.pretrain [--size tiny|quick|full] [--repeats N] [--out DIR]
        [--cases PATTERN ...]

Everything is measured side by side in one run, cases interleaved over rounds, and reported as
medians and ratios, because the machine is noisy:

- ceilings: fp32 and bf16 matmul FLOP/s (square matrices, 2 threads) and memory bandwidth;
- throughput: fmstack with 2 workers at ZeRO 0/2/3 in fp32 and ZeRO 2/3 in bf16, and a
  single-process loop (torch AdamW, same model, blocks and global batch, 2 threads) in fp32 and
  bf16 autocast; tokens/s, step time, achieved FLOP/s and the fraction of the matmul ceiling;
- memory: the largest per-worker peak RSS at ZeRO-0 and ZeRO-3 on a model of 100M+ parameters.

Ray is started once (as `fmstack` starts its embedded Ray, 2 CPUs) unless the caller already
initialised it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import (
    Case,
    CaseResult,
    Figures,
    Ratio,
    Report,
    ratio,
    run_interleaved,
    select,
)
from training.config import PretrainConfig, RecipeError, parse_recipe

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKERS = 2
THREADS = 2
STAGES = (0, 2, 3)
PRECISIONS = ("fp32", "bf16")
MEMORY_STAGES = (0, 3)
CHECKPOINT_EVERY = 2
"""fmstack runs checkpoint every 2nd logging window. `result.history` (one entry per checkpoint)
then holds only windows that include neither the warm-up (the first window) nor a checkpoint save
(a save lands in the window after it). With 1, history holds every window: the first is skipped
and each of the others includes one save."""


@dataclasses.dataclass(frozen=True)
class Size:
    """How big and how long one benchmark size is."""

    repeats: int
    """Default rounds."""
    matmul_n: int
    """Side of the square matrices for the FLOP/s ceilings."""
    timed_seconds: float
    """Minimum timed duration of each ceiling measurement (after one warm-up)."""
    copy_mib: int
    """Size of the tensor copied for the bandwidth ceiling."""
    model: dict[str, Any]
    """Throughput model (recipe `model` section)."""
    vocab_size: int
    seq_len: int
    corpus: str
    max_documents: int | None
    micro_batch: int
    grad_accum: int
    """Gradient accumulation per fmstack worker; the global batch is micro x workers x accum."""
    fp32_steps: tuple[int, int]
    """(max_steps, log_every) of fp32 runs; max_steps / log_every / CHECKPOINT_EVERY windows."""
    bf16_steps: tuple[int, int]
    """(max_steps, log_every) of bf16 runs (bf16 matmuls can be far slower on CPUs)."""
    memory_model: dict[str, Any]
    memory_vocab: int
    memory_seq_len: int
    memory_steps: int
    memory_max_documents: int | None
    memory_min_params: int
    """The memory comparison refuses to run on a smaller model."""

    @property
    def global_batch(self) -> int:
        return self.micro_batch * WORKERS * self.grad_accum

    def __post_init__(self) -> None:
        for steps, log_every in (self.fp32_steps, self.bf16_steps):
            if steps % (log_every * CHECKPOINT_EVERY) or steps < 2 * log_every:
                raise ValueError(
                    f"max_steps {steps} must be a multiple of log_every x {CHECKPOINT_EVERY} "
                    f"({log_every * CHECKPOINT_EVERY}) with at least two windows"
                )


SIZES: dict[str, Size] = {
    # About 2-3 minutes: exercises every case; the memory model is small (not 100M).
    "tiny": Size(
        repeats=1,
        matmul_n=512,
        timed_seconds=0.5,
        copy_mib=128,
        model={"arch": "gpt2", "size": "tiny"},
        vocab_size=512,
        seq_len=64,
        corpus="moby_dick",
        max_documents=12,
        micro_batch=4,
        grad_accum=2,
        fp32_steps=(8, 2),
        bf16_steps=(4, 1),
        memory_model={"arch": "gpt2", "size": "small"},
        memory_vocab=2048,
        memory_seq_len=64,
        memory_steps=2,
        memory_max_documents=12,
        memory_min_params=0,
    ),
    # Under about 10 minutes on 2 cores.
    "quick": Size(
        repeats=1,
        matmul_n=1024,
        timed_seconds=2.0,
        copy_mib=256,
        model={"arch": "gpt2", "size": "small"},
        vocab_size=8192,
        seq_len=128,
        corpus="moby_dick",
        max_documents=40,
        micro_batch=1,
        grad_accum=2,
        fp32_steps=(30, 5),
        bf16_steps=(4, 1),
        memory_model={"arch": "gpt2", "size": "base"},
        memory_vocab=32000,
        memory_seq_len=128,
        memory_steps=2,
        memory_max_documents=None,
        memory_min_params=100_000_000,
    ),
    "full": Size(
        repeats=3,
        matmul_n=1024,
        timed_seconds=3.0,
        copy_mib=512,
        model={"arch": "gpt2", "size": "demo"},
        vocab_size=16384,
        seq_len=256,
        corpus="moby_dick",
        max_documents=None,
        micro_batch=2,
        grad_accum=2,
        fp32_steps=(48, 8),
        bf16_steps=(2, 1),
        memory_model={"arch": "gpt2", "size": "base"},
        memory_vocab=32000,
        memory_seq_len=256,
        memory_steps=4,
        memory_max_documents=None,
        memory_min_params=100_000_000,
    ),
}

LABELS = {
    "gflop_per_s": "GFLOP/s",
    "gb_per_s": "GB/s",
    "tokens_per_s": "tokens/s",
    "step_s": "step s",
    "mfu": "of ceiling",
    "peak_rss_mib": "peak RSS/worker MiB",
    "params_m": "params M",
}
COLUMNS = {
    "ceilings": ["gflop_per_s", "gb_per_s"],
    "throughput": ["tokens_per_s", "step_s", "gflop_per_s", "mfu"],
    "memory": ["peak_rss_mib", "params_m"],
}


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _recipe(
    size: Size,
    *,
    stage: int,
    precision: str,
    steps: int,
    log_every: int,
    storage: Path,
    run_name: str,
    memory: bool = False,
) -> dict[str, Any]:
    """A recipe that checkpoints every CHECKPOINT_EVERY logging windows (memory: at the end)."""
    return {
        "objective": "causal_lm",
        "model": {**(size.memory_model if memory else size.model), "dropout": 0.0},
        "tokenizer": {
            "kind": "bpe",
            "vocab_size": size.memory_vocab if memory else size.vocab_size,
        },
        "data": {
            "sources": [{"kind": size.corpus}],
            "seq_len": size.memory_seq_len if memory else size.seq_len,
            "max_documents": size.memory_max_documents if memory else size.max_documents,
        },
        "optimizer": {"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"},
        "deepspeed": {"zero_stage": stage},
        "scaling": {"num_workers": WORKERS, "cpus_per_worker": 1},
        "train": {
            "micro_batch_size": 1 if memory else size.micro_batch,
            "global_batch_size": WORKERS if memory else size.global_batch,
            "max_steps": steps,
            "precision": precision,
            "log_every": log_every,
            "eval_every": steps,
            "eval_batches": 1,
        },
        "checkpoint": {
            "storage_path": str(storage),
            "run_name": run_name,
            "every_steps": steps if memory else log_every * CHECKPOINT_EVERY,
            "num_to_keep": 1000,
            "max_failures": 0,  # a retried run would resume and measure something else
        },
    }


def _validate(recipe: dict[str, Any]) -> tuple[PretrainConfig | None, str | None]:
    """The config, or why the recipe validation refuses it."""
    try:
        return parse_recipe(recipe), None
    except RecipeError as err:
        lines = [ln.strip() for ln in str(err).splitlines()[1:]]
        return None, "; ".join(ln.removeprefix("(top level): ") for ln in lines) or str(err)


def _fresh(recipe: dict[str, Any], slug: str) -> PretrainConfig:
    """The recipe under a new run name, so nothing resumes."""
    d = copy.deepcopy(recipe)
    d["checkpoint"]["run_name"] = f"{slug}-{uuid.uuid4().hex[:8]}"
    return parse_recipe(d)


def _cpu_info() -> dict[str, Any]:
    model, flags = "", set[str]()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    model = model or platform.processor() or "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    return {
        "cpu": model,
        "cpu_flags": sorted(f for f in wanted if f in flags),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("ray", "deepspeed", "transformers"):
        with contextlib.suppress(Exception):
            out[name] = __import__(name).__version__
    return out


# ---------------------------------------------------------------- ceilings


def matmul_case(dtype: torch.dtype, n: int, seconds: float) -> Callable[[], Figures]:
    """FLOP/s of `torch.matmul(a, b.T)` on n x n matrices: the layout of `nn.Linear` (x @ W.T).

    The layout matters without bf16 hardware: on an AVX2-only CPU a bf16 `a @ b` ran at about
    1 GFLOP/s and `a @ b.T` at 12-14, while fp32 ran at 110-150 either way.
    """

    def run() -> Figures:
        with torch_threads(THREADS):
            gen = torch.Generator().manual_seed(0)
            a = torch.randn(n, n, generator=gen).to(dtype)
            b_t = torch.randn(n, n, generator=gen).to(dtype).t()
            torch.matmul(a, b_t)  # warm-up
            iters, start = 0, time.perf_counter()
            while True:
                torch.matmul(a, b_t)
                iters += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds and iters >= 2:
                    break
        return {"gflop_per_s": 2 * n**3 * iters / elapsed / 1e9}

    return run


def copy_case(mib: int, seconds: float) -> Callable[[], Figures]:
    """Read + write bytes per second of `dst.copy_(src)` on tensors much larger than caches."""

    def run() -> Figures:
        with torch_threads(THREADS):
            src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
            dst = torch.empty_like(src)
            dst.copy_(src)  # warm-up, touches every page
            iters, start = 0, time.perf_counter()
            while True:
                dst.copy_(src)
                iters += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds and iters >= 3:
                    break
        return {"gb_per_s": 2 * src.nbytes * iters / elapsed / 1e9}

    return run


# ---------------------------------------------------------------- the same model and blocks


@dataclasses.dataclass
class ModelFacts:
    hf_config: Any
    parameters: int
    flops_per_token: float
    vocab: int
    blocks: torch.Tensor | None = None
    """The packed training blocks (throughput model only), as fmstack builds them."""


def model_facts(cfg: PretrainConfig, with_blocks: bool) -> ModelFacts:
    """The tokenizer, model size and (optionally) training blocks of a recipe, by fmstack's code."""
    from training.data import build_datasets, read_documents
    from training.models import build_model, count_parameters, flops_per_token, model_config
    from training.pretrain import prepare_tokenizer, storage_root
    from training.storage import join, local_copy
    from training.tokenizer import load_tokenizer

    documents = read_documents(cfg.data)
    run_dir = join(storage_root(cfg), cfg.checkpoint.run_name)
    tokenizer_dir = str(local_copy(prepare_tokenizer(cfg.tokenizer_config, documents, run_dir)))
    tokenizer = load_tokenizer(tokenizer_dir)
    hf_config = model_config(cfg.model, tokenizer, cfg.data.seq_len)
    with torch.device("meta"):
        n_params = count_parameters(build_model(hf_config))
    facts = ModelFacts(
        hf_config, n_params, flops_per_token(hf_config, n_params, cfg.data.seq_len), len(tokenizer)
    )
    if with_blocks:
        train_ds, _ = build_datasets(cfg, documents, tokenizer_dir)
        batches = train_ds.iter_batches(batch_size=4096, batch_format="numpy")
        facts.blocks = torch.as_tensor(np.concatenate([b["input_ids"] for b in batches])).long()
    return facts


# ---------------------------------------------------------------- throughput


def fmstack_throughput(
    recipe: dict[str, Any], slug: str, flops_tok: float, storage: Path
) -> Callable[[], Figures]:
    def run() -> Figures:
        from training.pretrain import run_pretraining

        cfg = _fresh(recipe, slug)
        try:
            result = run_pretraining(cfg)
        finally:
            shutil.rmtree(storage / cfg.checkpoint.run_name, ignore_errors=True)
        windows = [m for m in result.history if "tokens_per_second" in m]
        expected = cfg.train.max_steps // cfg.checkpoint.every_steps
        if len(windows) != expected:
            steps = [m.get("step") for m in result.history]
            raise RuntimeError(f"expected {expected} logging windows in history, got steps {steps}")
        # The first window holds allocation and warm-up; it is in history only when every
        # window is checkpointed (CHECKPOINT_EVERY == 1).
        steady = windows[1:] if CHECKPOINT_EVERY == 1 else windows
        tokens_per_s = statistics.median(m["tokens_per_second"] for m in steady)
        return {
            "tokens_per_s": tokens_per_s,
            "step_s": statistics.median(m["step_seconds"] for m in steady),
            "gflop_per_s": tokens_per_s * flops_tok / 1e9,
            "windows": len(steady),
            "train_loss": windows[-1]["train_loss"],
            "peak_rss_mib": result.metrics["peak_memory_bytes"] / 2**20,
        }

    return run


def plain_throughput(cfg: PretrainConfig, facts: ModelFacts) -> Callable[[], Figures]:
    """One process, torch AdamW, same model, blocks, micro-batch and global batch as fmstack."""

    def run() -> Figures:
        from training.models import build_model

        assert facts.blocks is not None
        blocks = facts.blocks
        micro, opt, train = cfg.train.micro_batch_size, cfg.optimizer, cfg.train
        accum = train.global_batch_size // micro  # same global batch, one process
        steps, log_every = train.max_steps, train.log_every
        bf16 = train.precision == "bf16"
        windows: list[float] = []
        with torch_threads(THREADS):
            torch.manual_seed(train.seed)
            model = build_model(facts.hf_config)
            model.train()
            groups = [  # as fmstack's build_engine: decay on matrices only
                {
                    "params": [p for p in model.parameters() if p.ndim >= 2],
                    "weight_decay": opt.weight_decay,
                },
                {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0},
            ]
            optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
            pos, loss_value = 0, float("nan")
            start = time.perf_counter()
            for step in range(1, steps + 1):
                for _ in range(accum):
                    if pos + micro > len(blocks):
                        pos = 0
                    ids = blocks[pos : pos + micro]
                    pos += micro
                    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
                        loss = model(input_ids=ids, labels=ids).loss
                    (loss / accum).backward()
                    loss_value = loss.item()  # fmstack reads every micro-batch's loss too
                if opt.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if step % log_every == 0:
                    now = time.perf_counter()
                    windows.append(now - start)
                    start = now
        steady = windows[1:]
        tokens_per_step = train.global_batch_size * cfg.data.seq_len
        tokens_per_s = statistics.median(tokens_per_step * log_every / w for w in steady)
        return {
            "tokens_per_s": tokens_per_s,
            "step_s": statistics.median(w / log_every for w in steady),
            "gflop_per_s": tokens_per_s * facts.flops_per_token / 1e9,
            "windows": len(steady),
            "train_loss": loss_value,
        }

    return run


# ---------------------------------------------------------------- memory


def fmstack_memory(recipe: dict[str, Any], slug: str, storage: Path) -> Callable[[], Figures]:
    def run() -> Figures:
        from training.checkpoint import read_manifest
        from training.pretrain import run_pretraining

        cfg = _fresh(recipe, slug)
        try:
            result = run_pretraining(cfg)
            parameters = read_manifest(result.model_dir)["parameters"]  # count_parameters
        finally:
            shutil.rmtree(storage / cfg.checkpoint.run_name, ignore_errors=True)
        return {
            "peak_rss_mib": result.metrics["peak_memory_bytes"] / 2**20,
            "params_m": parameters / 1e6,
        }

    return run


# ---------------------------------------------------------------- the benchmark


def _add_fraction_of_ceiling(results: list[CaseResult]) -> None:
    """`mfu`: achieved FLOP/s over the same round's matmul ceiling of the same precision."""
    by_name = {r.name: r for r in results}
    for res in results:
        precision = res.params.get("precision")
        if res.group != "throughput" or precision is None:
            continue
        ceiling = by_name.get(f"matmul {precision}")
        if ceiling is None:  # --cases left the ceiling out
            continue
        per_round = ceiling.by_round("gflop_per_s")
        if not per_round:
            continue
        fallback = statistics.median(per_round.values())
        for s in res.samples:
            s.figures["mfu"] = s.figures["gflop_per_s"] / per_round.get(s.round, fallback)


def build_cases(size: Size, storage: Path) -> tuple[list[Case], dict[str, Any]]:
    """Every case of the benchmark, and facts about the models (for the report)."""

    def make(**kwargs: Any) -> dict[str, Any]:
        return _recipe(size, storage=storage, run_name="validate", **kwargs)

    facts_recipe = make(stage=0, precision="fp32", steps=2, log_every=1)
    facts_recipe["checkpoint"]["run_name"] = "shared-data"
    facts = model_facts(parse_recipe(facts_recipe), with_blocks=True)

    mem_recipes = {
        stage: make(
            stage=stage,
            precision="fp32",
            steps=size.memory_steps,
            log_every=size.memory_steps,
            memory=True,
        )
        for stage in MEMORY_STAGES
    }
    mem_recipe = copy.deepcopy(mem_recipes[0])
    mem_recipe["checkpoint"]["run_name"] = "memory-model"
    mem_cfg = parse_recipe(mem_recipe)
    mem_facts = model_facts(mem_cfg, with_blocks=False)
    if mem_facts.parameters < size.memory_min_params:
        raise ValueError(
            f"the memory model has {mem_facts.parameters:,} parameters, fewer than "
            f"{size.memory_min_params:,}; raise memory_vocab or use a bigger model size"
        )

    cases = [
        Case(
            "matmul fp32",
            matmul_case(torch.float32, size.matmul_n, size.timed_seconds),
            "ceilings",
            params={"n": size.matmul_n, "threads": THREADS, "op": "a @ b.T"},
        ),
        Case(
            "matmul bf16",
            matmul_case(torch.bfloat16, size.matmul_n, size.timed_seconds),
            "ceilings",
            params={"n": size.matmul_n, "threads": THREADS, "op": "a @ b.T"},
        ),
        Case(
            "memory copy",
            copy_case(size.copy_mib, size.timed_seconds),
            "ceilings",
            params={"mib": size.copy_mib, "threads": THREADS, "bytes": "read + write"},
        ),
    ]
    for precision in PRECISIONS:
        steps, log_every = size.fp32_steps if precision == "fp32" else size.bf16_steps
        common = {
            "precision": precision,
            "max_steps": steps,
            "log_every": log_every,
            "global_batch": size.global_batch,
            "micro_batch": size.micro_batch,
            "seq_len": size.seq_len,
        }
        # The plain loop reads batch, optimizer and precision from a recipe; it has no ZeRO.
        plain_cfg = parse_recipe(
            make(stage=2, precision=precision, steps=steps, log_every=log_every)
        )
        cases.append(
            Case(
                f"plain {precision}",
                plain_throughput(plain_cfg, facts),
                "throughput",
                params={
                    **common,
                    "kind": "plain",
                    "processes": 1,
                    "threads": THREADS,
                    "grad_accum": size.global_batch // size.micro_batch,
                },
            )
        )
        for stage in STAGES:
            name = f"fmstack {precision} ZeRO-{stage}"
            recipe = make(stage=stage, precision=precision, steps=steps, log_every=log_every)
            _, refused = _validate(recipe)
            cases.append(
                Case(
                    name,
                    None
                    if refused
                    else fmstack_throughput(
                        recipe, f"tput-{precision}-z{stage}", facts.flops_per_token, storage
                    ),
                    "throughput",
                    not_applicable=refused,
                    params={
                        **common,
                        "kind": "fmstack",
                        "zero_stage": stage,
                        "workers": WORKERS,
                        "grad_accum": size.grad_accum,
                    },
                )
            )
    for stage in MEMORY_STAGES:
        cases.append(
            Case(
                f"memory fp32 ZeRO-{stage}",
                fmstack_memory(mem_recipes[stage], f"mem-z{stage}", storage),
                "memory",
                params={
                    "zero_stage": stage,
                    "precision": "fp32",
                    "model": size.memory_model,
                    "vocab": mem_facts.vocab,
                    "seq_len": size.memory_seq_len,
                    "max_steps": size.memory_steps,
                    "micro_batch": 1,
                    "workers": WORKERS,
                },
            )
        )
    info = {
        "throughput_model": {
            **size.model,
            "vocab": facts.vocab,
            "parameters": facts.parameters,
            "flops_per_token": facts.flops_per_token,
            "train_blocks": int(facts.blocks.shape[0]),  # type: ignore[union-attr]
        },
        "memory_model": {
            **size.memory_model,
            "vocab": mem_facts.vocab,
            "parameters": mem_facts.parameters,
        },
    }
    return cases, info


def ratios(results: list[CaseResult]) -> list[Ratio]:
    out = []
    for precision in PRECISIONS:
        for stage in STAGES:
            out.append(
                ratio(
                    results,
                    f"fmstack ZeRO-{stage} / plain, tokens/s, {precision}",
                    f"fmstack {precision} ZeRO-{stage}",
                    f"plain {precision}",
                    "tokens_per_s",
                )
            )
    out += [
        ratio(results, "bf16 / fp32, matmul ceiling", "matmul bf16", "matmul fp32", "gflop_per_s"),
        ratio(
            results, "bf16 / fp32, plain loop tokens/s", "plain bf16", "plain fp32", "tokens_per_s"
        ),
        ratio(
            results,
            "bf16 / fp32, fmstack ZeRO-2 tokens/s",
            "fmstack bf16 ZeRO-2",
            "fmstack fp32 ZeRO-2",
            "tokens_per_s",
        ),
        ratio(
            results,
            "ZeRO-3 / ZeRO-0, peak memory per worker",
            "memory fp32 ZeRO-3",
            "memory fp32 ZeRO-0",
            "peak_rss_mib",
        ),
    ]
    return out


def _notes(
    size_name: str, size: Size, meta: dict[str, Any], results: list[CaseResult]
) -> list[str]:
    notes = [
        "fmstack tokens/s and step s: median over the logging windows in `result.history`, "
        f"with `checkpoint.every_steps == {CHECKPOINT_EVERY} x train.log_every`: "
        + (
            "the first (warm-up) window is skipped and every other window includes one "
            "checkpoint save."
            if CHECKPOINT_EVERY == 1
            else "the windows reported there exclude the first (warm-up) window and every "
            "checkpoint save, which falls in the unreported window after it."
        )
        + " The plain loop: median over its windows after the first; it never checkpoints.",
        "plain: one process with 2 intra-op threads; fmstack: 2 worker processes with 1 thread "
        "each (and the global batch split between them).",
        "of ceiling: achieved FLOP/s (`flops_per_token` x tokens/s) over the same round's "
        "matmul ceiling of the same precision (`a @ b.T`, the layout of nn.Linear), both on the "
        "machine's 2 threads.",
        "peak RSS/worker: `peak_memory_bytes`, the largest worker's peak resident set (VmHWM) "
        "from just before it builds the model to the end of training, libraries (~0.6 GB) "
        "included. ZeRO-3 builds the model already partitioned (`deepspeed.zero_init`).",
        "ZeRO-3 (throughput and memory) runs with `scaling.release_freed_memory`, its default on "
        "CPUs: freed buffers of 1 MiB and more go back to the OS at once, which costs ZeRO-3 "
        "some tokens/s; without it glibc's heap keeps them and ZeRO-3's peak passes ZeRO-0's "
        "(README, Memory).",
        "memory copy GB/s counts bytes read plus bytes written.",
    ]
    flags = meta["machine"]["cpu_flags"]
    if "amx_bf16" not in flags:
        notes.append(
            f"this CPU ({meta['machine']['cpu']}, torch capability "
            f"{meta['machine']['torch_cpu_capability']}) has no AMX: bf16 matmuls run on a "
            "slower path than fp32 (emulated on AVX2; AVX512-BF16 alone lost too), so bf16 is "
            "expected to lose to fp32 here."
        )
    above = sorted(r.name for r in results if any(s.figures.get("mfu", 0) > 1 for s in r.samples))
    if above:
        notes.append(
            f"of ceiling above 1 ({', '.join(above)}): the n x n matmul is not an upper bound "
            "there (without bf16 hardware the kernels' speed depends on shapes)."
        )
    start, end = meta["load_average_start"][0], meta["load_average_end"][0]
    notes.append(
        f"load average (1 min) {start:.1f} at the start, {end:.1f} at the end, on "
        f"{meta['machine']['logical_cpus']} CPUs; each sample's load is in the JSON."
    )
    if size.memory_min_params < 100_000_000:
        notes.append(
            f"size {size_name}: the memory model has "
            f"{meta['models']['memory_model']['parameters'] / 1e6:.1f}M parameters (the 100M+ "
            "comparison runs at sizes quick and full)."
        )
    return notes


def run_benchmark(
    size_name: str = "quick",
    repeats: int | None = None,
    out_dir: str | Path | None = None,
    cases: list[str] | None = None,
) -> tuple[Report, Path, Path]:
    """Run the benchmark, write its JSON and Markdown report, print the Markdown.

    `cases`: shell-style patterns of the case names to run (default: all); ratios whose cases
    did not run are reported as such."""
    import ray

    size = SIZES[size_name]
    owns_ray = not ray.is_initialized()
    if owns_ray:
        from training.pretrain import start_local_ray

        # With the dashboard, as `fmstack` starts it: Ray Train's placement-group cleaner asks
        # its state API whether the run's controller is alive (and logs a warning each second
        # when there is none).
        start_local_ray(WORKERS)
    storage = Path(tempfile.mkdtemp(prefix="fmstack-bench-"))
    started = time.time()
    try:
        meta: dict[str, Any] = {
            "size": size_name,
            "config": dataclasses.asdict(size),
            "machine": _cpu_info(),
            "versions": _versions(),
            "load_average_start": os.getloadavg(),
        }
        every_case, meta["models"] = build_cases(size, storage)
        rounds = repeats or size.repeats
        results = run_interleaved(select(every_case, cases), rounds)
        _add_fraction_of_ceiling(results)
        meta["load_average_end"] = os.getloadavg()
        meta["wall_seconds"] = round(time.time() - started, 1)
        report = Report(
            name=f"pretrain-{size_name}",
            title=f"pretraining benchmark, size {size_name}",
            repeats=rounds,
            cases=results,
            ratios=ratios(results),
            meta=meta,
            notes=_notes(size_name, size, meta, results),
            labels=LABELS,
            columns=COLUMNS,
        )
        json_path, md_path = report.write(out_dir or RESULTS_DIR)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if owns_ray:
            ray.shutdown()
    print(report.markdown(), flush=True)
    print(f"wrote {json_path} and {md_path}", flush=True)
    return report, json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    parser.add_argument(
        "--repeats", type=int, default=None, help="rounds of interleaved cases (default: per size)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where reports go")
    parser.add_argument(
        "--cases",
        nargs="+",
        metavar="PATTERN",
        help="run only the cases whose names match (shell patterns, e.g. 'plain *' '*ZeRO-3')",
    )
    args = parser.parse_args(argv)
    report, _, _ = run_benchmark(args.size, args.repeats, args.out, args.cases)
    return 1 if any(c.status == "error" for c in report.cases) else 0


if __name__ == "__main__":
    sys.exit(main())
