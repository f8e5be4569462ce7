"""Shared pieces of the benchmark scripts: a synthetic masked batch and memory readings."""

from __future__ import annotations

import ctypes
import resource
import statistics

import numpy as np
import torch

from perceiver_lm.data import collate_masked
from perceiver_lm.masking import mask_tokens


def synthetic_batch(batch_size: int, window: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Masked windows of random lowercase words: speed depends on shapes and mask count, not text."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(batch_size):
        words = rng.integers(97, 123, window)
        words[rng.random(window) < 0.18] = 32
        masked = mask_tokens(words.astype(np.int64) + 6, rng)
        examples.append({"input_ids": masked.input_ids, "positions": masked.positions, "labels": masked.labels})
    return collate_masked(examples)


def dense_labels(batch: dict[str, torch.Tensor], window: int) -> torch.Tensor:
    """[B, L] labels with -100 everywhere but the masked positions (what transformers' MLM expects), on the
    batch's device."""
    labels, positions = batch["labels"], batch["query_positions"]
    dense = torch.full((labels.shape[0], window), -100, dtype=labels.dtype, device=labels.device)
    valid = labels != -100
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    dense[rows[valid], positions[valid]] = labels[valid]
    return dense


def matmul_peak(device: str, reps: int = 10) -> dict[str, float]:
    """GFLOP/s of a square matmul (the best of ``reps``) in fp32 and bf16: the ceiling for everything else."""
    import time

    size = 8192 if device.startswith("cuda") else 2048
    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
        best = float("inf")
        for _ in range(reps + 2):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        peak[name] = 2 * size**3 / best / 1e9
    return peak


def model_flops(step) -> int:
    """FLOPs of ``step()`` with every attention on the exact math path and no padded channels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    import perceiver_lm.model as model_module

    padding = model_module._pad_for_fused_cpu_kernel
    model_module._pad_for_fused_cpu_kernel = lambda *_: False  # count model FLOPs, not padded channels
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            step()
    finally:
        model_module._pad_for_fused_cpu_kernel = padding
    return counter.get_total_flops()


def peak_memory_bytes(device: str) -> int:
    """Peak GPU memory allocated, or the process's max RSS on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_now(device: str) -> int:
    """Memory in use now: allocated GPU memory, or resident set size after returning freed heap to the OS."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _proc_status("VmRSS")


def reset_peak_memory(device: str) -> None:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")


def peak_memory_since_reset(device: str) -> int:
    """Peak memory since `reset_peak_memory`."""
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else _proc_status("VmHWM")


def time_steps(step, device: str, warmup: int, steps: int) -> tuple[float, int]:
    """Seconds per call of ``step()`` after ``warmup`` calls (the device synchronised around the timed ones),
    and the peak memory in bytes afterwards (on a GPU: the timed steps' own peak)."""
    import time

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps, peak_memory_bytes(device)


def spread(values: list[float | None]) -> str:
    """Mean ± standard deviation of a result over seeds (None: a missing run; one value: as it is)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}" if len(values) > 1 else f"{values[0]:.1f}"
