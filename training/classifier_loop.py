"""The per-worker loop for fine-tuning and distilling sequence classifiers.

Every rank trains on its shard; validation runs every `eval_every` steps over all ranks'
validation shards and each pass is reported with a checkpoint, so that Ray keeps the best ones.
The driver exports the best checkpoint when training ends (`training.finetune`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from training.checkpoint import TrainerState, restore_checkpoint, save_checkpoint
from training.classifier import classifier_from_pretrained, student_from_teacher
from training.config import DistillConfig, FinetuneConfig
from training.finetune import TEACHER_LOGITS
from training.hardware import all_reduce, fast_bf16
from training.inference import length_sorted_batches
from training.labeled import LABELED
from training.loop import (
    build_engine,
    configure_process,
    fail_if_rehearsing,
    format_duration,
    mean_across_ranks,
    printer,
)
from training.metrics import PeakMemory, StepWindow, TrainingMetrics
from training.objectives import distillation_loss, hidden_state_loss

LENGTH_GROUP_BATCHES = 50
"""Batches per window that `epoch_batches` sorts by length (Hugging Face's group_by_length uses
the same megabatch of 50)."""


def classifier_loop_per_worker(loop_config: dict[str, Any]) -> None:
    schema = DistillConfig if loop_config["job"] == "distill" else FinetuneConfig
    cfg = schema.model_validate(loop_config["recipe"])
    configure_process(cfg)
    import ray.train
    import torch.distributed as dist

    rank = ray.train.get_context().get_world_rank()
    label_names: list[str] = loop_config["label_names"]
    max_steps: int = loop_config["max_steps"]
    eval_every: int = loop_config["eval_every"]
    torch.manual_seed(cfg.train.seed)
    model, teacher, teacher_layers = _build_models(cfg, loop_config, label_names)
    precision = cfg.resolved_precision(fast_bf16(cfg.scaling.use_gpu))
    engine = build_engine(model, cfg, precision, max_steps, model.config.hidden_size)
    if teacher is not None:
        teacher.to(engine.device)
    state = restore_checkpoint(engine)
    memory = PeakMemory(cfg.scaling.use_gpu)
    # Labeled sets are small: each rank holds its shards in memory, which lets every epoch
    # reshuffle and group texts by length without another pass through Ray Data.
    train_rows = shard_rows(ray.train.get_dataset_shard("train"))
    val_rows = shard_rows(ray.train.get_dataset_shard("validation"))
    metrics = TrainingMetrics(cfg.checkpoint.run_name, loop_config["job"]) if rank == 0 else None
    log = printer(rank)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"{loop_config['job']}: {n_params / 1e6:.1f}M params, {len(label_names)} labels, "
        f"ZeRO-{cfg.deepspeed.zero_stage}, {precision}, {dist.get_world_size()} workers, "
        f"{max_steps} steps" + (f", resuming at step {state.step}" if state.step else "")
    )

    # The distillation section, when the teacher's targets are part of the loss (alpha > 0).
    distill = (
        cfg.distillation if isinstance(cfg, DistillConfig) and cfg.distillation.alpha > 0 else None
    )
    window, loss_sum, loss_count = StepWindow(), 0.0, 0
    last: dict[str, float] = {}
    started, start_step = time.monotonic(), state.step
    batches = classifier_batches(
        train_rows,
        cfg.train.micro_batch_size,
        state,
        seed=cfg.train.seed + rank,
        group_by_length=cfg.train.group_by_length,
    )
    for batch in batches:
        if state.step >= max_steps:
            break
        batch = {name: t.to(engine.device) for name, t in batch.items()}
        inputs = trim_padding(batch)
        labels = batch["label"].long()
        want_hidden = bool(distill and distill.hidden_weight > 0)
        out = engine(**inputs, output_hidden_states=want_hidden)
        # 0 marks a copy of a text that only the teacher has labeled (distillation.augment)
        labeled = batch.get(LABELED) if distill is not None else None
        loss = torch.nn.functional.cross_entropy(
            out.logits.float(), labels, reduction="mean" if labeled is None else "none"
        )
        if distill is not None:
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(**inputs, output_hidden_states=want_hidden)
                t_logits = t_out.logits
            else:
                t_logits = batch[TEACHER_LOGITS].float()
            loss = distillation_loss(
                out.logits,
                t_logits,
                loss,
                temperature=distill.temperature,
                alpha=distill.alpha,
                labeled=labeled,
            )
            if want_hidden:
                loss = loss + distill.hidden_weight * hidden_state_loss(
                    out.hidden_states,
                    t_out.hidden_states,
                    teacher_layers,
                    inputs["attention_mask"],
                )
        engine.backward(loss)
        engine.step()
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
        window.add(0, int(inputs["attention_mask"].sum()) * dist.get_world_size())
        if engine.global_steps == state.step:
            continue
        state.step = engine.global_steps
        window.add(1, 0)
        fail_if_rehearsing(cfg.train.fail_once_at_step, state, rank)

        if state.step % cfg.train.log_every == 0 or state.step == max_steps:
            train_loss = mean_across_ranks(loss_sum, loss_count)
            rates = window.rates(6.0 * n_params)  # per token: forward + backward
            lr = engine.get_lr()[0]
            last |= {"train_loss": train_loss, "learning_rate": lr, **rates}
            elapsed = time.monotonic() - started
            eta = elapsed / max(1, state.step - start_step) * (max_steps - state.step)
            log(
                f"step {state.step}/{max_steps} | epoch {state.epoch} | loss {train_loss:.4f} | "
                f"lr {lr:.2e} | {rates['tokens_per_second']:,.0f} tok/s | "
                f"eta {format_duration(eta)}"
            )
            if metrics:
                metrics.record_window(state.step, train_loss, lr, rates)
            window, loss_sum, loss_count = StepWindow(), 0.0, 0

        if state.step % eval_every == 0 or state.step == max_steps:
            val = validate(engine, val_rows, cfg.train.micro_batch_size, len(label_names))
            last |= val
            score = val[cfg.train.metric] * (-1 if cfg.train.metric == "validation_loss" else 1)
            improved = state.best_score is None or score > state.best_score
            if improved:
                state.best_score, state.best_step = score, state.step
                state.evals_without_improvement = 0
            else:
                state.evals_without_improvement += 1
            log(
                f"step {state.step} | validation loss {val['validation_loss']:.4f} | accuracy "
                f"{val['accuracy']:.4f} | macro F1 {val['macro_f1']:.4f}"
                + (" | best so far" if improved else "")
            )
            if metrics:
                metrics.record_validation(
                    val["validation_loss"], accuracy=val["accuracy"], macro_f1=val["macro_f1"]
                )
            report = {
                **last,
                "step": state.step,
                "epoch": state.epoch,
                "peak_memory_bytes": memory.max_across_ranks(),
                "resumed_from_step": state.resumed_from_step or 0,
            }
            seconds = save_checkpoint(engine, state, report)
            if metrics:
                metrics.record_checkpoint(seconds)
            patience = cfg.train.early_stopping_patience
            if patience and state.evals_without_improvement >= patience:
                log(
                    f"early stopping at step {state.step}: no better {cfg.train.metric} in "
                    f"{patience} validation passes (best at step {state.best_step})"
                )
                break
    dist.barrier()


def _build_models(
    cfg: FinetuneConfig | DistillConfig, loop_config: dict[str, Any], label_names: list[str]
) -> tuple[PreTrainedModel, PreTrainedModel | None, list[int]]:
    """The model to train, the frozen in-worker teacher (if any), and the layer mapping."""
    if isinstance(cfg, FinetuneConfig):
        model = classifier_from_pretrained(loop_config["base_dir"], label_names, cfg.model.dropout)
        return model, None, []
    if cfg.student.init == "pretrained":
        # Its own tokenizer: the teacher's logits come precomputed, per text (see DistillConfig).
        return classifier_from_pretrained(loop_config["student_dir"], label_names), None, []
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(loop_config["teacher_dir"])
    teacher.eval().requires_grad_(False)
    student, layers = student_from_teacher(teacher, cfg.student)
    in_worker = cfg.distillation.teacher_logits == "in_worker" and cfg.distillation.alpha > 0
    return student, (teacher if in_worker else None), layers


def shard_rows(shard: Any) -> dict[str, torch.Tensor]:
    """All rows of a rank's dataset shard as tensors, in a canonical order (sorted by token ids),
    so that a restarted worker sees them in the same order whatever order Ray Data streams them.
    They stay in host memory (the loop moves each micro-batch to the worker's device)."""
    parts = list(shard.iter_torch_batches(batch_size=4096, dtypes=None, device="cpu"))
    if not parts:
        return {}
    rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    ids = rows["input_ids"].numpy()
    order = torch.from_numpy(np.lexsort(ids.T[::-1]))
    return {k: v[order] for k, v in rows.items()}


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> np.ndarray:
    """Row indices of one epoch's micro-batches, one row of the result per batch.

    Every epoch draws a fresh permutation (remainder rows sit the epoch out). With
    `group_by_length`, each window of `LENGTH_GROUP_BATCHES` batches is sorted by length, so that
    a batch pads little, and the batches are then shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    n = len(lengths) // batch_size * batch_size
    order = rng.permutation(len(lengths))[:n]
    if not group_by_length:
        return order.reshape(-1, batch_size)
    window = LENGTH_GROUP_BATCHES * batch_size
    chunks = [order[i : i + window] for i in range(0, n, window)]
    order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks] or [order])
    batches = order.reshape(-1, batch_size)
    return batches[rng.permutation(len(batches))]


def classifier_batches(
    rows: dict[str, torch.Tensor],
    batch_size: int,
    state: TrainerState,
    *,
    seed: int,
    group_by_length: bool,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless micro-batches of a rank's rows, starting at the saved data position."""
    lengths = rows["attention_mask"].sum(1).numpy()
    while True:
        batches = epoch_batches(lengths, batch_size, seed, state.epoch, group_by_length)
        for i in range(state.batches_in_epoch, len(batches)):
            state.batches_in_epoch = i + 1
            idx = torch.from_numpy(batches[i])
            yield {k: v[idx] for k, v in rows.items()}
        state.epoch += 1
        state.batches_in_epoch = 0


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model inputs cut to the longest example in the batch (rows are padded to max_length)."""
    mask = batch["attention_mask"].long()
    longest = int(mask.sum(1).max())
    return {
        "input_ids": batch["input_ids"].long()[:, :longest],
        "attention_mask": mask[:, :longest],
    }


def validate(
    engine: Any, rows: dict[str, torch.Tensor], batch_size: int, n_labels: int
) -> dict[str, float]:
    """Loss, accuracy and macro F1 over every rank's whole validation shard."""
    engine.eval()
    confusion = torch.zeros(n_labels, n_labels, dtype=torch.float64)
    loss_total = torch.zeros(1, dtype=torch.float64)
    lengths = rows["attention_mask"].sum(1).tolist() if rows else []
    with torch.no_grad():
        for idx in length_sorted_batches(lengths, batch_size):
            batch = {k: v[idx] for k, v in rows.items()}
            inputs = {k: v.to(engine.device) for k, v in trim_padding(batch).items()}
            logits = engine(**inputs).logits.float().cpu()
            labels = batch["label"].long()
            loss_total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            pred = logits.argmax(-1)
            confusion.index_put_((labels, pred), torch.ones_like(labels, dtype=torch.float64), True)
    confusion = all_reduce(confusion)
    loss_total = all_reduce(loss_total)
    engine.train()
    return {
        "validation_loss": float(loss_total / confusion.sum().clamp(min=1)),
        **_scores(confusion),
    }


def _scores(confusion: torch.Tensor) -> dict[str, float]:
    total = confusion.sum().clamp(min=1)
    tp = confusion.diag()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp)
    )
    return {"accuracy": float(tp.sum() / total), "macro_f1": float(f1.mean())}
