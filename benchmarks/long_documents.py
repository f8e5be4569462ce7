"""Classifier cost on documents longer than the window: forward + backward time per example and peak memory.

`PerceiverClassifier` reads an input longer than ``max_seq_len`` as consecutive windows (each encoded as its
own example, the task query reading the latents of all of them), so its cost should grow linearly with the
bytes read. This measures it for one task on a preset (default `small`, 2,048-byte windows) at several
document lengths. The batch size at each length is ``--bytes-per-batch`` / length (at least 1), so every
batch holds about the same number of bytes; the table reports time per example and per KiB, and the per-byte
cost relative to the shortest length (1.0 = linear).

Each measurement runs in a fresh subprocess, so that its peak memory is its own: max RSS of the process on
CPU (``resource.getrusage``; it includes Python, torch and the model, reported separately as the baseline
taken before the first step, so the step's own memory is peak - baseline), ``torch.cuda.max_memory_allocated``
on GPU. Measurements are interleaved (every repeat runs every length once) and the table shows medians.
Prints a table, writes JSON.

    python benchmarks/long_documents.py --out runs/bench/long_documents.json                  # 5 lengths x 3
    python benchmarks/long_documents.py --lengths 1024,2048 --repeats 1 --steps 1 --warmup 0  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

LENGTHS = (1024, 2048, 4096, 8192, 16384)


def synthetic_documents(batch_size: int, length: int, seed: int = 0) -> tuple[Any, Any]:
    """[B, L] ids of random lowercase words (no padding) and [B] binary labels: cost depends on shapes only."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    words = rng.integers(97, 123, (batch_size, length))
    words[rng.random((batch_size, length)) < 0.18] = 32
    return torch.from_numpy(words + 6), torch.from_numpy(rng.integers(0, 2, batch_size))


