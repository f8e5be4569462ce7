"""Which byte encoder lets the Perceiver learn at CPU scale: a GLUE task from random init (or a checkpoint).

    python benchmarks/byte_encoder_study.py --glue-dir ../shared/data/glue --variants default,conv,none --seeds 0,1

A variant is a preset plus model-config changes (``VARIANTS``); each arm fine-tunes a randomly initialised
model of that shape (or ``--checkpoint``) through the library's `finetune`, evaluating the full dev set
every ``--eval-every`` steps. Results go to ``--out``/results.json; a markdown table (mean ± sd over
seeds) is printed. MLM arms are plain ``perceiver-lm pretrain`` runs (docs/studies.md, "Byte encoder").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from perceiver_lm.config import BYTE_ENCODERS, get_preset
from perceiver_lm.model import PerceiverLM

# Byte-encoder and latent-layout variants of a preset (changes on top of it).
VARIANTS: dict[str, dict] = {
    "default": {},  # the preset as it is (`small`: ngram_conv, trimmed latents, zero-initialised positions)
    # every byte encoder: none, each part alone, the parts together (config.BYTE_ENCODER_PARTS)
    **{name: dict(byte_encoder=name) for name in BYTE_ENCODERS},
    # the `small` preset before the byte encoder: plain embeddings, random positions, all 128 latents
    "plain": dict(byte_encoder="none", zero_init_positions=False, trim_latents=False),
}


def variant_config(preset: str, name: str, extra: str | None):
    changes = dict(VARIANTS[name])
    for item in filter(None, (extra or "").split(",")):
        key, value = item.split("=")
        changes[key] = json.loads(value)
    return get_preset(preset).replace(**changes)


def run_glue(args) -> dict:
    from tasks.finetune.finetune import GlueOptions, finetune

    out = Path(args.out)
    results = {}
    for name in args.variants.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            config = variant_config(args.preset, name, args.set)
            init_dir = out / "init" / f"{name}_s{seed}"
            torch.manual_seed(seed)
            PerceiverLM(config).save_pretrained(init_dir)  # the random-init arm starts from these weights
            started = time.monotonic()
            result = finetune(
                GlueOptions(
                    tasks=args.task,
                    checkpoint=str(args.checkpoint or init_dir),
                    glue_dir=args.glue_dir,
                    output_dir=str(out / f"{name}_s{seed}"),
                    max_steps=args.steps,
                    eval_every=args.eval_every,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    warmup_steps=args.warmup_steps,
                    seed=seed,
                    mixed_precision=args.mixed_precision,
                    max_length=args.max_length,
                    length_buckets=not args.no_length_buckets,
                )
            )
            history = json.loads((result.output_dir / "dev_metrics.json").read_text())["history"]
            curve = {h["step"]: h["scores"][args.task]["dev"] for h in history}
            results.setdefault(name, {})[seed] = {"curve": curve, "minutes": (time.monotonic() - started) / 60}
            print(name, seed, json.dumps(curve), f"{results[name][seed]['minutes']:.1f} min", flush=True)
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    return results


def plot(files: list[str], out: str) -> None:
    """Dev score against fine-tuning steps, mean over seeds with the spread, one line per arm of ``files``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for file in files:
        data = json.loads(Path(file).read_text())
        label_prefix = "pretrained " if data["args"].get("checkpoint") else ""
        for name, seeds in data["results"].items():
            steps = sorted({int(s) for r in seeds.values() for s in r["curve"]})
            values = np.array([[next(iter(r["curve"][str(s)].values())) for s in steps] for r in seeds.values()])
            ax.errorbar(
                steps,
                values.mean(0),
                yerr=values.std(0),
                marker="o",
                ms=3,
                capsize=2,
                label=f"{label_prefix}{name} ({len(seeds)} seeds)",
            )
    ax.axhline(50.9, color="grey", lw=0.8, ls=":", label="majority class")
    ax.set_xlabel("fine-tuning steps (batch 32)")
    ax.set_ylabel(f"{data['args']['task']} dev score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--variants", default="default,conv,none")
    parser.add_argument("--set", default=None, help="extra model-config changes for every variant, key=json,...")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default="runs/byte_encoder_study")
    parser.add_argument("--mixed-precision", default="bf16")
    parser.add_argument("--glue-dir")
    parser.add_argument("--task", default="sst2")
    parser.add_argument(
        "--checkpoint", default=None, help="fine-tune this pretrained checkpoint instead of random init"
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help="default: the shape's fine-tuning default")
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument(
        "--no-length-buckets", action="store_true", help="random batches instead of batches of similar length"
    )
    parser.add_argument("--plot-from", default=None, help="only plot: comma-separated results.json files -> --out PNG")
    args = parser.parse_args()
    if args.plot_from:
        plot(args.plot_from.split(","), args.out)
        return
    results = run_glue(args)
    metric = None
    for name, seeds in results.items():
        steps = sorted({s for r in seeds.values() for s in r["curve"]}, key=int)
        metric = metric or next(iter(next(iter(seeds.values()))["curve"][steps[0]]))
        cells = []
        for step in steps:
            values = [r["curve"][step][metric] for r in seeds.values() if step in r["curve"]]
            cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean([r['minutes'] for r in seeds.values()]):.1f} min |")


if __name__ == "__main__":
    main()
