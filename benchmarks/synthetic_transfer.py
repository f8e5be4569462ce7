"""Does pretraining transfer? A synthetic language whose answer is known, run through the real CLI.

For each seed: build the world (`synthetic_world.py`: corpus, 600 labelled sentences with seen spellings,
1,000 dev sentences with unseen ones), then

1. ``perceiver-lm pretrain --data corpus.txt --max-minutes M`` for every budget M (plus --pretrain-args),
2. ``perceiver-lm glue train`` on the labelled sentences from that model (--checkpoint) and from random
   weights, at the same fine-tuning options (--finetune-args),

and record bits per masked byte on held-out corpus text, dev accuracy on unseen spellings, and the gap.
Random init does not depend on the pretraining recipe: it is trained once per seed and shared by every arm
of the same --out. Runs already in --out are kept (a grid grows over several calls; --name labels an arm).
Writes JSON, prints a markdown table (mean and spread over seeds), and with --plot draws bits per byte and
the transfer gap against pretraining minutes.

    python benchmarks/synthetic_transfer.py --minutes 5,10 --seeds 0,1 --out docs/synthetic_transfer.json \\
        --plot docs/synthetic_transfer.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_world import World, WorldOptions  # noqa: E402

from common import spread  # noqa: E402

TASK = "synthetic"


def random_key(seed: int, finetune_args: str) -> str:
    """Random-init runs are shared by the arms fine-tuned the same way."""
    return f"{seed}|{finetune_args}" if finetune_args else str(seed)


def cli(args: list[str], threads: int | None, log: Path) -> None:
    """Run ``perceiver-lm ARGS`` as a user would, output to ``log``; fail with the log's tail on error."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "cli", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise SystemExit(f"perceiver-lm {' '.join(args[:2])} failed (rc {done.returncode}); {log}:\n{tail}")


def pretrain(args: argparse.Namespace, paths: dict[str, Path], minutes: float, seed: int, folder: Path):
    run = folder / "pretrain"
    command = ["pretrain", "--data", str(paths["corpus.txt"]), "--output-dir", str(run), "--overwrite"]
    command += ["--max-minutes", str(minutes), "--seed", str(seed), *shlex.split(args.pretrain_args)]
    started = time.monotonic()
    cli(command, args.threads, folder / "pretrain.log")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [
        {"step": r["step"], "elapsed_s": r.get("elapsed_s"), "bits_per_byte": r["eval_bits_per_byte"]}
        for r in records
        if "eval_bits_per_byte" in r
    ]
    return run, {
        "steps": max(r["step"] for r in records),
        "bits_per_byte": curve[-1]["bits_per_byte"] if curve else None,
        "curve": curve,
        "wall_minutes": (time.monotonic() - started) / 60,
    }


