"""The runtime a run trains on: the Accelerator, its precision and launch checks, and main-process chores.

Everything here is about the machine and the processes, not about a job: which autocast mode suits this
CPU or GPU (and why, in one line the run prints), a fresh Accelerator per run, a check that
`accelerate launch` really started processes that train together, and doing a write on the main
process only while every process learns whether it failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from perceiver_lm.errors import PerceiverLMError

# Instruction sets that run bf16 matmuls natively (oneDNN); without them bf16 is emulated and slower than fp32.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def on_main(accelerator: Any, action: Callable[[], Any], what: str) -> Any:
    """Run ``action`` on the main process only, and let every process know whether it failed.

    A write that fails on the main process (full disk, permissions) would otherwise leave the other
    processes waiting in their next collective until the timeout; here all of them stop together.
    """
    error, result = None, None
    if accelerator.is_main_process:
        try:
            result = action()
        except Exception as err:  # re-raised below, after the other processes have heard of it
            error = err
    failed = error is not None
    if accelerator.num_processes > 1:
        flag = torch.tensor([float(failed)], device=accelerator.device)
        failed = bool(accelerator.reduce(flag, "sum").item())
    if error is not None:
        raise error
    if failed:
        raise PerceiverLMError(f"{what} failed on the main process (its error is in that process's output)")
    return result


def use_accelerator(
    accelerator: Any, mixed_precision: str, cpu: bool, grad_accum: int = 1, compile: bool = False, **kwargs: Any
) -> tuple[Any, str]:
    """The caller's Accelerator checked against the options, or (None) one built from them; and a line
    saying which precision it trains in and why.

    Args:
        accelerator: the caller's Accelerator, or None.
        mixed_precision, cpu, grad_accum: the run's options (``--mixed-precision``, ``--cpu``, ``--grad-accum``).
        compile: ``--compile``: the new Accelerator's ``prepare`` runs the model through torch.compile (inductor).
        kwargs: more arguments for a new Accelerator (trackers, DDP settings).
    """
    from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin

    if accelerator is not None:
        if accelerator.gradient_accumulation_steps != grad_accum:
            raise PerceiverLMError(
                f"--grad-accum {grad_accum}, but the Accelerator given accumulates "
                f"{accelerator.gradient_accumulation_steps} step(s); build it with the same number"
            )
        if grad_accum > 1 and getattr(accelerator.gradient_state, "sync_with_dataloader", True):
            raise PerceiverLMError(
                "the Accelerator given syncs gradients at the end of each dataloader pass, so optimizer steps would "
                "not fall every --grad-accum batches (and a resumed run would start elsewhere); build it with "
                f"GradientAccumulationPlugin(num_steps={grad_accum}, sync_with_dataloader=False)"
            )
        check_launch(accelerator)
        return accelerator, f"{accelerator.mixed_precision} (the caller's Accelerator)"
    precision = resolve_precision(mixed_precision, cpu)
    gpu = torch.cuda.is_available() and not _cpu_forced(cpu)
    if compile:
        import torch._dynamo as dynamo
        from accelerate.utils import TorchDynamoPlugin

        # Shapes vary (the masked count sets pretraining's decoder queries, fine-tuning's lengths vary even padded to
        # a few): torch's default makes them dynamic at the second shape. Static shapes compiled once per padded
        # length ran SST-2 fine-tuning 1.28x faster than eager against dynamic's 1.24x, but after 12 compiles
        # instead of 5 (and pretraining would compile at every step): docs/results.md. Train and eval modes count
        # against dynamo's limit of 8 compiles, past which it quietly runs the model eagerly: raised.
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
        kwargs["dynamo_plugin"] = TorchDynamoPlugin(backend="inductor")
    accelerator = make_accelerator(
        cpu=cpu,
        mixed_precision=precision.mode,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False),
        # Copies from pinned memory overlap the GPU's work instead of blocking the host.
        dataloader_config=DataLoaderConfiguration(non_blocking=gpu),
        **kwargs,
    )
    return accelerator, precision.reason


def finish_trackers(accelerator: Any) -> None:
    """End a run's trackers. Not `accelerator.end_training()`: that also ends the process group, which the
    caller's Accelerator (or the next run of a sweep under `accelerate launch`) still needs."""
    for tracker in accelerator.trackers:
        tracker.finish()


