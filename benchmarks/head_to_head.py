"""Ours vs transformers' PerceiverForMaskedLM vs a FLOPs-matched byte-level BERT, over input length.

For each input length, one training step (forward + backward + AdamW) and one inference forward are
timed for each implementation at each precision asked for (``impl@precision``: fp32, bf16 autocast,
or auto, the toolkit's default for this machine), each in a fresh subprocess. Measurements are
interleaved (every repeat runs every configuration once, in a rotated order) and repeated, and the
table reports medians with their min-max spread: single runs on a shared machine swing by up to 2x.
The two Perceivers hold the same weights (ours exported into transformers); transformers always
decodes every position and takes dense labels, ours and the byte-BERT decode only the masked ones.
The byte-BERT's width and depth are chosen so that its forward at --match-length bytes costs the
same FLOPs as ours (the Perceiver IO paper's comparison). Memory: peak during the timed steps minus
the resident model before the first step (activations, gradients, optimizer state); on GPU,
allocated memory. FLOPs are counted by torch's FlopCounterMode on exact (unpadded, unfused)
attention, and set against this machine's measured matmul peak at each precision. Prints a table,
writes JSON and a PNG of time vs length.

    python benchmarks/head_to_head.py --lengths 2048,16384 --repeats 3
    python benchmarks/head_to_head.py --lengths 512,2048,8192,16384 --configs ours@auto,transformers@fp32
    python benchmarks/head_to_head.py --configs ours@auto,ours@auto+compile,ours@fp32,transformers@fp32

A precision ending in ``+compile`` runs that implementation through ``torch.compile`` (inductor); its
first, compiling step is reported as ``first_step_s`` and is not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

SHAPE = dict(  # `small`'s shape without its priors, with the decoder transformers hard-codes
    d_model=256,
    num_latents=128,
    d_latents=384,
    num_cross_heads=8,
    num_self_heads=8,
    qk_channels=256,
    v_channels=384,
    num_self_layers=6,
    cross_widening=1,
    self_widening=4,
    decoder_heads=8,
    decoder_qk_channels=256,
    decoder_v_channels=256,
    attention_dropout=0.0,
)
IMPLS = ("ours", "transformers", "byte-bert")
CONFIGS = "ours@auto,ours@fp32,transformers@fp32,transformers@bf16"  # add byte-bert@auto for the FLOPs-matched BERT


def precision_of(name: str, device: str) -> str:
    """ "fp32" or "bf16" for a config's precision; "auto" is what the toolkit picks on this machine."""
    from perceiver_lm.runtime import resolve_precision

    if name == "auto":
        name = resolve_precision("auto", cpu=device == "cpu").mode
    return {"no": "fp32", "fp32": "fp32", "bf16": "bf16"}[name]


def build(impl: str, length: int, bert: dict):
    """(model, loss(module, batch, labels), infer(module, batch)) for one implementation; ``module`` is the model
    or a compiled wrapper of it."""
    import tempfile

    import torch

    from byte_bert import ByteBERT
    from perceiver_lm import PerceiverConfig, PerceiverLM
    from perceiver_lm.interop import export_to_transformers
    from perceiver_lm.training import masked_lm_loss

    torch.manual_seed(0)
    if impl == "byte-bert":
        model = ByteBERT(262, length, **bert)
        return (
            model,
            lambda m, b, _: masked_lm_loss(m(b["input_ids"], b["query_positions"]), b["labels"]),
            lambda m, b: m(b["input_ids"], b["query_positions"]),
        )
    model = PerceiverLM(PerceiverConfig(max_seq_len=length, **SHAPE))
    if impl == "ours":
        return (
            model,
            lambda m, b, _: masked_lm_loss(m(b["input_ids"], query_positions=b["query_positions"]).logits, b["labels"]),
            lambda m, b: m(b["input_ids"], query_positions=b["query_positions"]),
        )
    import transformers

    folder = Path(tempfile.mkdtemp()) / "hf"
    export_to_transformers(model, folder)
    hf = transformers.PerceiverForMaskedLM.from_pretrained(folder)
    return hf, lambda m, b, labels: m(inputs=b["input_ids"], labels=labels).loss, lambda m, b: m(inputs=b["input_ids"])


