"""Model cards: the README.md every saved model folder gets, in the Hugging Face Hub's convention
(YAML metadata between ``---`` lines, then prose): what the model is, how it was trained, how to load it."""

from __future__ import annotations

import math
from typing import Any

from perceiver_lm.config import PRESETS, MultiTaskConfig, PerceiverConfig


def _preset_name(config: PerceiverConfig) -> str | None:
    return next((name for name, preset in PRESETS.items() if preset == config), None)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _training_lines(training: dict[str, Any]) -> list[str]:
    """Bullet lines on how the model was trained, from what the training loop knows."""
    options = training.get("options", {})
    lines = []
    if training.get("source"):
        lines.append(f"- Source: {training['source']}")
    lines += training.get("card", [])  # what the job says about its data and its start
    if "step" in training:
        minutes = float(training.get("elapsed_s") or 0.0) / 60
        processes = training.get("num_processes", 1)
        lines.append(
            f"- Optimizer steps: {training['step']:,} ({minutes:.1f} min of training, {processes} process(es))"
        )
    keys = (
        "optimizer",
        "lr",
        "batch_size",
        "grad_accum",
        "window",
        "mask_unit",
        "mask_rate",
        "mixed_precision",
        "seed",
    )
    shown = [f"{k} {options[k]}" for k in keys if options.get(k) is not None]
    if shown:
        lines.append(f"- Options: {', '.join(shown)}")
    if training.get("eval"):
        lines.append("- Last evaluation: " + ", ".join(f"{k} {_number(v)}" for k, v in training["eval"].items()))
    return lines


def render(
    config: PerceiverConfig, tasks: MultiTaskConfig | None, parameters: int, training: dict[str, Any] | None
) -> str:
    """The model card of a model folder.

    Args:
        config: the model's shape.
        tasks: the task heads of a fine-tuned classifier, or None for a masked LM.
        parameters: number of parameters.
        training: what the run knows about how it was trained (options, step, elapsed_s, eval,
            num_processes, and ``card``: the job's own lines on its data and start; or source for a
            converted model); None when nothing is known.
    """
    preset = _preset_name(config)
    shape = f"the `{preset}` preset" if preset else "a custom shape (see config.json)"
    if tasks is None:
        kind, pipeline, cls = "byte-level Perceiver IO masked language model", "fill-mask", "PerceiverLM"
        tags = ["perceiver-io", "byte-level", "masked-lm"]
    else:
        names = ", ".join(t.name for t in tasks.tasks)
        kind = f"byte-level Perceiver IO classifier with one learned query per task ({names})"
        pipeline, cls = "text-classification", "PerceiverClassifier"
        tags = ["perceiver-io", "byte-level", "text-classification"]
    front = ["---", "library_name: perceiver-lm", f"pipeline_tag: {pipeline}", "tags:"]
    front += [f"- {tag}" for tag in tags]
    options = (training or {}).get("options", {})
    if options.get("dataset"):
        front += ["datasets:", f"- {options['dataset']}"]
    front.append("---")
    body = [
        "",
        f"# {kind[0].upper()}{kind[1:]}",
        "",
        f"Reads raw UTF-8 bytes (no tokenizer). Shape: {shape}; {parameters:,} parameters, "
        f"{config.num_latents} latents x {config.d_latents}, {config.num_self_layers} processor layers, "
        f"window {config.max_seq_len} bytes, byte encoder `{config.byte_encoder}`.",
        "",
        "## Training",
        "",
        *(_training_lines(training) if training else ["- Not recorded (saved with `save_pretrained`)."]),
        "",
        "## Use",
        "",
        "```python",
        f"from perceiver_lm.model import {cls}",
        "",
        f'model = {cls}.from_pretrained("path/to/this/folder")',
        "```",
        "",
        "Files: `config.json` (shape), `model.safetensors` (weights)"
        + (", `tasks.json` (task heads)" if tasks is not None else "")
        + "; written by perceiver-lm, loaded without pickle.",
        "",
    ]
    return "\n".join(front + body)