def end_processes() -> None:
    """End the process group at the end of a launched command (the CLI's, once its work is done)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def make_accelerator(**kwargs):
    """An Accelerator for one run, checked against the launch (see `check_launch`).

    Accelerate keeps its state process-wide and refuses a second Accelerator with another precision
    or device; a single-process run therefore starts from fresh state, so that runs one after another
    in one Python process (a notebook, a sweep, the test suite) may differ in precision.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not torch.distributed.is_initialized():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    accelerator = Accelerator(**kwargs)
    check_launch(accelerator)
    return accelerator


def check_launch(accelerator) -> None:
    """Fail when `accelerate launch` started several processes that do not train together."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != world:
        raise PerceiverLMError(
            f"launched {world} processes but Accelerate sees {accelerator.num_processes}; on CPU set "
            "ACCELERATE_USE_CPU=1"
        )


@dataclass(frozen=True)
class Precision:
    """The autocast mode a run uses and why; the why is printed in the run's first lines."""

    mode: str  # Accelerate's mixed_precision: "no", "bf16" or "fp16"
    reason: str


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def default_workers(gpu: bool) -> int:
    """DataLoader workers when none are asked for: on a GPU, workers prepare batches while it computes."""
    return min(4, os.cpu_count() or 1) if gpu else 0


def _cpu_forced(cpu: bool) -> bool:
    return cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def gpu_has_native_bf16(capability: tuple[int, int] | None = None) -> bool:
    """Whether the GPU computes in bf16 natively (Ampere, compute capability 8.0, and later); older GPUs
    (V100 7.0, T4 7.5) emulate it, slower than fp16. ``capability`` defaults to the current device's."""
    major, _ = torch.cuda.get_device_capability() if capability is None else capability
    return major >= 8


def resolve_precision(
    mixed_precision: str,
    cpu: bool,
    flags: frozenset[str] | None = None,
    gpu: bool | None = None,
    capability: tuple[int, int] | None = None,
) -> Precision:
    """Pick the autocast mode for ``--mixed-precision`` (``auto`` decides by the hardware).

    Args:
        mixed_precision: "auto", "no", "bf16" or "fp16".
        cpu: the run is forced onto the CPU (``--cpu`` or ``ACCELERATE_USE_CPU``).
        flags: CPU feature flags; default: this machine's (tests inject them).
        gpu: whether a CUDA GPU is there; default: ask torch.
        capability: the GPU's compute capability; default: ask torch (tests inject it).
    """
    on_gpu = (torch.cuda.is_available() if gpu is None else gpu) and not _cpu_forced(cpu)
    if not on_gpu and mixed_precision == "fp16":
        raise PerceiverLMError(
            "--mixed-precision fp16: CPU autocast has no fp16 path (it would silently run fp32); use bf16, no or auto"
        )
    flags = cpu_flags() if flags is None else flags
    native = [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]
    if mixed_precision == "no":
        return Precision("no", "fp32 (--mixed-precision no)")
    if on_gpu:
        native_gpu = gpu_has_native_bf16(capability)
        if mixed_precision == "auto":
            if native_gpu:
                return Precision("bf16", "bf16 autocast (auto: a GPU with native bf16)")
            return Precision("fp16", "fp16 autocast with a loss scaler (auto: this GPU has no native bf16)")
        slow = "" if native_gpu or mixed_precision == "fp16" else "; this GPU emulates bf16, so expect it slow"
        return Precision(mixed_precision, f"{mixed_precision} autocast (--mixed-precision {mixed_precision}{slow})")
    if mixed_precision == "bf16":
        slow = "" if native else "; this CPU has no native bf16, so expect it slower than fp32"
        return Precision("bf16", f"bf16 autocast (--mixed-precision bf16{slow})")
    if native:
        return Precision("bf16", f"bf16 autocast (auto: this CPU has native bf16, {native[0]})")
    return Precision(
        "no", "fp32 (auto: this CPU has no native bf16, AVX512-BF16 or AMX, so bf16 would be emulated and slower)"
    )
