"""The per-worker training loop. Ray Train runs `train_loop_per_worker` on every rank.

Builders make the tokenizer, model, engine and objective; the loop reads like pseudo-code;
everything arrives through the loop config, nothing through module globals.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformers

from training.checkpoint import (
    TrainerState,
    gather_fp32_state_dict,
    load_weights,
    restore_checkpoint,
    save_checkpoint,
    write_export,
)
from training.config import JobConfig, PretrainConfig
from training.data import configure_ray_data
from training.deepspeed_config import deepspeed_config
from training.hardware import all_reduce, fast_bf16, release_freed_memory
from training.metrics import PeakMemory, StepWindow, TrainingMetrics
from training.models import (
    build_model,
    build_partitioned_model,
    count_parameters,
    flops_per_token,
    model_config,
)
from training.objectives import (
    IGNORE_INDEX,
    causal_lm_inputs,
    distillation_loss,
    masked_lm_inputs,
)
from training.schedule import lr_multiplier
from training.storage import MANIFEST, local_copy, publish_directory
from training.tokenizer import load_tokenizer

MakeInputs = Callable[[torch.Tensor, tuple[Any, ...]], dict[str, torch.Tensor]]


class InjectedFailure(RuntimeError):
    """Raised by `train.fail_once_at_step` to rehearse recovery."""


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    cfg = PretrainConfig.model_validate(loop_config["recipe"])
    configure_process(cfg)
    import ray.train
    import torch.distributed as dist

    rank = ray.train.get_context().get_world_rank()
    tokenizer = load_tokenizer(local_copy(loop_config["tokenizer_uri"]))
    torch.manual_seed(cfg.train.seed)
    hf_config = model_config(cfg.model, tokenizer, cfg.data.seq_len)
    precision = cfg.resolved_precision(fast_bf16(cfg.scaling.use_gpu))
    memory = PeakMemory(cfg.scaling.use_gpu)  # from here on: building the model, then training
    if cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.zero_init:
        ds_config = deepspeed_config(cfg, precision, hf_config.hidden_size)
        model = build_partitioned_model(hf_config, ds_config)
    else:
        model = build_model(hf_config)
    n_params = count_parameters(model)
    flops_tok = flops_per_token(hf_config, n_params, cfg.data.seq_len)
    engine = build_engine(model, cfg, precision, cfg.train.max_steps, hf_config.hidden_size)
    state = restore_checkpoint(engine)
    teacher = load_teacher(loop_config.get("teacher_dir"), engine.device)
    make_inputs = build_objective(cfg, tokenizer, rank)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation")
    metrics = TrainingMetrics(cfg.checkpoint.run_name, cfg.objective) if rank == 0 else None
    log = printer(rank)

    log(
        f"{cfg.model.arch} {n_params / 1e6:.1f}M params, ZeRO-{cfg.deepspeed.zero_stage}, "
        f"{precision}, {dist.get_world_size()} workers, grad accum "
        f"{cfg.grad_accum_steps}" + (f", resuming at step {state.step}" if state.step else "")
    )
    if state.initial_validation_loss is None:
        state.initial_validation_loss = evaluate(engine, val_shard, make_inputs, cfg)
        log(f"step 0 | validation loss {state.initial_validation_loss:.4f}")

    tokens_per_micro = cfg.train.micro_batch_size * cfg.data.seq_len * dist.get_world_size()
    window, loss_sum, loss_count = StepWindow(), 0.0, 0
    last_metrics: dict[str, float] = {}
    started = time.monotonic()
    start_step = state.step
    for batch in micro_batches(train_shard, cfg.train.micro_batch_size, state):
        if state.step >= cfg.train.max_steps:
            break
        input_ids = batch["input_ids"]
        position = ("train", state.epoch, state.batches_in_epoch)  # survives a resume
        inputs = make_inputs(input_ids, position)
        out = engine(**inputs)
        loss = out.loss
        if teacher is not None and cfg.distillation is not None:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=inputs["input_ids"]).logits
            loss = distillation_loss(
                out.logits,
                teacher_logits,
                loss,
                temperature=cfg.distillation.temperature,
                alpha=cfg.distillation.alpha,
            )
        engine.backward(loss)
        engine.step()
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
        state.tokens_seen += tokens_per_micro
        window.add(0, tokens_per_micro)
        if engine.global_steps == state.step:
            continue  # still accumulating gradients
        state.step = engine.global_steps
        window.add(1, 0)

        fail_if_rehearsing(cfg.train.fail_once_at_step, state, rank)
        if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
            train_loss = mean_across_ranks(loss_sum, loss_count)
            rates = window.rates(flops_tok)
            lr = engine.get_lr()[0]
            last_metrics |= {"train_loss": train_loss, **rates, "learning_rate": lr}
            eta = (
                (time.monotonic() - started)
                / (state.step - start_step)
                * (cfg.train.max_steps - state.step)
            )
            log(
                f"step {state.step}/{cfg.train.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                f"{rates['tokens_per_second']:,.0f} tok/s | "
                f"{rates['flops_per_second'] / 1e9:.1f} GFLOP/s | eta {format_duration(eta)}"
            )
            if metrics:
                metrics.record_window(state.step, train_loss, lr, rates)
                metrics.record_tokens(window.tokens)
            window, loss_sum, loss_count = StepWindow(), 0.0, 0
        if state.step % cfg.train.eval_every == 0 or state.step == cfg.train.max_steps:
            val_loss = evaluate(engine, val_shard, make_inputs, cfg)
            last_metrics |= {"validation_loss": val_loss, "validation_perplexity": _ppl(val_loss)}
            log(
                f"step {state.step} | validation loss {val_loss:.4f} | "
                f"perplexity {_ppl(val_loss):.1f}"
            )
            if metrics:
                metrics.record_validation(val_loss, _ppl(val_loss))
        if state.step % cfg.checkpoint.every_steps == 0 or state.step == cfg.train.max_steps:
            report = {
                **last_metrics,
                "peak_memory_bytes": memory.max_across_ranks(),
                "step": state.step,
                "epoch": state.epoch,
                "tokens_seen": state.tokens_seen,
                "initial_validation_loss": state.initial_validation_loss,
                "resumed_from_step": state.resumed_from_step or 0,
            }
            seconds = save_checkpoint(engine, state, report)
            if metrics:
                metrics.record_checkpoint(seconds)

    export(engine, hf_config, tokenizer, cfg, loop_config, state, last_metrics, n_params)
    dist.barrier()


# ---------------------------------------------------------------- builders


def configure_process(cfg: JobConfig) -> None:
    if cfg.releases_freed_memory:
        release_freed_memory()
    # DeepSpeed picks its accelerator on first use; CPU workers must not probe for CUDA.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cfg.scaling.use_gpu else "cpu")
    # DeepSpeed still calls collectives that torch has renamed; one warning per call floods logs.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )
    # A classifier head that is new on purpose is not news; fmstack logs what it loaded.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(cfg.scaling.torch_threads or max(1, int(cfg.scaling.cpus_per_worker)))
    configure_ray_data()
    # Every evaluation pass over a shard would log its start, end and statistics.
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def build_engine(
    model: torch.nn.Module,
    cfg: JobConfig,
    precision: str,
    max_steps: int,
    hidden: int,
) -> Any:
    """A DeepSpeed engine with AdamW (decay on matrices only) and the recipe's LR schedule."""
    import deepspeed

    opt = cfg.optimizer
    trainable = [p for p in model.parameters() if p.requires_grad]

    def is_matrix(p: torch.nn.Parameter) -> bool:
        return len(getattr(p, "ds_shape", p.shape)) >= 2  # a ZeRO-3 partition is flat

    decay = [p for p in trainable if is_matrix(p)]
    no_decay = [p for p in trainable if not is_matrix(p)]
    groups = [
        {"params": decay, "weight_decay": opt.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.deepspeed.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
    else:
        optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)

    def schedule(optim: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(
            optim, lambda step: lr_multiplier(step, opt, max_steps)
        )

    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=deepspeed_config(cfg, precision, hidden),
    )
    return engine


def load_teacher(teacher_dir: str | None, device: torch.device) -> torch.nn.Module | None:
    """A frozen causal-LM teacher for distillation (each worker runs its own copy on `device`)."""
    if teacher_dir is None:
        return None
    from transformers import AutoModelForCausalLM

    teacher: torch.nn.Module = AutoModelForCausalLM.from_pretrained(teacher_dir)
    return teacher.to(device).eval().requires_grad_(False)


def build_objective(cfg: PretrainConfig, tokenizer: Any, rank: int) -> MakeInputs:
    """Inputs and labels for a batch.

    Masking is seeded by (seed, rank, position), so a resumed run masks exactly as before.
    """
    if cfg.objective == "causal_lm":
        return lambda ids, _key: causal_lm_inputs(ids)
    special = [t for t in tokenizer.all_special_ids if t is not None]

    def masked(ids: torch.Tensor, key: tuple[Any, ...]) -> dict[str, torch.Tensor]:
        seed = int.from_bytes(
            hashlib.blake2b(repr((cfg.train.seed, rank, key)).encode(), digest_size=8).digest(),
            "little",
        ) & (2**63 - 1)
        # Masked on the CPU, whose seeded generator gives the same masks on every device.
        inputs = masked_lm_inputs(
            ids.cpu(),
            mask_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            special_ids=special,
            probability=cfg.train.mlm_probability,
            generator=torch.Generator().manual_seed(seed),
        )
        return {name: t.to(ids.device) for name, t in inputs.items()}

    return masked


def micro_batches(
    shard: Any, batch_size: int, state: TrainerState, dtypes: Any = torch.long
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless micro-batches of this rank's shard, starting at the saved data position."""
    while True:
        skip = state.batches_in_epoch
        batches = shard.iter_torch_batches(batch_size=batch_size, drop_last=True, dtypes=dtypes)
        for i, batch in enumerate(batches):
            if i < skip:
                continue
            state.batches_in_epoch = i + 1
            yield batch
        state.epoch += 1
        state.batches_in_epoch = 0


def evaluate(engine: Any, shard: Any, make_inputs: MakeInputs, cfg: PretrainConfig) -> float:
    """Token-weighted mean validation loss over every rank's first `eval_batches` batches."""
    engine.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    batches = shard.iter_torch_batches(
        batch_size=cfg.train.micro_batch_size, drop_last=True, dtypes=torch.long
    )
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if i >= cfg.train.eval_batches:
                break
            inputs = make_inputs(batch["input_ids"], ("eval", i))
            labels = inputs["labels"]
            targets = labels[:, 1:] if cfg.objective == "causal_lm" else labels
            n = int((targets != IGNORE_INDEX).sum())
            totals += torch.tensor(
                [engine(**inputs).loss.float().item() * n, n], dtype=torch.float64
            )
    totals = all_reduce(totals)
    engine.train()
    return float(totals[0] / totals[1])


def export(
    engine: Any,
    hf_config: Any,
    tokenizer: Any,
    cfg: PretrainConfig,
    loop_config: dict[str, Any],
    state: TrainerState,
    metrics: dict[str, float],
    n_params: int,
) -> None:
    """Rank 0 publishes the consolidated Hugging Face model (all ranks join the gather)."""
    import ray.train

    weights = gather_fp32_state_dict(engine.module)
    if ray.train.get_context().get_world_rank() != 0:
        return
    manifest = {
        "task": cfg.objective,
        "architecture": hf_config.model_type,
        "parameters": n_params,
        "metrics": {
            **metrics,
            "initial_validation_loss": state.initial_validation_loss,
            "steps": state.step,
            "tokens_seen": state.tokens_seen,
        },
        "lineage": loop_config["lineage"],
        "recipe": loop_config["recipe"],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    model = build_model(hf_config)
    load_weights(model, weights)
    with tempfile.TemporaryDirectory(prefix="fmstack-export-") as tmp:
        write_export(Path(tmp), model, tokenizer, manifest)
        publish_directory(Path(tmp), loop_config["export_uri"], manifest_last=MANIFEST)
    sys.stdout.write(f"exported model to {loop_config['export_uri']}\n")


# ---------------------------------------------------------------- helpers


def fail_if_rehearsing(at_step: int | None, state: TrainerState, rank: int) -> None:
    """`train.fail_once_at_step`: rank 0 crashes once, in a fresh run, to rehearse recovery."""
    if at_step == state.step and state.resumed_from_step is None and rank == 0:
        raise InjectedFailure(f"injected failure at step {state.step} (train.fail_once_at_step)")


def mean_across_ranks(total: float, count: int) -> float:
    t = all_reduce(torch.tensor([total, count], dtype=torch.float64))
    return float(t[0] / t[1].clamp(min=1))


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def printer(rank: int) -> Callable[[str], None]:
    def log(message: str) -> None:
        # Write directly: Ray Train's patched print would log each line twice.
        if rank == 0:
            sys.stdout.write(message + "\n")
            sys.stdout.flush()

    return log
