"""Learning-rate schedule: linear warm-up, then cosine, linear or constant decay."""

from __future__ import annotations

import math

from training.config import OptimizerConfig


def lr_multiplier(step: int, cfg: OptimizerConfig, max_steps: int) -> float:
    """Factor applied to the peak LR before optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay
