"""Byte-level BERT vs a Perceiver run at equal CPU time: validation bits per masked byte against minutes.

    python benchmarks/mlm_race.py --data ../shared/data/corpus/enwiki --minutes 30 \\
        --perceiver-run runs/pre_small30 --out docs/mlm_race

Trains a byte-level BERT (self-attention over every byte, `byte_bert.ByteBERT`) on exactly the
Perceiver run's data pipeline: same corpus split, windows, whole-word masking, validation windows and
masks, optimizer (AdamW, warm-up + cosine) and precision. The Perceiver side is read from its run's
``metrics.jsonl``; run both on an otherwise idle machine. Writes JSON and a PNG with both curves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from byte_bert import ByteBERT  # noqa: E402
from perceiver_lm.data import collate_masked  # noqa: E402
from perceiver_lm.evaluation import LN2, masked_lm_loss  # noqa: E402
from perceiver_lm.optim import parameter_groups, warmup_cosine  # noqa: E402
from perceiver_lm.training import TrainingOptions, build_data  # noqa: E402


@torch.no_grad()
def evaluate(model, loader, bf16: bool) -> dict[str, float]:
    model.eval()
    total, correct, count = 0.0, 0, 0
    for batch in loader:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = model(batch["input_ids"], batch["query_positions"])
        labels = batch["labels"]
        valid = labels != -100
        total += masked_lm_loss(logits, labels, reduction="sum").item()
        correct += ((logits.argmax(-1) == labels) & valid).sum().item()
        count += valid.sum().item()
    model.train()
    return {"bits_per_byte": total / count / LN2, "accuracy": correct / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=5200, help="cosine horizon (as the Perceiver run's)")
    parser.add_argument("--eval-every-minutes", type=float, default=2.5)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--perceiver-run", default=None, help="a pretrain run directory to plot beside")
    parser.add_argument("--out", default="runs/mlm_race")
    args = parser.parse_args()
    options = TrainingOptions(data=[args.data], batch_size=args.batch_size, eval_windows=64)
    data = build_data(options, args.window)
    torch.manual_seed(0)
    model = ByteBERT(262, args.window, args.width, args.layers, args.width // 64)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=args.lr)
    train = DataLoader(data.train, batch_size=args.batch_size, collate_fn=collate_masked, drop_last=True)
    val = DataLoader(data.val, batch_size=args.batch_size, collate_fn=collate_masked)
    bf16 = args.precision == "bf16"
    params = sum(p.numel() for p in model.parameters())
    print(f"byte-BERT: width {args.width}, {args.layers} layers, {params:,} parameters; {data.description}", flush=True)
    curve, step, trained, next_eval = [], 0, 0.0, args.eval_every_minutes * 60
    done = False
    while not done:
        for batch in train:
            started = time.monotonic()
            for group in optimizer.param_groups:
                group["lr"] = args.lr * warmup_cosine(step, args.warmup_steps, args.max_steps, 0.1)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                logits = model(batch["input_ids"], batch["query_positions"])
            loss = masked_lm_loss(logits, batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            trained += time.monotonic() - started  # training time only, as the Perceiver run's elapsed_s
            done = trained >= args.minutes * 60
            if trained >= next_eval or done:
                curve.append({"step": step, "minutes": trained / 60, **evaluate(model, val, bf16)})
                print(json.dumps(curve[-1]), flush=True)
                next_eval += args.eval_every_minutes * 60
            if done:
                break
    ours = []
    if args.perceiver_run:
        for line in (Path(args.perceiver_run) / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "eval_bits_per_byte" in record:
                ours.append(
                    {
                        "step": record["step"],
                        "minutes": record["elapsed_s"] / 60,
                        "bits_per_byte": record["eval_bits_per_byte"],
                        "accuracy": record["eval_accuracy"],
                    }
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "byte_bert_parameters": params, "byte_bert": curve, "perceiver": ours}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, points in (("byte-BERT", curve), ("Perceiver (small)", ours)):
        if points:
            ax.plot([p["minutes"] for p in points], [p["bits_per_byte"] for p in points], marker="o", ms=3, label=name)
    ax.set_xlabel("CPU minutes of training (2 cores)")
    ax.set_ylabel("validation bits per masked byte")
    ax.set_title("enwiki, 2,048-byte windows, 15 % whole-word masking")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    if ours:

        def at(points, m):
            return min(points, key=lambda p: abs(p["minutes"] - m))

        for m in (10, 20, 30):
            if curve and curve[-1]["minutes"] >= m - 1:
                print(
                    f"{m} min: byte-BERT {at(curve, m)['bits_per_byte']:.3f}, "
                    f"Perceiver {at(ours, m)['bits_per_byte']:.3f}"
                )


if __name__ == "__main__":
    main()
