"""Tagging from random init (or a checkpoint) at fixed CPU budgets, through the real CLI.

UD English-EWT part of speech (17 UPOS tags, token accuracy) and CoNLL-2003 named entities (IOB2, exact-span
F1), from ``$PERCEIVER_LM_DATA/tagging`` (``--data``). Each run is ``perceiver-lm glue train --task-type
token-classification --max-minutes M`` on the training file, scored on the whole dev file at every evaluation;
its best dev score is recorded beside a most-frequent-tag baseline (each word's most frequent training tag, the
most frequent tag overall for unseen words) and published anchors. Runs already in --out are kept, so a grid
grows over several calls; --name labels an arm (other fine-tuning options through --finetune-args).

    python benchmarks/tagging.py --tasks upos,ner --minutes 15 --seeds 0,1 --threads 1 \\
        --out docs/tagging.json --plot docs/tagging.png

--steps-per-minute sets the schedule: the cosine runs over minutes x that many steps, so that it ends when the
time does (measured on this machine's 2 cores for `small`; give yours).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.finetune.metrics import compute_tagging  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from common import spread  # noqa: E402

TASKS = {
    # name: (folder under tagging/, primary metric)
    "upos": ("ud_en_ewt", "token_accuracy"),
    "ner": ("conll2003", "span_f1"),
}
# Published anchors, for the table (docs/tagging.md says where each comes from).
ANCHORS = {
    "upos": "UD EWT UPOS: pretrained taggers ~95-97 (test)",
    "ner": "CoNLL-2003 test F1: CharNER 84.5, LSTM-CRF without pretrained embeddings ~83.6, BERT-base 92.4",
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def most_frequent_tag(train: list[dict[str, Any]], dev: list[dict[str, Any]], metric: str) -> float:
    """The dev score of tagging each word with its most frequent training tag (unseen words: the most frequent)."""
    per_word: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for row in train:
        for word, tag in zip(row["tokens"], row["tags"], strict=True):
            per_word[word][tag] += 1
            overall[tag] += 1
    default = overall.most_common(1)[0][0]
    predicted = [[per_word[w].most_common(1)[0][0] if w in per_word else default for w in r["tokens"]] for r in dev]
    return compute_tagging((metric,), predicted, [r["tags"] for r in dev])[metric]


def run(args: argparse.Namespace, task: str, minutes: float, seed: int, folder: Path) -> dict[str, Any]:
    data = Path(args.data) / "tagging" / TASKS[task][0]
    steps = max(10, round(minutes * args.steps_per_minute))
    command = [
        "glue", "train", "--train-file", str(data / "train.jsonl"), "--validation-file", str(data / "dev.jsonl"),
        "--task-type", "token-classification", "--task-name", task, "--preset", args.preset,
        "--max-minutes", str(minutes), "--max-steps", str(steps), "--eval-every", str(max(1, steps // args.evals)),
        "--seed", str(seed), "--output-dir", str(folder / "run"), "--overwrite",
        *(["--checkpoint", args.checkpoint] if args.checkpoint else []), *shlex.split(args.finetune_args),
    ]  # fmt: skip
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with (folder / "train.log").open("w") as log:
        done = subprocess.run(
            [sys.executable, "-m", "cli", *command], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
    if done.returncode:
        tail = "".join((folder / "train.log").read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise SystemExit(f"{task} {minutes} min seed {seed} failed (rc {done.returncode}):\n{tail}")
    metrics = json.loads((folder / "run" / "dev_metrics.json").read_text())
    metric = TASKS[task][1]
    history = [
        {"step": h["step"], "minutes": h["elapsed_s"] / 60, "score": h["scores"][task]["dev"][metric]}
        for h in metrics["history"]
    ]
    best = metrics["best"][task]
    return {
        "task": task,
        "minutes": minutes,
        "seed": seed,
        "metric": metric,
        "best": best["scores"]["dev"][metric],
        "best_step": best["step"],
        "scores": best["scores"]["dev"],
        "history": history,
        "wall_s": time.time() - started,
        "command": "perceiver-lm " + shlex.join(command),
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| task | arm | minutes | seeds | dev (best) | most frequent tag | anchors |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in results["runs"].values():
        groups[(r["task"], r["arm"], r["minutes"])].append(r["best"])
    for (task, arm, minutes), values in sorted(groups.items()):
        baseline = results["baselines"].get(task)
        lines.append(
            f"| {task} ({TASKS[task][1]}) | {arm} | {minutes:g} | {len(values)} | {spread(values)} | "
            f"{baseline:.1f} | {ANCHORS[task]} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in results["runs"].values()})
    arms = sorted({(r["arm"], r["minutes"]) for r in results["runs"].values()})
    colours = {arm: f"C{i}" for i, arm in enumerate(arms)}  # one colour per arm and budget, a marker per seed
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for _, r in sorted(results["runs"].items()):
            if r["task"] != task:
                continue
            xs, ys = [h["minutes"] for h in r["history"]], [h["score"] for h in r["history"]]
            style = {"color": colours[(r["arm"], r["minutes"])], "marker": "os^v"[r["seed"] % 4]}
            ax.plot(xs, ys, label=f"{r['arm']}, {r['minutes']:g} min, seed {r['seed']}", **style)
        ax.axhline(results["baselines"][task], color="grey", linestyle="--", label="most frequent tag")
        ax.set_title(f"{task}: dev {TASKS[task][1]} (%)")
        ax.set_xlabel("minutes (each run: one thread of the 2-core CPU)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PERCEIVER_LM_DATA"), help="folder holding tagging/")
    parser.add_argument("--tasks", default="upos,ner")
    parser.add_argument("--minutes", default="15", help="comma-separated budgets")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--checkpoint", default=None, help="a pretrained MLM to start from (default: random init)")
    parser.add_argument("--finetune-args", default="", help="more `glue train` options, quoted")
    parser.add_argument("--name", default=None, help="the arm's name (default: random or the checkpoint's)")
    parser.add_argument("--steps-per-minute", type=float, default=20.0)
    parser.add_argument("--evals", type=int, default=4, help="dev evaluations per run")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: torch's)")
    parser.add_argument("--work", default="/tmp/perceiver_lm_tagging", help="run folders")
    parser.add_argument("--out", default=None, help="JSON of results (kept runs are read from it)")
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    if args.data is None or not (Path(args.data) / "tagging").is_dir():
        raise SystemExit("--data (or PERCEIVER_LM_DATA): a folder with tagging/ud_en_ewt and tagging/conll2003")
    arm = args.name or ("random" if args.checkpoint is None else Path(args.checkpoint).name)
    out = Path(args.out) if args.out else None
    results = json.loads(out.read_text()) if out and out.exists() else {"runs": {}, "baselines": {}}
    for task in args.tasks.split(","):
        folder = Path(args.data) / "tagging" / TASKS[task][0]
        train, dev = read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "dev.jsonl")
        results["baselines"][task] = most_frequent_tag(train, dev, TASKS[task][1])
        for minutes in (float(m) for m in args.minutes.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                key = f"{task}|{arm}|{minutes:g}|{seed}"
                if key in results["runs"]:
                    continue
                record = run(args, task, minutes, seed, Path(args.work) / key.replace("|", "_"))
                results["runs"][key] = {**record, "arm": arm, "finetune_args": args.finetune_args}
                print(f"{key}: {record['metric']} {record['best']:.2f} (step {record['best_step']})", flush=True)
                if out:
                    out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    if args.plot:
        plot(results, Path(args.plot))
    return results


if __name__ == "__main__":
    main()