def finetune(args: argparse.Namespace, paths: dict[str, Path], checkpoint: Path | None, seed: int, folder: Path):
    run = folder / "finetune"
    command = ["glue", "train", "--train-file", str(paths["train.jsonl"]), "--validation-file", str(paths["dev.jsonl"])]
    command += ["--task-name", TASK, "--output-dir", str(run), "--overwrite", "--seed", str(seed)]
    command += ["--max-steps", str(args.steps), "--eval-every", str(max(1, args.steps // args.evals))]
    command += (["--checkpoint", str(checkpoint)] if checkpoint else []) + shlex.split(args.finetune_args)
    started = time.monotonic()
    cli(command, args.threads, folder / "finetune.log")
    history = json.loads((run / "dev_metrics.json").read_text())["history"]
    curve = [{"step": h["step"], "accuracy": h["scores"][TASK]["dev"]["accuracy"]} for h in history]
    return {
        "last": curve[-1]["accuracy"],
        "best": max(c["accuracy"] for c in curve),
        "curve": curve,
        "wall_minutes": (time.monotonic() - started) / 60,
    }


def body_probes(checkpoint: Path | None, paths: dict[str, Path], seed: int) -> dict[str, Any]:
    """Linear probes of the frozen body (`transfer_probe.probe`) on the labelled sentences: byte features, latents
    after cross-attention and after the processor, each pooled over the sentence; with the collapse statistics."""
    import numpy as np
    import torch
    from transfer_probe import LEVELS, latent_statistics, probe

    from perceiver_lm.config import MultiTaskConfig, TaskSpec, get_preset
    from perceiver_lm.model import PerceiverClassifier, PerceiverLM
    from perceiver_lm.tokenizer import encode_batch

    heads = MultiTaskConfig((TaskSpec(TASK, 2),), 64)
    torch.manual_seed(seed)
    if checkpoint is None:
        model = PerceiverClassifier(get_preset("small"), heads)
    else:
        model = PerceiverClassifier.from_lm(PerceiverLM.from_pretrained(checkpoint), heads)
    model.eval()
    encoder = model.encoder

    def pooled(rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
        captured: dict[str, torch.Tensor] = {}
        hook = encoder.cross.register_forward_hook(lambda _m, _i, out: captured.__setitem__("cross", out.hidden))
        out: dict[str, list[np.ndarray]] = {level: [] for level in LEVELS}
        try:
            with torch.no_grad():
                for i in range(0, len(rows), 64):
                    batch = encode_batch([r["text"] for r in rows[i : i + 64]])
                    ids, mask = torch.as_tensor(batch.input_ids), torch.as_tensor(batch.attention_mask)
                    real = mask.float()[..., None]  # [B, L, 1]
                    out["bytes"].append(((encoder.embed(ids, mask) * real).sum(1) / real.sum(1)).numpy())
                    encoded = encoder(ids, mask)
                    keep = (
                        torch.ones(encoded.hidden.shape[:2])
                        if encoded.latent_mask is None
                        else encoded.latent_mask.float()
                    )[..., None]  # [B, N, 1]
                    for level, hidden in (("cross", captured["cross"]), ("latents", encoded.hidden)):
                        out[level].append(((hidden * keep).sum(1) / keep.sum(1)).numpy())
        finally:
            hook.remove()
        return {level: np.concatenate(chunks) for level, chunks in out.items()}

    data = {
        name: [json.loads(line) for line in paths[name].read_text().splitlines()]
        for name in ("train.jsonl", "dev.jsonl")
    }
    labels = {name: np.array([r["label"] == "positive" for r in rows], dtype=int) for name, rows in data.items()}
    train, dev = pooled(data["train.jsonl"]), pooled(data["dev.jsonl"])
    scores = {
        level: probe(train[level], labels["train.jsonl"], dev[level], labels["dev.jsonl"])["accuracy"]
        for level in LEVELS
    }
    return {"accuracy": scores, "latent_statistics": latent_statistics(dev["latents"])}


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (arm, minutes): means over seeds of bits, accuracy and the gap to random init's same seed."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in results["runs"].values():
        groups.setdefault((run["arm"], run["minutes"]), []).append(run)
    rows = []
    for (arm, minutes), runs in sorted(groups.items()):
        gaps = [
            r["finetune"]["last"] - results["random"][key]["last"]
            for r in runs
            if (key := random_key(r["seed"], r["finetune_args"])) in results["random"]
        ]
        rows.append(
            {
                "arm": arm,
                "minutes": minutes,
                "seeds": sorted(r["seed"] for r in runs),
                "bits_per_byte": [r["pretrain"]["bits_per_byte"] for r in runs],
                "accuracy": [r["finetune"]["last"] for r in runs],
                "gap": gaps,
            }
        )
    return rows


def table(results: dict[str, Any]) -> str:
    floor = results["world"]["mlm_floor_bits_per_masked_byte"]
    random_acc = [r["last"] for r in results["random"].values()]
    lines = [
        f"world: MLM floor {floor:.2f} bits per masked byte, letters at random 4.70; "
        f"random init {spread(random_acc)} % on unseen spellings",
        "",
        "| arm | minutes | seeds | bits/masked byte | dev acc. (unseen) | gap to random init |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary(results):
        bits = [b for b in row["bits_per_byte"] if b is not None]
        lines.append(
            f"| {row['arm']} | {row['minutes']:g} | {','.join(map(str, row['seeds']))} | "
            f"{statistics.mean(bits):.3f} | {spread(row['accuracy'])} | {spread(row['gap'])} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    arms = sorted({run["arm"] for run in results["runs"].values()})
    palette = plt.get_cmap("tab20" if len(arms) > 10 else "tab10")
    color = {arm: palette(i) for i, arm in enumerate(arms)}  # one colour per arm in both panels
    for run in results["runs"].values():
        curve = run["pretrain"]["curve"]
        left.plot(
            [c["elapsed_s"] / 60 for c in curve],
            [c["bits_per_byte"] for c in curve],
            alpha=0.7,
            label=run["arm"],
            color=color[run["arm"]],
        )
    left.axhline(results["world"]["mlm_floor_bits_per_masked_byte"], color="k", ls="--", label="floor")
    left.axhline(results["world"]["letters_at_random"], color="grey", ls=":", label="letters at random")
    left.set(xlabel="pretraining minutes", ylabel="bits per masked byte (held out)")
    unique = dict(zip(*reversed(left.get_legend_handles_labels()), strict=True))  # one entry per arm
    left.legend(unique.values(), unique.keys(), fontsize=7)
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for row in summary(results):
        by_arm.setdefault(row["arm"], []).append(row)
    for arm, rows in by_arm.items():
        xs = [r["minutes"] for r in rows if r["gap"]]
        means = [statistics.mean(r["gap"]) for r in rows if r["gap"]]
        right.plot(xs, means, "o-", label=arm, color=color[arm])
        for r in rows:
            right.scatter([r["minutes"]] * len(r["gap"]), r["gap"], s=8, color="grey")
    right.axhline(0, color="k", lw=0.5)
    right.set(xlabel="pretraining minutes", ylabel="dev accuracy gain over random init (points)")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(WorldOptions):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--seeds", default="0", help="world and run seeds, comma-separated (world seed = run seed)")
    parser.add_argument("--minutes", default="10", help="pretraining budgets in minutes, comma-separated")
    parser.add_argument("--name", default="default", help="label of this pretraining recipe (arm)")
    parser.add_argument("--pretrain-args", default="", help="more `perceiver-lm pretrain` options, as one string")
    parser.add_argument("--finetune-args", default="", help="more `perceiver-lm glue train` options, as one string")
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps (batch 32 unless --finetune-args)")
    parser.add_argument("--evals", type=int, default=3, help="evaluations per fine-tuning run")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: torch's)")
    parser.add_argument("--probe", action="store_true", help="also probe the frozen bodies (random and pretrained)")
    parser.add_argument("--runs", default="runs/synthetic_transfer")
    parser.add_argument("--out", default="docs/synthetic_transfer.json")
    parser.add_argument("--plot", default=None, help="PNG of bits and gap against minutes")
    args = parser.parse_args(argv)

    world_fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(WorldOptions) if f.name != "seed"}
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}, "random": {}}
    if results.get("world_options", world_fields) != world_fields:
        raise SystemExit(f"{out} holds runs of another world ({results['world_options']}); use another --out")
    results["world_options"] = world_fields

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))

    for seed in [int(s) for s in args.seeds.split(",")]:
        world = World(WorldOptions(**world_fields, seed=seed))
        paths = world.write(Path(args.runs) / f"world_s{seed}")
        results["world"] = {k: v for k, v in json.loads(paths["world.json"].read_text()).items() if k != "options"}
        baseline = random_key(seed, args.finetune_args)
        if baseline not in results["random"]:
            folder = Path(args.runs) / f"random_s{seed}_{len(results['random'])}"
            folder.mkdir(parents=True, exist_ok=True)
            results["random"][baseline] = {
                "finetune_args": args.finetune_args,
                **finetune(args, paths, None, seed, folder),
            }
            save()
        for minutes in [float(m) for m in args.minutes.split(",")]:
            key = f"{args.name}|{minutes:g}|{seed}"
            if key in results["runs"]:
                continue
            folder = Path(args.runs) / f"{args.name}_{minutes:g}m_s{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            checkpoint, pretrained = pretrain(args, paths, minutes, seed, folder)
            results["runs"][key] = {
                "arm": args.name,
                "minutes": minutes,
                "seed": seed,
                "pretrain_args": args.pretrain_args,
                "finetune_args": args.finetune_args,
                "pretrain": pretrained,
                "finetune": finetune(args, paths, checkpoint, seed, folder),
            }
            if args.probe:
                results["runs"][key]["probes"] = body_probes(checkpoint, paths, seed)
            save()
            run = results["runs"][key]
            print(f"{key}: {run['pretrain']['bits_per_byte']} bits, {run['finetune']['last']:.1f} % "
                  f"(random {results['random'][baseline]['last']:.1f})", flush=True)  # fmt: skip
    print(table(results))
    if args.plot:
        plot(results, Path(args.plot))
    return results


if __name__ == "__main__":
    main()
