"""Learning curves from a run's ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.user_files import MiB, parse_json, read_bounded
from perceiver_lm.validation import matches, shown

METRICS_FILE_LIMIT = 256 * MiB  # a metrics.jsonl line per logged step: millions of them


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not os.path.lexists(path):
        raise PerceiverLMError(f"{path}: no metrics file (is {run_dir} a pretraining run directory?)")
    records = []
    data = read_bounded(path, METRICS_FILE_LIMIT, str(path), "metrics file")
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                record = parse_json(line, f"{path}:{number}")
            except (json.JSONDecodeError, RecursionError):
                raise PerceiverLMError(f"{path}:{number}: not a JSON record") from None
            if not isinstance(record, dict) or not matches(int, record.get("step")):
                raise PerceiverLMError(
                    f"{path}:{number}: not a metrics record (expected an object with an integer step)"
                )
            records.append(record)
    return records


def plot_curve(
    run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None, x: str = "minutes"
) -> Path:
    """Plot validation bits per masked byte (and accuracy) against training minutes or steps for runs.

    Args:
        run_dirs: pretraining run directories (each with a ``metrics.jsonl``).
        out: PNG file to write.
        labels: legend label per run (default: the folder names).
        x: "minutes" (compare speed) or "steps" (compare learning per step, e.g. fp32 vs bf16).
    """
    if x not in ("minutes", "steps"):
        raise PerceiverLMError(f"--x {shown(x)}: expected minutes or steps")
    # The object API draws without pyplot, so a notebook's backend is left alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    ax_bits, ax_acc = fig.subplots(1, 2)
    for index, run in enumerate(run_dirs):
        evals = [r for r in read_metrics(run) if "eval_bits_per_byte" in r]
        needed = ("elapsed_s", "eval_bits_per_byte", "eval_accuracy")
        if any(not matches(float, r.get(key)) for r in evals for key in needed):
            raise PerceiverLMError(
                f"{Path(run) / 'metrics.jsonl'}: an evaluation record lacks a number for {', '.join(needed)}"
            )
        if not evals:
            raise PerceiverLMError(f"{run}: no evaluations recorded yet")
        xs = [r["elapsed_s"] / 60 if x == "minutes" else r["step"] for r in evals]
        label = labels[index] if labels else Path(run).name
        ax_bits.plot(xs, [r["eval_bits_per_byte"] for r in evals], marker="o", ms=3, label=label)
        ax_acc.plot(xs, [r["eval_accuracy"] for r in evals], marker="o", ms=3, label=label)
    ax_bits.axhline(4.85, color="grey", ls="--", lw=1, label="unigram plateau (word masking)")
    xlabel = "training minutes" if x == "minutes" else "optimizer steps"
    ax_bits.set(xlabel=xlabel, ylabel="validation bits per masked byte", title="Masked-byte loss")
    ax_acc.set(xlabel=xlabel, ylabel="masked-byte accuracy", title="Masked-byte accuracy")
    for ax in (ax_bits, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
