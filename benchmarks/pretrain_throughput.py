"""Training throughput (bytes/s) and peak memory of MLM pretraining steps, per preset and precision.

Each measurement runs in a fresh subprocess so that peak memory (max RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU) belongs to it alone. Measurements are interleaved
(every repeat runs every preset x precision once) and the table reports medians with their min-max
spread, and each precision's speed-up over fp32 measured in the same run. ``auto`` is the
toolkit's default precision on this machine (`perceiver_lm.runtime.resolve_precision`). Prints a
table, writes JSON.

    python benchmarks/pretrain_throughput.py --presets small --precisions auto,fp32 --repeats 3
    python benchmarks/pretrain_throughput.py --presets small --precisions auto,fp32 --compile off,on --repeats 3

``--compile on`` runs the model through ``torch.compile`` (inductor, as ``--compile`` does in training),
``max-autotune`` in that mode (it benchmarks kernel choices while compiling: minutes); the first step's
time is reported as ``first_step_s`` and the steps are timed after it. Each row's speed-up is over
eager fp32 of the same preset, measured in the same run.
    python benchmarks/pretrain_throughput.py --presets base --device cuda --batch-size 32   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path


def measure(
    preset: str,
    window: int | None,
    batch_size: int,
    steps: int,
    warmup: int,
    device: str,
    precision: str,
    checkpointing: bool,
    attention: str = "default",
    compile_mode: str = "off",
) -> dict:
    import time

    import torch

    import perceiver_lm.model as model_module
    from common import matmul_peak, model_flops, synthetic_batch, time_steps
    from perceiver_lm.config import get_preset
    from perceiver_lm.model import PerceiverLM
    from perceiver_lm.optim import adamw
    from perceiver_lm.training import masked_lm_loss

    if attention == "padded":
        # q/k zero-padded to the value head size on every device: equal head sizes let CUDA pick flash attention.
        model_module._pad_for_fused_cpu_kernel = lambda q, v, mask, dropout: (
            q.shape[-1] < v.shape[-1] and (mask is None or mask.dtype == torch.bool)
        )
    torch.manual_seed(0)
    config = get_preset(preset)
    window = window or config.max_seq_len
    model = PerceiverLM(config).to(device).train()
    model.gradient_checkpointing_enable(checkpointing)
    optimizer = adamw(model.parameters(), lr=1e-4)
    batch = {k: v.to(device) for k, v in synthetic_batch(batch_size, window).items()}
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    compiled = compile_mode != "off"
    forward = torch.compile(model, mode=None if compile_mode == "on" else compile_mode) if compiled else model

    def step_on(b, run=forward) -> None:
        with autocast:
            logits = run(b["input_ids"], query_positions=b["query_positions"]).logits
            loss = masked_lm_loss(logits, b["labels"])
        loss.backward()

    def step() -> None:
        step_on(batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()  # for a compiled model: the compile
    first = time.perf_counter() - start
    seconds, peak = time_steps(step, device, warmup, steps)
    row = {k: v[:1] for k, v in batch.items()}
    flops = batch_size * model_flops(lambda: step_on(row, model))  # counted on the plain model
    ceiling = matmul_peak(device)["bf16" if precision == "bf16" else "fp32"]
    return {
        "preset": preset,
        "parameters": model.num_parameters(),
        "window": window,
        "batch_size": batch_size,
        "device": device,
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "step_s": seconds,
        "bytes_per_s": window * batch_size / seconds,
        "peak_memory_mib": peak / 2**20,
        "masked_bytes_per_window": float((batch["labels"] != -100).sum().item() / batch_size),
        "torch_threads": torch.get_num_threads(),
        "attention": attention,
        "compiled": compiled,
        "compile_mode": compile_mode,
        "first_step_s": first,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "model_tflop_per_step": flops / 1e12,
        "model_tflop_per_s": flops / 1e12 / seconds,
        "matmul_peak_tflop_per_s": ceiling / 1e3,
        "mfu_vs_measured_matmul": flops / 1e9 / seconds / ceiling,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small", help="comma-separated preset names")
    parser.add_argument("--window", type=int, default=None, help="bytes per window (default: the preset's max_seq_len)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precisions", default="auto,fp32", help="comma-separated: fp32, bf16, auto (this machine's default)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--attention",
        default="default",
        help="comma-separated: default (the model's own choice), padded (q/k padded to the value head size)",
    )
    parser.add_argument(
        "--compile", default="off", help="comma-separated: off (eager), on (torch.compile), max-autotune (its mode)"
    )
    parser.add_argument("--peak-tflops", type=float, help="the chip's dense peak at the precision, for MFU vs spec")
    parser.add_argument("--out", default="runs/bench/pretrain_throughput.json")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: measure in this process
    args = parser.parse_args()

    if args.one:
        print(
            json.dumps(
                measure(
                    args.presets,
                    args.window,
                    args.batch_size,
                    args.steps,
                    args.warmup,
                    args.device,
                    args.precisions,
                    args.gradient_checkpointing,
                    args.attention,
                    args.compile,
                )
            )
        )
        return
    from perceiver_lm.runtime import resolve_precision

    precisions = []
    for name in args.precisions.split(","):
        if name not in ("fp32", "bf16", "auto"):
            parser.error(f"--precisions: {name!r} is not fp32, bf16 or auto")
        resolved = (
            {"no": "fp32"}.get(resolve_precision("auto", cpu=args.device == "cpu").mode, "bf16")
            if name == "auto"
            else name
        )
        precisions.append((name, resolved))
    runs = []
    for mode in args.compile.split(","):
        if mode not in ("off", "on", "max-autotune"):
            parser.error(f"--compile: {mode!r} is not off, on or max-autotune")
    # (asked precision, its dtype, attention, compile mode, the label of this variant)
    variants = [
        (name, precision, attention, mode, attention + {"off": "", "on": "+compile"}.get(mode, "+compile-" + mode))
        for name, precision in precisions
        for attention in args.attention.split(",")
        for mode in args.compile.split(",")
    ]
    for repeat in range(args.repeats):
        for preset in args.presets.split(","):
            for name, precision, attention, mode, label in variants:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    "--presets",
                    preset,
                    "--window",
                    str(args.window or 0),
                    "--batch-size",
                    str(args.batch_size),
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--device",
                    args.device,
                    "--precisions",
                    precision,
                    "--attention",
                    attention,
                    "--compile",
                    mode,
                ]
                if args.gradient_checkpointing:
                    cmd.append("--gradient-checkpointing")
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{preset}: benchmark failed:\n{done.stderr.strip()}")
                runs.append({**json.loads(done.stdout.strip().splitlines()[-1]), "asked": name + "/" + label})
                print(
                    f"  [{repeat + 1}/{args.repeats}] {preset} {name} ({precision}) {label}: "
                    f"{runs[-1]['step_s']:.3f} s/step (first step {runs[-1]['first_step_s']:.1f} s)",
                    flush=True,
                )
    rows = []
    for preset in args.presets.split(","):
        for name, _precision, _attention, _mode, label in variants:
            rs = [r for r in runs if r["preset"] == preset and r["asked"] == name + "/" + label]
            step = statistics.median(r["step_s"] for r in rs)
            rows.append(
                {
                    **rs[0],
                    "step_s": step,
                    "step_s_min": min(r["step_s"] for r in rs),
                    "step_s_max": max(r["step_s"] for r in rs),
                    "bytes_per_s": rs[0]["window"] * rs[0]["batch_size"] / step,
                    "repeats": len(rs),
                    "first_step_s": statistics.median(r["first_step_s"] for r in rs),
                    "peak_memory_mib": statistics.median(r["peak_memory_mib"] for r in rs),
                    "model_tflop_per_s": rs[0]["model_tflop_per_step"] / step,
                    "mfu_vs_measured_matmul": rs[0]["model_tflop_per_step"] / step / rs[0]["matmul_peak_tflop_per_s"],
                    "mfu_vs_spec": rs[0]["model_tflop_per_step"] / step / args.peak_tflops
                    if args.peak_tflops
                    else None,
                }
            )
    for r in rows:
        fp32 = next(
            (
                f
                for f in rows
                if f["preset"] == r["preset"]
                and f["precision"] == "fp32"
                and f["attention"] == r["attention"]
                and not f["compiled"]
            ),
            None,
        )
        r["speedup_over_fp32"] = fp32["step_s"] / r["step_s"] if fp32 else None
    print(
        f"{'preset':8} {'params':>12} {'window':>6} {'batch':>5} {'device':>6} {'variant':>28} {'step s':>8} "
        f"{'min-max':>13} {'bytes/s':>10} {'vs fp32':>7} {'peak MiB':>9} {'TFLOP/s':>8} {'MFU':>6} {'1st s':>6}"
    )
    for r in rows:
        vs = f"{r['speedup_over_fp32']:.2f}x" if r["speedup_over_fp32"] else "-"
        print(
            f"{r['preset']:8} {r['parameters']:>12,} {r['window']:>6} {r['batch_size']:>5} {r['device']:>6} "
            f"{r['asked'] + ':' + r['precision']:>28} "
            f"{r['step_s']:>8.3f} {r['step_s_min']:>6.3f}-{r['step_s_max']:<6.3f} {r['bytes_per_s']:>10,.0f} {vs:>7} "
            f"{r['peak_memory_mib']:>9,.0f} {r['model_tflop_per_s']:>8.2f} "
            f"{r['mfu_vs_spec'] if r['mfu_vs_spec'] is not None else r['mfu_vs_measured_matmul']:>6.1%} "
            f"{r['first_step_s']:>6.1f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "processor": platform.processor(),
                "repeats": args.repeats,
                "results": rows,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
