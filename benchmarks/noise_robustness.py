"""Robustness to noisy text: a fine-tuned GLUE model and a pretrained MLM scored on clean and corrupted inputs.

The noise kinds and rates are the ByT5 paper's (Xue et al., 2022, "Robustness to noise"): drop, add
and mutate 10 % of characters, repeat 20 %, and upper case, random case and antspeak on every
character. Inputs are corrupted deterministically (`--noise-seed`), the same for every model.

    python benchmarks/noise_robustness.py --glue-dir ../shared/data/glue --task sst2 --steps 600 \
        --lm-checkpoint runs/prec_bf16 --text ../shared/data/corpus/tinyshakespeare/input.txt

Without `--glue-checkpoint`, fine-tunes `small` from random initialisation first (the library's
`finetune`, defaults of the shape); `--train-noise` adds a second run trained on corrupted text.
Prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from perceiver_lm.evaluation import score_text
from perceiver_lm.options import EvalOptions
from tasks.finetune.finetune import finetune
from tasks.finetune.options import GlueOptions
from tasks.finetune.predict import evaluate_checkpoint
from tasks.glue.tasks import TASKS

CONDITIONS = {
    "clean": [],
    "drop 10%": ["drop:0.1"],
    "add 10%": ["add:0.1"],
    "mutate 10%": ["mutate:0.1"],
    "repeat 20%": ["repeat:0.2"],
    "uppercase": ["uppercase:1"],
    "random case": ["random_case:1"],
    "antspeak": ["antspeak:1"],
}


def glue_rows(args, checkpoint: Path, label: str) -> list[dict]:
    task = TASKS[args.task]
    rows = []
    for condition, noise in CONDITIONS.items():
        started = time.perf_counter()
        scores = evaluate_checkpoint(checkpoint, args.glue_dir, args.task, noise=noise, noise_seed=args.noise_seed)
        value = scores[args.task][task.dev[0][0]][task.metrics[0]]
        rows.append({"model": label, "condition": condition, "noise": noise, task.metrics[0]: value})
        print(f"{label:<28} {condition:<12} {task.metrics[0]} {value:6.2f}  ({time.perf_counter() - started:.0f} s)")
    return rows


def lm_rows(args) -> list[dict]:
    rows = []
    for condition, noise in CONDITIONS.items():
        options = EvalOptions(
            data=[args.text], noise=noise, seed=args.noise_seed, max_windows=args.windows, mixed_precision="auto"
        )
        report = score_text(args.lm_checkpoint, options)
        m = report.metrics
        rows.append(
            {
                "condition": condition,
                "noise": noise,
                "bits_per_byte": m["bits_per_byte"],
                "accuracy": m["accuracy"],
                "masked_bytes": m["masked_bytes"],
            }
        )
        print(f"MLM {condition:<12} {m['bits_per_byte']:.3f} bits/masked byte, accuracy {m['accuracy']:.3f}")
    return rows


def finetuned(args, name: str, train_noise: list[str]) -> Path:
    options = GlueOptions(
        tasks=args.task,
        preset="small",
        glue_dir=args.glue_dir,
        output_dir=str(Path(args.work) / name),
        max_steps=args.steps,
        eval_every=args.steps,
        train_noise=train_noise,
        seed=args.seed,
        overwrite=True,
    )
    return finetune(options).best_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue-dir", help="GLUE folder (original layout)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--glue-checkpoint", help="a fine-tuned model folder; default: fine-tune one here")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-noise", nargs="*", default=[], help="also fine-tune on text with these noises")
    parser.add_argument("--lm-checkpoint", help="a pretrained MLM checkpoint or run folder")
    parser.add_argument("--text", help="held-out text file for the MLM")
    parser.add_argument("--windows", type=int, default=64, help="MLM windows scored per condition")
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--work", default="runs/noise_robustness")
    parser.add_argument("--out", default="docs/noise_robustness.json")
    args = parser.parse_args()
    torch_threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count()
    result = {"args": vars(args), "machine": platform.processor() or platform.machine(), "threads": torch_threads}
    if args.glue_dir:
        plain = Path(args.glue_checkpoint) if args.glue_checkpoint else finetuned(args, "plain", [])
        result["glue"] = glue_rows(args, plain, "fine-tuned on clean text")
        if args.train_noise:
            noisy = finetuned(args, "augmented", args.train_noise)
            result["glue"] += glue_rows(args, noisy, "trained with " + "+".join(args.train_noise))
    if args.lm_checkpoint and args.text:
        result["mlm"] = lm_rows(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