def measure(
    preset: str,
    length: int,
    batch_size: int,
    steps: int,
    warmup: int,
    device: str = "cpu",
    precision: str = "fp32",
    overrides: dict[str, Any] | None = None,
    windows_per_pass: int | None = None,
    window: int | None = None,
) -> dict[str, Any]:
    """Seconds per forward + backward step of a one-task classifier on [batch_size, length] inputs, and memory.

    ``overrides`` replaces config fields of the preset (tests use a shrunken one); ``window``: bytes per window
    (None: the model's max_seq_len), as `glue train --window`.
    """
    import torch
    import torch.nn.functional as F

    from common import peak_memory_bytes, time_steps
    from perceiver_lm.config import MultiTaskConfig, TaskSpec, get_preset
    from perceiver_lm.model import PerceiverClassifier

    torch.manual_seed(0)
    config = get_preset(preset).replace(**(overrides or {}))
    model = PerceiverClassifier(config, MultiTaskConfig((TaskSpec("doc", 2),), window=window)).to(device).train()
    ids, labels = (t.to(device) for t in synthetic_documents(batch_size, length))
    mask = torch.ones_like(ids)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        with autocast:
            logits = model(ids, mask, task=0, windows_per_pass=windows_per_pass).logits
        F.cross_entropy(logits.float(), labels).backward()
        model.zero_grad(set_to_none=True)

    baseline = peak_memory_bytes(device)
    seconds, peak = time_steps(step, device, warmup, steps)
    window = window or config.max_seq_len
    return {
        "preset": preset,
        "overrides": overrides or {},
        "parameters": model.num_parameters(),
        "window": window,
        "length": length,
        "windows": -(-length // window),
        "batch_size": batch_size,
        "device": device,
        "precision": precision,
        "windows_per_pass": windows_per_pass,
        "torch_threads": torch.get_num_threads(),
        "step_s": seconds,
        "example_s": seconds / batch_size,
        "kib_s": seconds / batch_size / (length / 1024),
        "peak_memory_mib": peak / 2**20,
        "baseline_memory_mib": baseline / 2**20,
        "memory": "max RSS of the process" if device == "cpu" else "torch.cuda.max_memory_allocated",
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repeats per length, with the per-byte cost relative to the shortest length."""
    rows = []
    for length in sorted({r["length"] for r in runs}):
        mine = [r for r in runs if r["length"] == length]
        row = {k: v for k, v in mine[0].items() if k not in ("step_s", "example_s", "kib_s", "peak_memory_mib")}
        for key in ("step_s", "example_s", "kib_s", "peak_memory_mib", "baseline_memory_mib"):
            values = [r[key] for r in mine]
            row[key] = statistics.median(values)
            row[key + "_range"] = [min(values), max(values)]
        row["repeats"] = len(mine)
        rows.append(row)
    for row in rows:
        row["per_byte_vs_shortest"] = row["kib_s"] / rows[0]["kib_s"]
        row["step_memory_mib"] = row["peak_memory_mib"] - (row["baseline_memory_mib"] if row["device"] == "cpu" else 0)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="comma-separated document bytes")
    parser.add_argument("--bytes-per-batch", type=int, default=16384, help="batch size = this / length (at least 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--windows-per-pass", type=int, default=None, help="encode at most this many windows at once")
    parser.add_argument("--window", type=int, default=None, help="bytes per window (default: the model's window)")
    parser.add_argument("--model", default="{}", help="model config fields to change, as JSON (e.g. d_model)")
    parser.add_argument("--out", default="runs/bench/long_documents.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure this length in this process
    args = parser.parse_args()

    batch_of = {}
    for text in args.lengths.split(","):
        length = int(text)
        batch_of[length] = max(1, args.bytes_per_batch // length)
    if args.one is not None:
        print(
            json.dumps(
                measure(
                    args.preset,
                    args.one,
                    batch_of.get(args.one, max(1, args.bytes_per_batch // args.one)),
                    args.steps,
                    args.warmup,
                    args.device,
                    args.precision,
                    overrides=json.loads(args.model),
                    windows_per_pass=args.windows_per_pass,
                    window=args.window,
                )
            )
        )
        return
    runs = []
    for repeat in range(args.repeats):
        for length in batch_of:
            cmd = [sys.executable, __file__, "--one", str(length), *_passed_on(args)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{length} bytes: benchmark failed:\n{done.stderr.strip()}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(
                f"  [{repeat + 1}/{args.repeats}] {length:>6} bytes: {runs[-1]['example_s']:.3f} s/example", flush=True
            )
    rows = summarise(runs)
    setting = f"{args.device} {args.precision}, median of {args.repeats}"
    changed = "".join(f", {k}={v}" for k, v in json.loads(args.model).items())
    window = f", windows of {args.window}" if args.window else ""
    print(f"\n{args.preset}{changed} classifier{window}, 1 task, forward + backward, {setting}")
    header = ("bytes", "windows", "batch", "s/example", "s/KiB", "vs shortest", "peak MiB", "step MiB")
    print("{:>7} {:>7} {:>5} {:>10} {:>8} {:>11} {:>9} {:>9}".format(*header))
    for r in rows:
        print(
            f"{r['length']:>7} {r['windows']:>7} {r['batch_size']:>5} {r['example_s']:>10.3f} {r['kib_s']:>8.4f}"
            f" {r['per_byte_vs_shortest']:>11.2f} {r['peak_memory_mib']:>9.0f} {r['step_memory_mib']:>9.0f}"
        )
    if rows and rows[0]["device"] == "cpu":
        print("peak MiB: max RSS of a fresh process; step MiB: peak minus the RSS before the first step")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "args": vars(args)}
    out.write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=2) + "\n")
    print(f"wrote {out}")


def _passed_on(args: argparse.Namespace) -> list[str]:
    """The options a measuring subprocess needs."""
    passed = ["--preset", args.preset, "--lengths", args.lengths, "--bytes-per-batch", str(args.bytes_per_batch)]
    passed += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
    passed += ["--precision", args.precision, "--model", args.model]
    if args.window is not None:
        passed += ["--window", str(args.window)]
    if args.windows_per_pass is not None:
        passed += ["--windows-per-pass", str(args.windows_per_pass)]
    return passed


if __name__ == "__main__":
    main()
