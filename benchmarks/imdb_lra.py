"""IMDb reviews as the Long Range Arena's byte-level text task: our classifier against TF-IDF, by bytes read and labels.

The LRA protocol: reviews as bytes, truncated at 4,000, no pretraining, accuracy on held-out reviews.
Every run of ours goes through the library as a user's own task (`finetune` with --train-file /
--validation-file on the JSON Lines files), so what is measured is what the CLI does:

    perceiver-lm glue train --train-file imdb/train.jsonl --validation-file imdb/val.jsonl --max-length 4000

Arms: the bytes read per review (--lengths; beyond the model's window, the classifier reads
consecutive windows), the labelled reviews used (--labels, a seeded balanced subset; "all"), the
start (random, or NAME=CHECKPOINT for a pretrained body), seeds. TF-IDF + logistic regression on the
same bytes (words 1-2, characters 1-5) and on the same label subsets is the reference; the LRA table's
published numbers are printed beside. Runs already in --out are kept and skipped, so the grid grows
over calls; a run not yet in --out is (re)trained into its own folder under --runs, replacing what an
interrupted call left there. Writes JSON and prints a markdown table.

    python benchmarks/imdb_lra.py --data ../shared/data/imdb --lengths 1024,2048,4000 --seeds 0,1 \\
        --steps 1200 --out docs/imdb_lra.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

LRA = {"Transformer": 64.3, "Performer": 65.4, "Linear Transformer": 65.9, "S4": 86.8, "Mega": 90.4}


def read_reviews(path: Path) -> list[dict[str, Any]]:
    # split on "\n" only: reviews hold U+2028 and U+0085, which str.splitlines() would split on too
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def truncate(text: str, length: int) -> str:
    """The first ``length`` bytes of a review (a cut UTF-8 sequence dropped), as the LRA reads it."""
    return text.encode("utf-8")[:length].decode("utf-8", "ignore")


def subset(rows: list[dict[str, Any]], labels: int | None, seed: int) -> list[dict[str, Any]]:
    """A seeded subset of ``labels`` reviews, half of each class (the files hold all negatives first)."""
    if labels is None or labels >= len(rows):
        return rows
    rng = np.random.default_rng(seed)
    picks = []
    for value in (0, 1):
        members = [i for i, r in enumerate(rows) if r["label"] == value]
        picks += rng.choice(members, labels // 2, replace=False).tolist()
    return [rows[i] for i in sorted(picks)]


def tfidf(train: list[dict], val: list[dict], length: int) -> dict[str, float]:
    """Validation accuracy (%) of TF-IDF + logistic regression on the first ``length`` bytes."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    x_train = [truncate(r["text"], length) for r in train]
    x_val = [truncate(r["text"], length) for r in val]
    y_train, y_val = np.array([r["label"] for r in train]), np.array([r["label"] for r in val])
    out = {}
    for name, vectorizer in (
        ("tfidf_words_1_2", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)),
        ("tfidf_chars_1_5", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 5), sublinear_tf=True, min_df=2)),
    ):
        features = vectorizer.fit_transform(x_train)
        model = LogisticRegression(max_iter=2000, C=4.0).fit(features, y_train)
        out[name] = 100.0 * float((model.predict(vectorizer.transform(x_val)) == y_val).mean())
    return out


