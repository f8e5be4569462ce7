"""GLUE fine-tuning throughput (training examples/s) with and without each short-input speed-up.

Trains `small` on a GLUE task's real training set with the library's sampler, collate and loss, as
`perceiver-lm glue train` does, under several settings: precision (fp32 / bf16 autocast), trimmed
latents (only the latents whose stretch the batch's longest input reaches) and length buckets (a
batch holds examples of similar length). Settings are interleaved and repeated; the table reports
the median with its min-max spread and the speed-up over the first setting. Prints a table, writes JSON.

The compiled settings (``torch.compile``, inductor) meet a new input length in many batches: with
``dynamic`` shapes (torch's default: a second length recompiles the model for any length), or padded to
a few lengths (`perceiver_lm.tokenizer.bucket_length`, as ``--compile`` pads) and compiled per length
(``static``) or dynamic. A step that takes over 5x the median is counted as compiling: its excess is
``compile_s``, and examples/s are counted over the other steps.

    python benchmarks/finetune_throughput.py --glue-dir ../shared/data/glue --task sst2 --steps 20 --repeats 3
    python benchmarks/finetune_throughput.py --only bf16 --steps 60 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from perceiver_lm.config import MultiTaskConfig, TaskSpec, get_preset
from perceiver_lm.model import PerceiverClassifier
from perceiver_lm.optim import adamw
from tasks.finetune.data import ProportionalBatches, TaskExamples, collate, load_split
from tasks.finetune.finetune import task_loss
from tasks.glue.tasks import TASKS

# name -> (model-config changes on top of the preset, precision, length buckets, compile: None, "dynamic" or "static"
# and whether batches pad to a few lengths)
SETTINGS = {
    "before: plain embeddings, all latents, fp32, random batches": (
        dict(byte_encoder="none", zero_init_positions=False, trim_latents=False),
        "fp32",
        False,
        (None, False),
    ),
    "small, all latents, fp32, random batches": (dict(trim_latents=False), "fp32", False, (None, False)),
    "small, all latents, bf16, random batches": (dict(trim_latents=False), "bf16", False, (None, False)),
    "small, trimmed latents, bf16, random batches": (dict(), "bf16", False, (None, False)),
    "small (defaults): trimmed latents, bf16, length buckets": (dict(), "bf16", True, (None, False)),
    "defaults, padded to few lengths": (dict(), "bf16", True, (None, True)),
    "defaults, compiled, dynamic shapes": (dict(), "bf16", True, ("dynamic", False)),
    "defaults, compiled, padded to few lengths, dynamic": (dict(), "bf16", True, ("dynamic", True)),
    "defaults, compiled, padded to few lengths, static": (dict(), "bf16", True, ("static", True)),
}


def measure(
    name: str,
    preset: str,
    data: TaskExamples,
    task_name: str,
    batch_size: int,
    steps: int,
    warmup: int,
    device: str = "cpu",
) -> dict:
    changes, precision, buckets, (compiled, padded) = SETTINGS[name]
    torch.manual_seed(0)
    task = TASKS[task_name]
    config = get_preset(preset).replace(**changes)
    model = PerceiverClassifier(config, MultiTaskConfig((TaskSpec(task.name, task.num_outputs),)))
    model = model.to(device).train()
    torch._dynamo.reset()  # compiled settings before this one leave nothing behind
    torch._dynamo.config.recompile_limit = 64  # as --compile sets it (static: one compile per length)
    running = torch.compile(model, dynamic=None if compiled == "dynamic" else False) if compiled else model
    optimizer = adamw(model.parameters(), lr=1e-4)
    batches = iter(ProportionalBatches(data, batch_size, seed=0, by_length=buckets))
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
    gpu = device.startswith("cuda")

    def step() -> int:
        batch = collate([data[i] for i in next(batches)], bucketed=padded)
        if gpu:  # pinned, so that the copy overlaps the previous step's work
            batch = {
                k: v.pin_memory().to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
            }
        with autocast:
            loss = task_loss(task, running(batch["input_ids"], batch["attention_mask"], task=0).logits, batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(batch["input_ids"].shape[1])

    times, widths = [], []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        widths.append(step())
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    timed = times[warmup:]
    median = statistics.median(timed)
    compiling = [t for t in times if t > 5 * median]
    running_times = [t for t in timed if t <= 5 * median]
    return {
        "setting": name,
        "examples_per_s": len(running_times) * batch_size / sum(running_times),
        "step_s": sum(running_times) / len(running_times),
        "compile_s": sum(compiling) - len(compiling) * median,
        "compiling_steps": len(compiling),
        "mean_padded_length": sum(widths[warmup:]) / steps,
        "distinct_lengths": len(set(widths)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--glue-dir", default=os.path.join(os.environ.get("PERCEIVER_LM_DATA", "../shared/data"), "glue")
    )
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", default="", help="run only the settings whose name holds this text")
    parser.add_argument("--out", default="runs/bench/finetune_throughput.json")
    args = parser.parse_args()
    split = load_split(TASKS[args.task], "train", args.glue_dir, get_preset(args.preset).max_seq_len)
    data = TaskExamples([split], [0])
    print(
        f"{args.task} train: {len(split):,} examples, mean {data.lengths.mean():.0f} ids; batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup}, {args.repeats} interleaved repeats, "
        f"{torch.get_num_threads()} threads"
    )
    settings = [name for name in SETTINGS if args.only in name]
    runs = []
    for repeat in range(args.repeats):
        for name in settings:
            runs.append(
                measure(name, args.preset, data, args.task, args.batch_size, args.steps, args.warmup, args.device)
            )
            print(
                f"  [{repeat + 1}/{args.repeats}] {runs[-1]['examples_per_s']:7.1f} examples/s, "
                f"compiling {runs[-1]['compile_s']:.0f} s in {runs[-1]['compiling_steps']} steps  {name}",
                flush=True,
            )
    rows = []
    for name in settings:
        rs = [r for r in runs if r["setting"] == name]
        speeds = [r["examples_per_s"] for r in rs]
        rows.append(
            {
                "setting": name,
                "examples_per_s": statistics.median(speeds),
                "min": min(speeds),
                "max": max(speeds),
                "compile_s": statistics.median(r["compile_s"] for r in rs),
                "compiling_steps": statistics.median(r["compiling_steps"] for r in rs),
                "mean_padded_length": rs[0]["mean_padded_length"],
                "distinct_lengths": rs[0]["distinct_lengths"],
            }
        )
    base = rows[0]["examples_per_s"]
    print(
        f"\n{'setting':<58} | {'examples/s':>10} {'min-max':>13} | {'speed-up':>8} | {'padded ids':>10} | "
        f"{'lengths':>7} | {'compile s':>9} {'(steps)':>7}"
    )
    for r in rows:
        print(
            f"{r['setting']:<58} | {r['examples_per_s']:>10.1f} {r['min']:>6.1f}-{r['max']:<6.1f} | "
            f"{r['examples_per_s'] / base:>7.2f}x | "
            f"{r['mean_padded_length']:>10.0f} | {r['distinct_lengths']:>7} | {r['compile_s']:>9.0f} "
            f"({r['compiling_steps']:>5.0f})"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "threads": torch.get_num_threads(),
                "task": args.task,
                "preset": args.preset,
                "batch_size": args.batch_size,
                "steps": args.steps,
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
