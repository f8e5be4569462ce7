"""Ours vs transformers' PerceiverForMaskedLM vs a FLOPs-matched byte-level BERT, over input length.

For each input length, one training step (forward + backward + AdamW) and one inference forward are
timed for each implementation, each in a fresh subprocess. The two Perceivers hold the same weights
(ours exported into transformers); transformers always decodes every position and takes dense
labels, ours and the byte-BERT decode only the masked ones. The byte-BERT's width and depth are
chosen so that its forward at --match-length bytes costs the same FLOPs as ours (the Perceiver IO
paper's comparison). Memory: peak during the timed steps minus the resident model before the
first step (activations, gradients, optimizer state), and the same above the optimizer state
("activation" memory: activations, gradients, temporaries); on GPU, allocated memory. FLOPs are counted
by torch's FlopCounterMode on exact (unpadded, unfused) attention. Prints a table, writes JSON and a
PNG of time vs length.

    python benchmarks/head_to_head.py --lengths 512,1024,2048,4096,8192,16384 --batch-size 4
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
    d_model=256, num_latents=128, d_latents=384, num_cross_heads=8, num_self_heads=8, qk_channels=256, v_channels=384,
    num_self_layers=6, cross_widening=1, self_widening=4, decoder_heads=8, decoder_qk_channels=256, decoder_v_channels=256,
    attention_dropout=0.0,
)
IMPLS = ("ours", "transformers", "byte-bert")


def build(impl: str, length: int, bert: dict):
    """(model, loss(batch, labels), infer(batch), flops_kwargs) for one implementation."""
    import tempfile

    import torch

    from byte_bert import ByteBERT
    from perceiver_lm import PerceiverConfig, PerceiverLM
    from perceiver_lm.interop import export_to_transformers
    from perceiver_lm.training import masked_lm_loss

    torch.manual_seed(0)
    if impl == "byte-bert":
        model = ByteBERT(262, length, **bert)
        return model, lambda b, _: masked_lm_loss(model(b["input_ids"], b["query_positions"]), b["labels"]), \
            lambda b: model(b["input_ids"], b["query_positions"])
    model = PerceiverLM(PerceiverConfig(max_seq_len=length, **SHAPE))
    if impl == "ours":
        return model, lambda b, _: masked_lm_loss(model(b["input_ids"], query_positions=b["query_positions"]).logits, b["labels"]), \
            lambda b: model(b["input_ids"], query_positions=b["query_positions"])
    import transformers

    folder = Path(tempfile.mkdtemp()) / "hf"
    export_to_transformers(model, folder)
    hf = transformers.PerceiverForMaskedLM.from_pretrained(folder)
    return hf, lambda b, labels: hf(inputs=b["input_ids"], labels=labels).loss, lambda b: hf(inputs=b["input_ids"])


def count_flops(step) -> int:
    """FLOPs of ``step()`` with every attention on the exact math path (fused CPU kernels go uncounted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    import perceiver_lm.model as model_module

    padding = model_module._pad_for_fused_cpu_kernel
    model_module._pad_for_fused_cpu_kernel = lambda *_: False  # count model FLOPs, not padded channels
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            step()
    finally:
        model_module._pad_for_fused_cpu_kernel = padding
    return counter.get_total_flops()


def measure(impl: str, mode: str, length: int, batch_size: int, steps: int, device: str, bert: dict) -> dict:
    import torch

    from common import dense_labels, memory_now, peak_memory_since_reset, reset_peak_memory, synthetic_batch

    model, loss_fn, infer_fn = build(impl, length, bert)
    model = model.to(device).train(mode == "train")
    batch = {k: v.to(device) for k, v in synthetic_batch(batch_size, length).items()}
    labels = dense_labels(batch, length).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

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
    run()  # warm-up; also creates AdamW's state
    sync()
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
    flops = batch_size * count_flops(lambda: loss_fn(row, labels[:1]).backward() if mode == "train" else infer_fn(row))
    optimizer.zero_grad(set_to_none=True)
    return {"impl": impl, "mode": mode, "length": length, "batch_size": batch_size, "seconds": seconds,
            "bytes_per_s": batch_size * length / seconds, "step_memory_mib": (peak - resident) / 2**20,
            "activation_memory_mib": (peak - with_state) / 2**20,
            "peak_memory_mib": peak / 2**20, "gflop": flops / 1e9, "gflop_per_s": flops / 1e9 / seconds,
            "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def bert_shape(match_length: int) -> tuple[dict, int]:
    """The byte-BERT matching ours in forward FLOPs at ``match_length`` bytes (batch of 1)."""
    from byte_bert import forward_flops, matched_shape
    from common import synthetic_batch
    from perceiver_lm import PerceiverConfig, PerceiverLM

    batch = synthetic_batch(1, match_length)
    ours = PerceiverLM(PerceiverConfig(max_seq_len=match_length, **SHAPE)).eval()
    target = forward_flops(ours, batch["input_ids"], query_positions=batch["query_positions"], return_attentions=True)
    return matched_shape(target, match_length, batch["query_positions"]), target


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, mode in zip(axes, ("train", "infer")):
        for impl, colour in zip(IMPLS, ("C0", "C1", "C2")):
            pts = sorted((r["length"], r["seconds"]) for r in rows if r["impl"] == impl and r["mode"] == mode)
            if pts:
                ax.plot(*zip(*pts), "-o", color=colour, label=impl)
        ax.set(xscale="log", yscale="log", xlabel="input bytes", ylabel="seconds per batch",
               title=f"{'training step' if mode == 'train' else 'inference forward'}")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle("Byte-level MLM, batch of %d: time vs input length" % rows[0]["batch_size"])
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--match-length", type=int, default=2048, help="input length at which the byte-BERT's FLOPs match ours")
    parser.add_argument("--out", default="runs/bench/head_to_head.json")
    parser.add_argument("--one", nargs=4, metavar=("IMPL", "MODE", "LENGTH", "BERT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, mode, length, bert = args.one
        print(json.dumps(measure(impl, mode, int(length), args.batch_size, args.steps, args.device, json.loads(bert))))
        return
    bert, target = bert_shape(args.match_length)
    print(f"byte-BERT matched to ours at {args.match_length} bytes ({target / 1e9:.2f} GFLOP forward per sequence): {bert}")
    rows = []
    lengths = list(map(int, args.lengths.split(",")))
    for length in lengths:
        for mode in ("train", "infer"):
            for impl in args.impls.split(","):
                cmd = [sys.executable, __file__, "--one", impl, mode, str(length), json.dumps(bert),
                       "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--device", args.device]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    print(f"{impl} {mode} {length}: failed ({(done.stderr.strip().splitlines() or ['?'])[-1]})", file=sys.stderr)
                    continue
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"  {impl:>12} {mode:>5} {length:>6}: {r['seconds']:.3f} s, {r['gflop_per_s']:.0f} GFLOP/s, "
                      f"{r['step_memory_mib']:,.0f} MiB", flush=True)
    table(rows, lengths)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "device": args.device, "shape": SHAPE,
                               "byte_bert": bert, "match_length": args.match_length, "results": rows}, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def table(rows: list[dict], lengths: list[int]) -> None:
    def get(impl, mode, length):
        return next((r for r in rows if (r["impl"], r["mode"], r["length"]) == (impl, mode, length)), None)

    print(f"\n{'length':>6} {'mode':>5} | {'ours B/s':>9} {'hf B/s':>9} {'bert B/s':>9} | {'ours/hf':>7} {'ours/bert':>9} | "
          f"{'ours MiB':>8} {'hf MiB':>8} {'mem o/hf':>8} {'act o/hf':>8} | {'GFLOP o/hf/bert':>17}")
    for length in lengths:
        for mode in ("train", "infer"):
            o, h, b = (get(i, mode, length) for i in IMPLS)
            bps = lambda r: f"{r['bytes_per_s']:>9,.0f}" if r else f"{'-':>9}"
            ratio = lambda x, y, key, width: f"{x[key] / y[key]:>{width - 1}.2f}x" if x and y else f"{'-':>{width}}"
            mem = lambda r: f"{r['step_memory_mib']:>8,.0f}" if r else f"{'-':>8}"
            fl = "/".join(f"{r['gflop']:.0f}" if r else "-" for r in (o, h, b))
            print(f"{length:>6} {mode:>5} | {bps(o)} {bps(h)} {bps(b)} | {ratio(o, h, 'bytes_per_s', 7)} {ratio(o, b, 'bytes_per_s', 9)} | "
                  f"{mem(o)} {mem(h)} {ratio(o, h, 'step_memory_mib', 8)} {ratio(o, h, 'activation_memory_mib', 8)} | {fl:>17}")
    if 2048 in lengths and len(lengths) > 1:
        top = max(lengths)
        print(f"\ntime ratio {top} / 2048 bytes (training step):", end="")
        for impl in IMPLS:
            a, z = get(impl, "train", 2048), get(impl, "train", top)
            if a and z:
                print(f"  {impl} {z['seconds'] / a['seconds']:.2f}", end="")
        print(f"   (length ratio {top / 2048:.0f})")


if __name__ == "__main__":
    main()
