"""Ours vs transformers' PerceiverForMaskedLM: the same weights, the same masked batches.

For each input length, one training step (forward + backward + AdamW) and one inference forward
are timed for both implementations, each in a fresh subprocess so that peak memory (max RSS on
CPU, max allocated on GPU) is its own. transformers always decodes every position and takes dense
labels; ours decodes only the masked ones. Prints a table, writes JSON and a PNG of time vs length.

    python benchmarks/head_to_head.py --lengths 512,1024,2048,4096 --batch-size 4
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


def measure(impl: str, mode: str, length: int, batch_size: int, steps: int, device: str) -> dict:
    import tempfile

    import torch

    from common import dense_labels, peak_memory_bytes, synthetic_batch
    from perceiver_lm import PerceiverConfig, PerceiverLM
    from perceiver_lm.interop import export_to_transformers
    from perceiver_lm.training import masked_lm_loss

    torch.manual_seed(0)
    model = PerceiverLM(PerceiverConfig(max_seq_len=length, **SHAPE))
    if impl == "transformers":
        import transformers

        folder = Path(tempfile.mkdtemp()) / "hf"
        export_to_transformers(model, folder)
        model = transformers.PerceiverForMaskedLM.from_pretrained(folder)
    model = model.to(device).train(mode == "train")
    batch = {k: v.to(device) for k, v in synthetic_batch(batch_size, length).items()}
    labels = dense_labels(batch, length).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> None:
        if mode == "train":
            if impl == "ours":
                loss = masked_lm_loss(model(batch["input_ids"], query_positions=batch["query_positions"]).logits, batch["labels"])
            else:
                loss = model(inputs=batch["input_ids"], labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                if impl == "ours":
                    model(batch["input_ids"], query_positions=batch["query_positions"])
                else:
                    model(inputs=batch["input_ids"])

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    seconds = (time.perf_counter() - start) / steps
    return {"impl": impl, "mode": mode, "length": length, "batch_size": batch_size, "seconds": seconds,
            "bytes_per_s": batch_size * length / seconds, "peak_memory_mib": peak_memory_bytes(device) / 2**20,
            "threads": torch.get_num_threads()}


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for impl in ("ours", "transformers"):
        for mode, style in (("train", "-"), ("infer", "--")):
            pts = sorted((r["length"], r["seconds"]) for r in rows if r["impl"] == impl and r["mode"] == mode)
            ax.plot(*zip(*pts), style, marker="o", label=f"{impl} {mode}")
    ax.set(xscale="log", yscale="log", xlabel="input bytes", ylabel="seconds per batch", title="Perceiver MLM: ours vs transformers")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/bench/head_to_head.json")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, mode, length = args.one
        print(json.dumps(measure(impl, mode, int(length), args.batch_size, args.steps, args.device)))
        return
    rows = []
    for length in map(int, args.lengths.split(",")):
        for mode in ("train", "infer"):
            for impl in ("ours", "transformers"):
                cmd = [sys.executable, __file__, "--one", impl, mode, str(length), "--batch-size", str(args.batch_size),
                       "--steps", str(args.steps), "--device", args.device]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    print(f"{impl} {mode} {length}: failed ({done.stderr.strip().splitlines()[-1]})", file=sys.stderr)
                    continue
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'length':>6} {'mode':>5} {'ours B/s':>10} {'hf B/s':>10} {'speed-up':>8} {'ours MiB':>9} {'hf MiB':>8} {'mem ratio':>9}")
    for length in sorted({r["length"] for r in rows}):
        for mode in ("train", "infer"):
            pair = {r["impl"]: r for r in rows if r["length"] == length and r["mode"] == mode}
            if len(pair) == 2:
                o, h = pair["ours"], pair["transformers"]
                print(f"{length:>6} {mode:>5} {o['bytes_per_s']:>10,.0f} {h['bytes_per_s']:>10,.0f} {o['bytes_per_s'] / h['bytes_per_s']:>7.2f}x "
                      f"{o['peak_memory_mib']:>9,.0f} {h['peak_memory_mib']:>8,.0f} {o['peak_memory_mib'] / h['peak_memory_mib']:>8.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "device": args.device, "shape": SHAPE, "results": rows}, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
