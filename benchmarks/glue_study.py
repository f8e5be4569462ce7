"""GLUE dev scores on a fixed budget: single- vs multi-task, pretrained vs random initialisation.

Every task gets the same number of training examples in every arm: single-task runs take
--steps-per-task steps; the multi-task run takes the sum, over training sets capped at
--max-train-examples (so proportional sampling gives every task about the same share). Writes
JSON and prints a markdown table with the Perceiver IO paper's numbers beside ours.

    python benchmarks/glue_study.py --checkpoint runs/enwiki_small --glue-dir ../shared/data/glue \\
        --tasks sst2,cola,mrpc,stsb --steps-per-task 120 --max-train-examples 4000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tasks.finetune.finetune import GlueOptions, finetune
from tasks.glue.tasks import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="pretrained MLM checkpoint or run directory")
    parser.add_argument(
        "--preset", default="small", help="shape of the randomly initialised arm (match the checkpoint)"
    )
    parser.add_argument("--glue-dir", required=True)
    parser.add_argument("--tasks", default="sst2,cola,mrpc,stsb")
    parser.add_argument("--steps-per-task", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--max-train-examples", type=int, default=4000)
    parser.add_argument("--max-eval-examples", type=int, default=None)
    parser.add_argument("--arms", default="single-pretrained,multi-pretrained,single-random,multi-random")
    parser.add_argument("--out", default="runs/glue_study")
    args = parser.parse_args()
    names = args.tasks.split(",")
    out = Path(args.out)
    results: dict[str, dict] = {}
    common = dict(
        glue_dir=args.glue_dir,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        max_train_examples=args.max_train_examples,
        max_eval_examples=args.max_eval_examples,
    )
    for arm in args.arms.split(","):
        mode, init = arm.split("-")
        source = dict(checkpoint=args.checkpoint) if init == "pretrained" else dict(preset=args.preset)
        groups = [[n] for n in names] if mode == "single" else [names]
        for group in groups:
            steps = args.steps_per_task * len(group)
            started = time.monotonic()
            result = finetune(
                GlueOptions(
                    tasks=",".join(group),
                    output_dir=str(out / arm / "+".join(group)),
                    max_steps=steps,
                    eval_every=steps,
                    **source,
                    **common,
                )
            )
            for name in group:
                results.setdefault(arm, {})[name] = {**result.best[name], "minutes": (time.monotonic() - started) / 60}
            print(f"{arm} {'+'.join(group)}: " + json.dumps({n: result.best[n]["scores"] for n in group}), flush=True)
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    arms = list(results)
    print("\n| task (metric) | " + " | ".join(arms) + " | paper | paper multi-task |")
    print("|---" * (len(arms) + 3) + "|")
    for name in names:
        task = TASKS[name]
        cells = []
        for arm in arms:
            scores = results[arm][name]["scores"]
            cells.append(" / ".join(f"{v:.1f}" for split in scores.values() for v in split.values()))
        print(
            f"| {name} ({'/'.join(task.metrics)}) | "
            + " | ".join(cells)
            + f" | {task.paper or '-'} | {task.paper_multitask or '-'} |"
        )


if __name__ == "__main__":
    main()
