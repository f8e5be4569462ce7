"""GLUE fine-tuning options; no torch import, so that the CLI builds `glue train` without loading the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from perceiver_lm.config import PRESETS
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.noise import parse_noise
from perceiver_lm.options import MAX_LR, MAX_SEED, PRECISION_HELP, check_choices, flag, option, options_from_dict
from perceiver_lm.validation import check_range
from tasks.glue.tasks import TASKS, parse_tasks


@dataclass(frozen=True)
class GlueOptions:
    """GLUE fine-tuning options; each field is one ``perceiver-lm glue train`` option of the same name."""

    tasks: str = option("sst2", f"Comma-separated GLUE tasks to fine-tune together ({', '.join(TASKS)}) or all.")
    checkpoint: str | None = option(
        None,
        "Pretrained perceiver-lm MLM checkpoint or run directory; without it the model starts from random weights "
        "(--preset).",
    )
    preset: str = option(
        "small", f"Model shape when no --checkpoint is given (random-initialisation baseline): {', '.join(PRESETS)}."
    )
    glue_dir: str | None = option(
        None, "GLUE directory in the original layout (SST-2/train.tsv, ...); default: the nyu-mll/glue Hub dataset."
    )
    output_dir: str = option("runs/glue", "Run directory: best model, checkpoints, dev metrics JSON.")
    epochs: float = option(10.0, "Passes over the (mixed) training data (paper: 10).")
    max_steps: int | None = option(None, "Stop after this many optimizer steps (overrides --epochs for the schedule).")
    batch_size: int = option(32, "Examples per batch per process (paper grid: 16, 32, 64).")
    grad_accum: int = option(1, "Gradient accumulation steps per optimizer step.")
    lr: float | None = option(
        None,
        "Peak learning rate; default: the model shape's (FINETUNE_DEFAULTS: small 3e-4, base 5e-5 as in the paper's "
        "grid 1e-4..1e-5).",
    )
    warmup_steps: int | None = option(
        None, "Linear warm-up steps; default: the model shape's (small 60, base 200 as in the paper)."
    )
    body_lr_scale: float | None = option(
        None,
        "Learning rate of the body (embeddings, byte encoder, latents, processor) as a fraction of --lr; the task "
        "queries and heads train at --lr. Default: 1 (the pretrained recipe's value with --checkpoint).",
    )
    freeze_body_steps: int | None = option(
        None,
        "Train only the task queries and heads for the first N steps, then the whole model. Default: 0 (the "
        "pretrained recipe's value with --checkpoint).",
    )
    weight_decay: float = option(0.01, "Decoupled weight decay on weight matrices (paper: 0.01).")
    min_lr_ratio: float = option(0.0, "Final learning rate as a fraction of --lr (cosine decay).")
    clip_norm: float = option(1.0, "Clip the global gradient norm to this (0 disables).")
    max_length: int | None = option(
        None, "Truncate examples to this many bytes (specials included); default: the model's window."
    )
    max_train_examples: int | None = option(
        None, "Use at most this many training examples per task (a seeded random subset)."
    )
    max_eval_examples: int | None = option(
        None, "Evaluate on at most this many dev examples per split (the first ones)."
    )
    eval_every: int | None = option(None, "Evaluate every N steps; default: at the end of every epoch.")
    save_every: int | None = option(
        None, "Write a resumable checkpoint every N steps (and at the end); default: at every evaluation."
    )
    keep_checkpoints: int = option(1, "How many recent checkpoints to keep (best/ is kept apart).")
    log_every: int = option(10, "Log the training loss per task to metrics.jsonl every N steps.")
    eval_batch_size: int = option(64, "Examples per evaluation batch per process.")
    head_hidden: int = option(768, "Hidden width of each task's 2-layer tanh head (paper: 768).")
    length_buckets: bool = option(
        True,
        "Batch training examples of similar length together (sorted within pools of 64 batches; pools and batches "
        "shuffled).",
    )
    train_noise: list[str] = option(
        [],
        "Augment: corrupt the training texts with KIND:RATE noise (repeatable, applied together; each example once, "
        "seeded by --seed), e.g. drop:0.05.",
    )
    skip_bad_rows: bool = option(False, "Count and skip malformed TSV rows instead of stopping at the first.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = option("auto", PRECISION_HELP)
    seed: int = option(0, "Seed for the task heads, data order and dropout.")
    cpu: bool = option(False, "Train on the CPU even when a GPU is present.")
    resume: bool = option(False, "Continue from the latest checkpoint in --output-dir, same data order.")
    overwrite: bool = option(
        False,
        "Start over in a non-empty --output-dir: its earlier checkpoints, best/, dev_metrics.json and metrics.jsonl "
        "are replaced (other files are kept).",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        for name in (
            "batch_size",
            "grad_accum",
            "save_every",
            "keep_checkpoints",
            "log_every",
            "eval_batch_size",
            "head_hidden",
            "max_steps",
            "max_train_examples",
            "max_eval_examples",
            "eval_every",
            "epochs",
            "lr",
        ):
            check_range(flag(name), getattr(self, name), 0, low_open=True)
        for name in ("warmup_steps", "weight_decay", "clip_norm", "freeze_body_steps"):
            check_range(flag(name), getattr(self, name), 0)
        check_range("--min-lr-ratio", self.min_lr_ratio, 0, 1)
        check_range("--body-lr-scale", self.body_lr_scale, 0, 1000)
        check_range("--lr", self.lr, 0, MAX_LR, low_open=True)
        check_range("--seed", self.seed, 0, MAX_SEED)
        check_range("--max-length", self.max_length, 4)
        parse_tasks(self.tasks)
        for spec in self.train_noise:
            parse_noise(spec, "--train-noise")
        if self.resume and self.overwrite:
            raise PerceiverLMError(
                "give --resume (continue the run in --output-dir) or --overwrite (start over there), not both"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> GlueOptions:
        return options_from_dict(cls, data, source, "GLUE")