def byte_cnn(train: list[dict], val: list[dict], length: int, steps: int, seed: int, evals: int) -> dict[str, Any]:
    """The byte CNN of `glue_baselines.py` (AdamW 1e-3, batch 32) on the first ``length`` bytes: accuracy (%)
    at ``evals`` evenly spaced steps, and the training time."""
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).parent))
    from glue_baselines import cnn_scores

    from tasks.finetune.data import encode_example

    class Reviews(SimpleNamespace):  # what cnn_scores reads of a GlueSplit
        def __len__(self) -> int:
            return len(self.ids)

    def split(rows: list[dict]) -> Reviews:
        return Reviews(ids=[encode_example(r["text"], None, length) for r in rows], labels=[r["label"] for r in rows])

    task = SimpleNamespace(num_outputs=2, is_regression=False, metrics=("accuracy",))
    at = sorted({max(1, steps * (i + 1) // evals) for i in range(evals)})
    started = time.monotonic()
    scores = cnn_scores(task, split(train), split(val), at, seed)
    curve = [{"step": step, "accuracy": scores[step]["accuracy"]} for step in at]
    return {
        "arm": "byte_cnn",
        "length": length,
        "seed": seed,
        "steps": steps,
        "best": max(c["accuracy"] for c in curve),
        "last": curve[-1]["accuracy"],
        "curve": curve,
        "train_minutes": (time.monotonic() - started) / 60,
    }


def ours(args: argparse.Namespace, arm: str, source: dict[str, Any], length: int, labels: int | None, seed: int):
    """One fine-tuning run of ours through `finetune`; its best and last validation accuracy and its speed."""
    from tasks.finetune.finetune import GlueOptions, finetune

    folder = Path(args.runs) / f"{arm}_{length}_{labels or 'all'}_s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    train = subset(read_reviews(Path(args.data) / "train.jsonl"), labels, seed)
    train_file = folder / "train.jsonl"
    train_file.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in train))
    options = GlueOptions(
        train_file=str(train_file),
        validation_file=str(args.val_file),
        task_name="imdb",
        max_length=length,
        output_dir=str(folder / "run"),
        max_steps=args.steps,
        max_minutes=args.max_minutes,
        eval_every=max(1, args.steps // args.evals),
        batch_size=args.batch_size,
        seed=seed,
        overwrite=True,
        keep_checkpoints=1,
        **source,
        **json.loads(args.options),
    )
    started = time.monotonic()
    result = finetune(options)
    wall = time.monotonic() - started
    history = json.loads((folder / "run" / "dev_metrics.json").read_text())["history"]
    curve = [{"step": h["step"], "elapsed_s": h["elapsed_s"], "accuracy": h["scores"]["imdb"]["dev"]["accuracy"]}
             for h in history]  # fmt: skip
    return {
        "arm": arm,
        "length": length,
        "labels": labels or "all",
        "seed": seed,
        "options": json.loads(args.options),
        "steps": result.steps,
        "best": result.best["imdb"]["scores"]["dev"]["accuracy"],
        "last": curve[-1]["accuracy"],
        "curve": curve,
        "train_minutes": history[-1]["elapsed_s"] / 60,
        "wall_minutes": wall / 60,
        "examples_per_s": result.steps * args.batch_size / max(history[-1]["elapsed_s"], 1e-9),
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| arm | bytes | labels | seeds | steps | best acc. | last acc. | train min | examples/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for run in results["runs"].values():
        groups.setdefault((run["arm"], run["length"], str(run["labels"])), []).append(run)

    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.1f}" + (f" +- {statistics.stdev(values):.1f}" if len(values) > 1 else "")

    for (arm, length, labels), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        lines.append(
            f"| {arm} | {length} | {labels} | {len(runs)} | {runs[0]['steps']} | {spread([r['best'] for r in runs])} | "
            f"{spread([r['last'] for r in runs])} | {statistics.mean(r['train_minutes'] for r in runs):.1f} | "
            f"{statistics.mean(r['examples_per_s'] for r in runs):.1f} |"
        )
    for run in results.get("byte_cnn", {}).values():
        lines.append(
            f"| byte CNN | {run['length']} | all | 1 | {run['steps']} | {run['best']:.1f} | {run['last']:.1f} | "
            f"{run['train_minutes']:.1f} | |"
        )
    for key, scores in sorted(results.get("tfidf", {}).items()):
        lines.append(f"| TF-IDF ({key}) | | | | | {', '.join(f'{k} {v:.1f}' for k, v in scores.items())} | | | |")
    lines.append(
        "| LRA (published, 4,000 bytes) | | | | | " + ", ".join(f"{k} {v}" for k, v in LRA.items()) + " | | | |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with train.jsonl and val.jsonl (text, label)")
    parser.add_argument("--lengths", default="4000", help="bytes read per review, comma-separated")
    parser.add_argument("--labels", default="all", help="labelled reviews per run: numbers or all")
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--arms",
        default="random",
        help="NAME (random init; the name labels the run, e.g. random_w512) and/or NAME=CHECKPOINT (a pretrained MLM)",
    )
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop each run after this many minutes")
    parser.add_argument("--evals", type=int, default=4, help="evaluations per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--val-examples", type=int, default=None, help="score on a seeded balanced subset of the validation reviews"
    )
    parser.add_argument("--options", default="{}", help="more GlueOptions fields as JSON (preset, lr, ...)")
    parser.add_argument("--no-ours", action="store_true", help="only the TF-IDF reference (and --cnn-steps)")
    parser.add_argument(
        "--cnn-steps", type=int, default=0, help="also train the byte CNN of glue_baselines.py this many steps x 32"
    )
    parser.add_argument("--runs", default="runs/imdb_lra")
    parser.add_argument("--out", default="docs/imdb_lra.json")
    args = parser.parse_args()

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}, "tfidf": {}}
    lengths = [int(x) for x in args.lengths.split(",")]
    label_counts = [None if x == "all" else int(x) for x in args.labels.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    data = Path(args.data)
    train, val = read_reviews(data / "train.jsonl"), read_reviews(data / "val.jsonl")
    val = subset(val, args.val_examples, 1234)  # the files hold all negatives first: never take the first N
    args.val_file = Path(args.runs) / f"val_{len(val)}.jsonl"
    args.val_file.parent.mkdir(parents=True, exist_ok=True)
    args.val_file.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in val))
    for length in lengths:
        for labels in label_counts:
            key = f"{length}|{labels or 'all'}|s{seeds[0]}|{len(val)}"
            if key not in results["tfidf"]:
                results["tfidf"][key] = tfidf(subset(train, labels, seeds[0]), val, length)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1))
    for length in lengths if args.cnn_steps else []:
        for seed in seeds:
            key = f"{length}|{args.cnn_steps}|{seed}|{len(val)}"
            if key not in results.setdefault("byte_cnn", {}):
                results["byte_cnn"][key] = byte_cnn(train, val, length, args.cnn_steps, seed, args.evals)
                out.write_text(json.dumps(results, indent=1))
    arms = {}
    for spec in args.arms.split(","):
        name, _, checkpoint = spec.partition("=")
        arms[name] = {"checkpoint": checkpoint} if checkpoint else {}
    for arm, source in [] if args.no_ours else arms.items():
        for length in lengths:
            for labels in label_counts:
                for seed in seeds:
                    key = f"{arm}|{length}|{labels or 'all'}|{seed}"
                    if key in results["runs"]:
                        continue
                    results["runs"][key] = ours(args, arm, source, length, labels, seed)
                    out.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