def measure(
    impl: str, setting: str, mode: str, length: int, batch_size: int, steps: int, device: str, bert: dict
) -> dict:
    """One configuration; ``setting`` is fp32 or bf16, with ``+compile`` for torch.compile."""
    import torch

    from common import (
        dense_labels,
        memory_now,
        model_flops,
        peak_memory_since_reset,
        reset_peak_memory,
        synthetic_batch,
    )
    from perceiver_lm.optim import adamw

    precision = setting.removesuffix("+compile")
    model, plain_loss, plain_infer = build(impl, length, bert)
    model = model.to(device).train(mode == "train")
    running = torch.compile(model) if setting.endswith("+compile") else model

    def autocast():
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    def loss_fn(b, labels, m=running):
        with autocast():
            return plain_loss(m, b, labels)

    def infer_fn(b, m=running):
        with autocast():
            return plain_infer(m, b)

    batch = {k: v.to(device) for k, v in synthetic_batch(batch_size, length).items()}
    labels = dense_labels(batch, length)  # built on the batch's device
    optimizer = adamw(model.parameters(), lr=1e-4)  # the same fused AdamW for every implementation

    def run() -> None:
        if mode == "train":
            loss_fn(batch, labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                infer_fn(batch)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    resident = memory_now(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    run()  # warm-up (for a compiled model: the compile); also creates AdamW's state
    sync()
    first = time.perf_counter() - start
    with_state = memory_now(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    seconds = (time.perf_counter() - start) / steps
    peak = max(peak_memory_since_reset(device), with_state)
    # Counted on one row (the math path would materialise byte-BERT's L x L scores) and scaled up.
    row = {k: v[:1] for k, v in batch.items()}
    flops = (
        batch_size
        * model_flops(  # counted on the plain model
            lambda: loss_fn(row, labels[:1], model).backward() if mode == "train" else infer_fn(row, model)
        )
    )
    optimizer.zero_grad(set_to_none=True)
    return {
        "impl": impl,
        "precision": precision,
        "setting": setting,
        "compiled": setting.endswith("+compile"),
        "first_step_s": first,
        "mode": mode,
        "length": length,
        "batch_size": batch_size,
        "seconds": seconds,
        "bytes_per_s": batch_size * length / seconds,
        "step_memory_mib": (peak - resident) / 2**20,
        "activation_memory_mib": (peak - with_state) / 2**20,
        "peak_memory_mib": peak / 2**20,
        "gflop": flops / 1e9,
        "gflop_per_s": flops / 1e9 / seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
    }


def bert_shape(match_length: int) -> tuple[dict, int]:
    """The byte-BERT matching ours in forward FLOPs at ``match_length`` bytes (batch of 1)."""
    from byte_bert import forward_flops, matched_shape
    from common import synthetic_batch
    from perceiver_lm import PerceiverConfig, PerceiverLM

    batch = synthetic_batch(1, match_length)
    ours = PerceiverLM(PerceiverConfig(max_seq_len=match_length, **SHAPE)).eval()
    target = forward_flops(ours, batch["input_ids"], query_positions=batch["query_positions"], return_attentions=True)
    return matched_shape(target, match_length, batch["query_positions"]), target


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (impl, setting, mode, length): medians over repeats, with min and max of the time."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["impl"], r["setting"], r["mode"], r["length"]), []).append(r)
    rows = []
    for (_impl, _setting, _mode, length), rs in groups.items():
        seconds = [r["seconds"] for r in rs]
        med = statistics.median(seconds)
        rows.append(
            {
                **rs[0],
                "seconds": med,
                "seconds_min": min(seconds),
                "seconds_max": max(seconds),
                "repeats": len(rs),
                "first_step_s": statistics.median(r["first_step_s"] for r in rs),
                "bytes_per_s": rs[0]["batch_size"] * length / med,
                "gflop_per_s": rs[0]["gflop"] / med,
                "step_memory_mib": statistics.median(r["step_memory_mib"] for r in rs),
                "activation_memory_mib": statistics.median(r["activation_memory_mib"] for r in rs),
                "peak_memory_mib": statistics.median(r["peak_memory_mib"] for r in rs),
            }
        )
    return rows


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    configs = sorted({(r["impl"], r["setting"]) for r in rows}, key=lambda c: (IMPLS.index(c[0]), c[1]))
    for ax, mode in zip(axes, ("train", "infer"), strict=True):
        for impl, setting in configs:
            pts = sorted(
                (r["length"], r["seconds"], r["seconds_min"], r["seconds_max"])
                for r in rows
                if (r["impl"], r["setting"], r["mode"]) == (impl, setting, mode)
            )
            if pts:
                x, y, lo, hi = map(list, zip(*pts, strict=True))
                ax.errorbar(
                    x,
                    y,
                    yerr=[[a - b for a, b in zip(y, lo, strict=True)], [b - a for a, b in zip(y, hi, strict=True)]],
                    fmt="-o" if setting.startswith("bf16") else "--s",
                    color=f"C{IMPLS.index(impl) + (len(IMPLS) if setting.endswith('+compile') else 0)}",
                    capsize=3,
                    label=f"{impl} {setting}",
                )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="input bytes",
            ylabel="seconds per batch (median, min-max)",
            title=f"{'training step' if mode == 'train' else 'inference forward'}",
        )
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:  # a mode not measured (--modes train) has nothing to list
            ax.legend(fontsize=8)
    fig.suptitle(f"Byte-level MLM, batch of {rows[0]['batch_size']:d}: time vs input length")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="2048,16384")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after one warm-up step)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh-process measurements per configuration, interleaved"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--configs",
        default=CONFIGS,
        help="comma-separated impl@precision (precision: fp32, bf16, auto; +compile for torch.compile)",
    )
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument(
        "--match-length", type=int, default=2048, help="input length at which the byte-BERT's FLOPs match ours"
    )
    parser.add_argument("--out", default="runs/bench/head_to_head.json")
    parser.add_argument(
        "--one", nargs=5, metavar=("IMPL", "PRECISION", "MODE", "LENGTH", "BERT_JSON"), help=argparse.SUPPRESS
    )
    parser.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, precision, mode, length, bert = args.one
        print(
            json.dumps(
                measure(impl, precision, mode, int(length), args.batch_size, args.steps, args.device, json.loads(bert))
            )
        )
        return
    if args.peak:
        from common import matmul_peak

        print(json.dumps(matmul_peak(args.device)))
        return
    configs = []
    for item in args.configs.split(","):
        impl, _, precision = item.partition("@")
        compiled = precision.endswith("+compile")
        precision = precision.removesuffix("+compile")
        if impl not in IMPLS or precision not in ("fp32", "bf16", "auto"):
            parser.error(
                f"--configs: {item!r} is not impl@precision with impl in {', '.join(IMPLS)} "
                "and precision fp32, bf16 or auto (optionally followed by +compile)"
            )
        setting = precision_of(precision, args.device) + ("+compile" if compiled else "")
        configs.append((impl, setting, precision == "auto" and not compiled))
    defaults = {
        "transformers": "fp32",
        **{impl: prec for impl, prec, auto in configs if auto},
    }  # transformers trains in fp32 unless told
    bert, target = bert_shape(args.match_length)
    peak = json.loads(
        subprocess.run(
            [sys.executable, __file__, "--peak", "--device", args.device], capture_output=True, text=True, check=True
        ).stdout
    )
    print(
        f"matmul peak on this machine (2048^3, {args.device}): "
        f"fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s"
    )
    print(
        f"byte-BERT matched to ours at {args.match_length} bytes "
        f"({target / 1e9:.2f} GFLOP forward per sequence): {bert}"
    )
    lengths = list(map(int, args.lengths.split(",")))
    modes = args.modes.split(",")
    runs = []
    for repeat in range(args.repeats):
        order = (
            configs[repeat % len(configs) :] + configs[: repeat % len(configs)]
        )  # rotate: no config always runs first
        for length in lengths:
            for mode in modes:
                for impl, setting, _ in order:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--one",
                        impl,
                        setting,
                        mode,
                        str(length),
                        json.dumps(bert),
                        "--batch-size",
                        str(args.batch_size),
                        "--steps",
                        str(args.steps),
                        "--device",
                        args.device,
                    ]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode:
                        print(
                            f"{impl} {setting} {mode} {length}: failed "
                            f"({(done.stderr.strip().splitlines() or ['?'])[-1]})",
                            file=sys.stderr,
                        )
                        continue
                    runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    r = runs[-1]
                    print(
                        f"  [{repeat + 1}/{args.repeats}] {impl:>12} {setting} {mode:>5} {length:>6}: "
                        f"{r['seconds']:.3f} s, {r['gflop_per_s']:.0f} GFLOP/s, {r['step_memory_mib']:,.0f} MiB",
                        flush=True,
                    )
    rows = summarise(runs)
    table(rows, lengths, modes, peak, defaults)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "processor": platform.processor(),
                "device": args.device,
                "matmul_peak_gflop_per_s": peak,
                "defaults": defaults,
                "shape": SHAPE,
                "byte_bert": bert,
                "match_length": args.match_length,
                "repeats": args.repeats,
                "results": rows,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def table(rows: list[dict], lengths: list[int], modes: list[str], peak: dict, defaults: dict) -> None:
    def get(impl, setting, mode, length):
        return next(
            (r for r in rows if (r["impl"], r["setting"], r["mode"], r["length"]) == (impl, setting, mode, length)),
            None,
        )

    configs = sorted({(r["impl"], r["setting"]) for r in rows}, key=lambda c: (IMPLS.index(c[0]), c[1]))
    print(
        f"\n{'length':>6} {'mode':>5} {'impl':>12} {'setting':>12} | {'median s':>8} {'min-max s':>13} | "
        f"{'bytes/s':>8} | "
        f"{'GFLOP':>6} {'GFLOP/s':>7} {'% peak':>6} | {'MiB':>6}"
    )
    for length in lengths:
        for mode in modes:
            for impl, setting in configs:
                r = get(impl, setting, mode, length)
                if r:
                    print(
                        f"{length:>6} {mode:>5} {impl:>12} {setting:>12} | {r['seconds']:>8.3f} "
                        f"{r['seconds_min']:>6.3f}-{r['seconds_max']:<6.3f} | "
                        f"{r['bytes_per_s']:>8,.0f} | {r['gflop']:>6.0f} {r['gflop_per_s']:>7.0f} "
                        f"{100 * r['gflop_per_s'] / peak[r['precision']]:>5.0f}% | "
                        f"{r['step_memory_mib']:>6,.0f}"
                    )

    def ratio(a, b):
        """Median ratio of speeds, and the worst and best case from the spreads."""
        return (
            f"{b['seconds'] / a['seconds']:.2f}x "
            f"({b['seconds_min'] / a['seconds_max']:.2f}-{b['seconds_max'] / a['seconds_min']:.2f})"
        )

    print("\nspeed ratios, ours ÷ transformers (median; worst-best from the spreads):")
    for length in lengths:
        for mode in modes:
            parts = []
            if "ours" in defaults and "transformers" in defaults:
                o, h = (
                    get("ours", defaults["ours"], mode, length),
                    get("transformers", defaults["transformers"], mode, length),
                )
                if o and h:
                    parts.append(f"defaults ({defaults['ours']} vs {defaults['transformers']}) {ratio(o, h)}")
            o, h = get("ours", "fp32", mode, length), get("transformers", "fp32", mode, length)
            if o and h:
                parts.append(f"fp32 vs fp32 {ratio(o, h)}")
            o, h = get("ours", "bf16", mode, length), get("transformers", "bf16", mode, length)
            if o and h:
                parts.append(f"bf16 vs bf16 {ratio(o, h)}")
            if "transformers" in defaults:
                h = get("transformers", defaults["transformers"], mode, length)
                for setting in ("bf16+compile", "fp32+compile"):
                    o = get("ours", setting, mode, length)
                    if o and h:
                        parts.append(f"ours {setting} vs transformers' default {ratio(o, h)}")

            def best(impl, mode=mode, length=length):
                return min(
                    (r for r in rows if (r["impl"], r["mode"], r["length"]) == (impl, mode, length)),
                    key=lambda r: r["seconds"],
                    default=None,
                )

            o, h = best("ours"), best("transformers")
            if o and h:
                parts.append(f"best vs best ({o['setting']} vs {h['setting']}) {ratio(o, h)}")
            if parts:
                print(f"  {length:>6} {mode:>5}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
