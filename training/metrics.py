"""Training metrics: measured in a plain object, exported through Ray's metrics API.

Ray's metrics agent serves these to Prometheus from every node; series carry the run name and
the objective. Only rank 0 exports, since every figure is already global.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from pathlib import Path


@dataclasses.dataclass
class StepWindow:
    """Throughput over the steps since the last report (intervals from `time.monotonic`)."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    steps: int = 0
    tokens: int = 0

    def add(self, steps: int, tokens: int) -> None:
        self.steps += steps
        self.tokens += tokens

    def rates(self, flops_per_token: float) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        tokens_per_s = self.tokens / elapsed
        return {
            "step_seconds": elapsed / max(self.steps, 1),
            "tokens_per_second": tokens_per_s,
            "flops_per_second": tokens_per_s * flops_per_token,
        }


class PeakMemory:
    """Peak memory of this worker since construction: accelerator memory on GPUs, resident set
    size on CPUs (Linux's VmHWM, reset at construction so that what the process did before,
    such as reading data, does not count)."""

    def __init__(self, use_gpu: bool) -> None:
        self._use_gpu = use_gpu
        if use_gpu:
            import torch

            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS
            self._resettable = True
        except OSError:
            self._resettable = False

    def bytes(self) -> int:
        if self._use_gpu:
            import torch

            return int(torch.cuda.max_memory_allocated())
        if self._resettable:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # lifetime, KiB

    def max_across_ranks(self) -> int:
        """The largest peak over all workers (a collective call)."""
        import torch
        import torch.distributed as dist

        from training.hardware import all_reduce

        t = torch.tensor([self.bytes()], dtype=torch.int64)
        return int(all_reduce(t, op=dist.ReduceOp.MAX).item())


class TrainingMetrics:
    """Gauges and counters named `fmstack_train_*`, tagged with run and objective."""

    def __init__(self, run: str, objective: str) -> None:
        from ray.util.metrics import Counter, Gauge

        tags = ("run", "objective")
        self._tags = {"run": run, "objective": objective}

        def gauge(name: str, doc: str) -> Gauge:
            g = Gauge(f"fmstack_train_{name}", description=doc, tag_keys=tags)
            g.set_default_tags(self._tags)
            return g

        self.loss = gauge("loss", "Training loss over the last logging window.")
        self.validation_loss = gauge("validation_loss", "Mean validation loss.")
        self.validation_perplexity = gauge("validation_perplexity", "exp(validation loss).")
        self.validation_accuracy = gauge(
            "validation_accuracy", "Validation accuracy (classifiers)."
        )
        self.validation_macro_f1 = gauge(
            "validation_macro_f1", "Validation macro F1 (classifiers)."
        )
        self.tokens_per_second = gauge(
            "tokens_per_second", "Training tokens per second, all workers."
        )
        self.flops_per_second = gauge("flops_per_second", "Achieved training FLOP/s, all workers.")
        self.step_seconds = gauge("step_seconds", "Wall time per optimizer step.")
        self.learning_rate = gauge("learning_rate", "Current learning rate.")
        self.step = gauge("step", "Optimizer steps done.")
        self.last_checkpoint = gauge(
            "last_checkpoint_timestamp_seconds", "Unix time of the last saved checkpoint."
        )
        self.checkpoint_seconds = gauge("checkpoint_seconds", "Time to save the last checkpoint.")
        self.tokens = Counter(
            "fmstack_train_tokens_total", description="Training tokens processed.", tag_keys=tags
        )
        self.tokens.set_default_tags(self._tags)

    def record_window(self, step: int, loss: float, lr: float, rates: dict[str, float]) -> None:
        self.step.set(step)
        self.loss.set(loss)
        self.learning_rate.set(lr)
        self.tokens_per_second.set(rates["tokens_per_second"])
        self.flops_per_second.set(rates["flops_per_second"])
        self.step_seconds.set(rates["step_seconds"])

    def record_tokens(self, tokens: int) -> None:
        self.tokens.inc(tokens)

    def record_validation(
        self,
        loss: float,
        perplexity: float | None = None,
        accuracy: float | None = None,
        macro_f1: float | None = None,
    ) -> None:
        self.validation_loss.set(loss)
        for gauge, value in (
            (self.validation_perplexity, perplexity),
            (self.validation_accuracy, accuracy),
            (self.validation_macro_f1, macro_f1),
        ):
            if value is not None:
                gauge.set(value)

    def record_checkpoint(self, seconds: float) -> None:
        self.last_checkpoint.set(time.time())
        self.checkpoint_seconds.set(seconds)
