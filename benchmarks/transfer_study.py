"""What pretraining buys: fine-tuned dev scores against the number of labels, random init vs pretrained bodies.

Every arm fine-tunes the same tasks on the same seeded label subsets with the same budget, through
the library's `finetune` (the defaults it picks for a random or a pretrained start, unless
--recipe-options overrides them). An arm is ``random`` (the --preset shape from random weights)
or ``NAME=CHECKPOINT``. Runs already in --out are kept and skipped, so a grid can grow over
several calls; a run not yet in --out is (re)trained into its own folder under --runs, replacing
what an interrupted call left there. Writes JSON, prints a markdown table (mean +- sd over seeds of the best dev score
of each run, and of the score at the last evaluation) and, with --plot, a figure.

    python benchmarks/transfer_study.py --glue-dir ../shared/data/glue --tasks sst2 \\
        --labels 100,1000,all --seeds 0,1 --arms random,imdb=runs/imdb_w256 --out docs/transfer_study.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from tasks.finetune.finetune import GlueOptions, finetune
from tasks.finetune.predict import primary_score
from tasks.glue.tasks import TASKS


def steps_for(labels: int | None, steps: int, full_steps: int) -> int:
    """The fine-tuning budget of one run: --steps on a subset, --full-steps on the whole training set."""
    return full_steps if labels is None else steps


def run_key(arm: str, task: str, labels: int | None, seed: int) -> str:
    return f"{arm}|{task}|{labels or 'all'}|{seed}"


def one_run(args: argparse.Namespace, arm: str, source: dict[str, Any], task: str, labels: int | None, seed: int):
    steps = steps_for(labels, args.steps, args.full_steps)
    out = Path(args.runs) / arm / f"{task}_{labels or 'all'}_s{seed}"
    started = time.monotonic()
    options = GlueOptions(
        tasks=task,
        glue_dir=args.glue_dir,
        output_dir=str(out),
        max_steps=steps,
        eval_every=max(1, steps // args.evals),
        max_train_examples=labels,
        max_eval_examples=args.max_eval_examples,
        seed=seed,
        overwrite=True,
        keep_checkpoints=1,
        **source,
        **json.loads(args.recipe_options),
    )
    result = finetune(options)
    history = json.loads((out / "dev_metrics.json").read_text())["history"]
    spec = TASKS[task]
    curve = [{"step": h["step"], "score": primary_score(spec, h["scores"][task])} for h in history]
    return {
        "arm": arm,
        "task": task,
        "labels": labels or "all",
        "seed": seed,
        "steps": steps,
        "best": primary_score(spec, result.best[task]["scores"]),
        "last": curve[-1]["score"],
        "curve": curve,
        "minutes": (time.monotonic() - started) / 60,
    }


def summary_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per (task, labels), one column per arm, best and last dev score mean +- sd."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    rows = list(dict.fromkeys((r["task"], r["labels"]) for r in runs))
    lines = ["| task | labels | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for task, labels in rows:
        cells = []
        for arm in arms:
            picked = [r for r in runs if (r["arm"], r["task"], r["labels"]) == (arm, task, labels)]
            if not picked:
                cells.append("")
                continue
            best, last = [r["best"] for r in picked], [r["last"] for r in picked]
            spread = f" +- {statistics.stdev(best):.1f}" if len(best) > 1 else ""
            cells.append(f"{statistics.mean(best):.1f}{spread} (last {statistics.mean(last):.1f}; n={len(best)})")
        lines.append(f"| {task} ({TASKS[task].metrics[0]}) | {labels} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in runs))
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        present = {r["labels"] for r in runs if r["task"] == task}
        counts = sorted(present, key=lambda n: float("inf") if n == "all" else n)
        for arm in dict.fromkeys(r["arm"] for r in runs):
            means, spreads, xs = [], [], []
            for i, n in enumerate(counts):
                best = [r["best"] for r in runs if (r["arm"], r["task"], r["labels"]) == (arm, task, n)]
                if best:
                    xs.append(i)
                    means.append(statistics.mean(best))
                    spreads.append(statistics.stdev(best) if len(best) > 1 else 0.0)
            axis.errorbar(xs, means, yerr=spreads, marker="o", capsize=3, label=arm)
        axis.set_xticks(range(len(counts)), [str(n) for n in counts])
        axis.set_xlabel("labelled training examples")
        axis.set_ylabel(f"{task} dev {TASKS[task].metrics[0]} (best of run)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glue-dir", required=True)
    parser.add_argument("--tasks", default="sst2")
    parser.add_argument("--labels", default="100,1000,all", help="training-set sizes (seeded subsets), or all")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--arms", default="random", help="random and/or NAME=CHECKPOINT, comma-separated")
    parser.add_argument("--preset", default="small", help="shape of the random arm")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps on a label subset")
    parser.add_argument("--full-steps", type=int, default=600, help="fine-tuning steps on the whole training set")
    parser.add_argument("--evals", type=int, default=3, help="evaluations per run (evenly spaced)")
    parser.add_argument("--max-eval-examples", type=int, default=None)
    parser.add_argument(
        "--recipe-options", default="{}", help="JSON of extra GlueOptions fields for every run (e.g. a recipe)"
    )
    parser.add_argument("--runs", default="runs/transfer_study", help="folder of the fine-tuning runs")
    parser.add_argument("--out", default="runs/transfer_study.json")
    parser.add_argument("--plot", default=None, help="write a figure of score against labels here")
    args = parser.parse_args()
    out = Path(args.out)
    done: dict[str, Any] = json.loads(out.read_text())["runs"] if out.is_file() else {}
    labels = [None if n == "all" else int(n) for n in args.labels.split(",")]
    arms = {}
    for spec in args.arms.split(","):
        name, _, path = spec.partition("=")
        arms[name] = dict(preset=args.preset) if name == "random" and not path else dict(checkpoint=path)
    for task in args.tasks.split(","):
        for n in labels:
            for seed in (int(s) for s in args.seeds.split(",")):
                for arm, source in arms.items():
                    key = run_key(arm, task, n, seed)
                    if key in done:
                        continue
                    done[key] = one_run(args, arm, source, task, n, seed)
                    print(json.dumps({k: v for k, v in done[key].items() if k != "curve"}), flush=True)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps({"runs": done}, indent=1) + "\n")
    print(summary_table(list(done.values())))
    if args.plot:
        plot(list(done.values()), Path(args.plot))
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
