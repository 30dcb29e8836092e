"""The DeepSpeed config, derived from a recipe; nothing in it is typed twice."""

from __future__ import annotations

from typing import Any

from training.config import JobConfig


def deepspeed_config(cfg: JobConfig, precision: str, hidden: int) -> dict[str, Any]:
    """DeepSpeed's JSON config for a recipe at a resolved precision (`fp32` or `bf16`), for a
    model of width `hidden`.

    The optimizer and LR schedule are passed to `deepspeed.initialize` as objects.
    """
    ds = cfg.deepspeed
    # Communication buckets sized to the model (at least 2e7 elements, so that small models
    # still reduce in a few calls); DeepSpeed's defaults (5e8 elements, 2 GB in fp32) are made
    # for large GPU models and would dwarf a small model's own state.
    bucket = max(hidden * hidden, 20_000_000)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero |= {
            "overlap_comm": cfg.scaling.use_gpu,
            "contiguous_gradients": True,
            "reduce_bucket_size": bucket,
            "allgather_bucket_size": bucket,
        }
    if ds.zero_stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden,
            # Gathered parameters are released once used instead of kept for reuse, so a rank
            # holds about one bucket of whole parameters beyond its partition (DeepSpeed's
            # default, 1e9, keeps any model of under a billion parameters whole).
            "stage3_max_live_parameters": bucket,
            "stage3_max_reuse_distance": bucket,
        }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    return {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": cfg.optimizer.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        # torch's AdamW is tested with ZeRO here; DeepSpeed's CPU Adam is used with offload.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,  # fmstack prints its own progress line
        "wall_clock_breakdown": False,
    }
