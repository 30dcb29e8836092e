"""What the hardware a worker runs on does well."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# CPU flags with bf16 matrix units (AMX). Elsewhere fp32 is faster: torch emulates bf16 on
# AVX2 (a 1024x384x1536 matmul ran at 1.3 GFLOP/s in bf16 against 51 in fp32 on an EPYC core),
# and AVX512-BF16 alone lost too (on 2 Xeon cores: 174 against 321 GFLOP/s; a 6-layer,
# 384-wide BERT step 1.27x slower in bf16).
_BF16_CPU_FLAGS = {"amx_bf16"}


@functools.cache
def cpu_has_fast_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & _BF16_CPU_FLAGS)


def on_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a new thread that ends when it returns, and with it the OpenMP team that
    any parallel torch op there started.

    PyTorch's CPU parallelism is GNU OpenMP, which keeps a team of worker threads for every
    thread that has run a parallel op. Once it manages more threads than there are CPUs, its
    workers stop spin-waiting between parallel regions and sleep, and every region then waits
    for them to wake: on 2 cores, a batch-1 forward pass of a 6-layer MiniLM took 13 ms on one
    thread while another thread's team lived on, against 6.6 ms alone. A process that runs its
    passes on one thread loads its models (which copies tensors in parallel) with this.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fmstack-load") as pool:
        return pool.submit(fn, *args).result()


# glibc's `mallopt` parameter that fixes the size from which allocations get their own mapping.
_M_MMAP_THRESHOLD = -3
FREED_MEMORY_THRESHOLD = 1 << 20
"""With `release_freed_memory`, freed allocations of this many bytes or more leave the process."""


def release_freed_memory(threshold: int = FREED_MEMORY_THRESHOLD) -> bool:
    """Give every freed allocation of `threshold` bytes or more back to the OS at once (glibc);
    False where the C library has no `mallopt`.

    glibc raises its threshold for such private mappings each time a large block is freed, and
    from then on keeps blocks up to that size in its heap, which it seldom shrinks. ZeRO-3 gathers
    and frees each layer's whole parameters at every step, so a CPU worker's resident memory then
    grows by far more than the worker holds. The cost: fresh pages for every large tensor.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def fast_bf16(use_gpu: bool) -> bool:
    """Whether bf16 is the faster choice on this worker's device."""
    if use_gpu:
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def all_reduce(tensor: Any, op: Any = None) -> Any:
    """`torch.distributed.all_reduce` of a CPU tensor on any backend; returns the result.

    NCCL reduces only CUDA tensors, so on GPU workers the tensor goes to this worker's GPU and
    back; on gloo it is reduced in place.
    """
    import torch
    import torch.distributed as dist

    op = dist.ReduceOp.SUM if op is None else op
    if dist.get_backend() != "nccl":
        dist.all_reduce(tensor, op=op)
        return tensor
    on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(on_gpu, op=op)
    return on_gpu.cpu()
