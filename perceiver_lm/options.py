"""Pretraining options and the helpers every options dataclass uses; no torch import, so that the CLI
builds its commands (and `--help` answers) without loading the model."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.validation import check_fields, check_instance, check_range

MAX_SEED = 2**32 - 1  # numpy's legacy seeding (which Accelerate's set_seed calls) takes no more
MAX_WORKERS = 256
MAX_LR = 1000.0  # far above any rate that trains; larger ones overflow float32 in the optimizer's update
PRECISION_HELP = (
    "auto: bf16 autocast on GPUs and CPUs with native bf16 (Ampere and later; AVX512-BF16 or AMX), fp16 on older "
    "GPUs, fp32 on other CPUs; or no, bf16, fp16 (GPU only)."
)


def option(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


def flag(name: str) -> str:
    """The command-line option of an options field: ``batch_size`` -> ``--batch-size``."""
    return f"--{name.replace('_', '-')}"


def check_choices(options: Any) -> None:
    """Refuse an options dataclass whose Literal-typed field holds a value outside its choices, or
    any field whose value is not of its type (options built in code, not only from files)."""
    for name, hint in typing.get_type_hints(type(options)).items():
        if typing.get_origin(hint) is Literal and getattr(options, name) not in typing.get_args(hint):
            raise PerceiverLMError(
                f"{flag(name)} must be one of {', '.join(typing.get_args(hint))}; got {getattr(options, name)!r}"
            )
    check_instance(options, flag)


def options_from_dict(cls: type, data: dict[str, Any], source: str, kind: str) -> Any:
    """Build an options dataclass from a dict (a config file), naming unknown keys and mistyped values."""
    return cls(**check_fields(cls, data, source, f"{kind} option"))


@dataclass(frozen=True)
class TrainingOptions:
    """Pretraining options; each field is one ``perceiver-lm pretrain`` option of the same name."""

    data: list[str] = option(
        [], "Text files, globs or folders to pretrain on (raw bytes, memory-mapped). Default: the built-in corpus."
    )
    dataset: str | None = option(None, "Hugging Face dataset name to pretrain on instead of --data.")
    dataset_config: str | None = option(None, "Configuration name of --dataset.")
    dataset_split: str = option("train", "Split of --dataset.")
    text_column: str = option("text", "Text column of --dataset.")
    streaming: bool = option(False, "Stream --dataset instead of loading it (for corpora larger than memory or disk).")
    val_data: list[str] = option(
        [], "Validation files/globs/folders; default: carve --val-fraction off the end of the corpus."
    )
    val_fraction: float = option(0.005, "Share of the corpus held out for validation (at least 8 windows).")
    output_dir: str = option("runs/pretrain", "Run directory: checkpoints, metrics.jsonl, TensorBoard logs.")
    init_from: str | None = option(
        None,
        "Start from this masked LM's weights (a checkpoint, a run directory, or a transformers PerceiverForMaskedLM "
        "folder) with a fresh optimizer, schedule and data order: continued, domain-adaptive pretraining. The model "
        "shape is the checkpoint's.",
    )
    window: int | None = option(None, "Bytes per training window; default: the model's max_seq_len.")
    batch_size: int = option(4, "Windows per batch per process.")
    grad_accum: int = option(1, "Gradient accumulation steps per optimizer step.")
    max_steps: int = option(5000, "Optimizer steps to train (the cosine schedule spans them).")
    max_minutes: float | None = option(None, "Stop (and checkpoint) after this many minutes of training.")
    optimizer: Literal["adamw", "lamb"] = option("adamw", "Optimizer: adamw or lamb.")
    lr: float = option(5e-4, "Peak learning rate.")
    weight_decay: float = option(0.01, "Decoupled weight decay on weight matrices.")
    warmup_steps: int = option(100, "Linear warm-up steps.")
    min_lr_ratio: float = option(0.1, "Final learning rate as a fraction of --lr (cosine decay).")
    clip_norm: float = option(1.0, "Clip the global gradient norm to this (0 disables).")
    mask_rate: float = option(0.15, "Fraction of units (words or bytes) masked per window.")
    mask_unit: Literal["word", "byte"] = option("word", "Masking unit: whitespace-delimited words or single bytes.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = option("auto", PRECISION_HELP)
    eval_every: int = option(200, "Evaluate on the validation split every N steps (and at the end).")
    eval_windows: int = option(64, "Validation windows per evaluation (spread over the split).")
    save_every: int = option(500, "Write a checkpoint every N steps (and at the end).")
    keep_checkpoints: int = option(2, "How many recent checkpoints to keep.")
    log_every: int = option(10, "Log training loss every N steps.")
    seed: int = option(0, "Seed for initialisation, data order, masking and dropout.")
    resume: bool = option(False, "Continue from the latest checkpoint in --output-dir, same data order.")
    overwrite: bool = option(
        False,
        "Start over in a non-empty --output-dir: its earlier checkpoints and metrics.jsonl are replaced (other files "
        "are kept).",
    )
    num_workers: int | None = option(
        None, "DataLoader worker processes; default: 4 on a GPU (data preparation overlaps the step), 0 on a CPU."
    )
    gradient_checkpointing: bool = option(False, "Recompute processor activations in backward (saves memory).")
    report_to: Literal["auto", "tensorboard", "none"] = option(
        "auto", "Tracker: TensorBoard when installed (auto), or none."
    )
    cpu: bool = option(False, "Train on the CPU even when a GPU is present.")

    def __post_init__(self) -> None:
        check_choices(self)
        positive = (
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_every",
            "eval_windows",
            "save_every",
            "keep_checkpoints",
            "log_every",
            "lr",
        )
        for name in positive:
            check_range(flag(name), getattr(self, name), 0, low_open=True)
        check_range("--lr", self.lr, 0, MAX_LR, low_open=True)
        for name in ("weight_decay", "warmup_steps", "clip_norm", "max_minutes"):
            check_range(flag(name), getattr(self, name), 0)
        check_range("--mask-rate", self.mask_rate, 0, 1, low_open=True, high_open=True)
        check_range("--val-fraction", self.val_fraction, 0, 1, high_open=True)
        check_range("--min-lr-ratio", self.min_lr_ratio, 0, 1)
        check_range("--seed", self.seed, 0, MAX_SEED)
        check_range("--num-workers", self.num_workers, 0, MAX_WORKERS)
        check_range("--window", self.window, 2)
        if self.resume and self.overwrite:
            raise PerceiverLMError(
                "give --resume (continue the run in --output-dir) or --overwrite (start over there), not both"
            )
        if self.data and self.dataset:
            raise PerceiverLMError("give either --data or --dataset, not both")
        if self.streaming and not self.dataset:
            raise PerceiverLMError("--streaming applies to --dataset (local --data files are memory-mapped already)")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> TrainingOptions:
        return options_from_dict(cls, data, source, "training")


@dataclass(frozen=True)
class EvalOptions:
    """Held-out scoring options; each field is one ``perceiver-lm evaluate`` option of the same name."""

    data: list[str] = option([], "Text files, globs or folders to score (raw bytes).")
    dataset: str | None = option(None, "Hugging Face dataset name to score instead of --data.")
    dataset_config: str | None = option(None, "Configuration name of --dataset.")
    dataset_split: str = option("test", "Split of --dataset.")
    text_column: str = option("text", "Text column of --dataset.")
    window: int | None = option(None, "Bytes per window; default: the model's max_seq_len (or the whole text).")
    mask_unit: Literal["word", "byte"] = option("word", "Masking unit: whitespace-delimited words or single bytes.")
    mask_rate: float = option(0.15, "Fraction of units (words or bytes) masked per window.")
    seed: int = option(0, "Seed of the masks (and the noise): the same seed scores the same bytes.")
    max_windows: int = option(512, "Score at most this many windows, spread evenly over the text (0: all).")
    batch_size: int = option(8, "Windows per batch per process.")
    noise: list[str] = option(
        [],
        "Corrupt the text first, KIND:RATE, repeatable (drop, add, mutate, repeat, uppercase, random_case, "
        "antspeak; e.g. drop:0.1).",
    )
    json: str | None = option(None, "Also write the report as JSON to this file (- for standard output).")
    overwrite: bool = option(False, "Replace an existing --json file.")
    mixed_precision: Literal["auto", "no", "bf16"] = option(
        "no", "fp32 by default, so that numbers compare across machines; auto or bf16 for speed."
    )
    cpu: bool = option(False, "Score on the CPU even when a GPU is present.")

    def __post_init__(self) -> None:
        check_choices(self)
        check_range("--batch-size", self.batch_size, 0, low_open=True)
        check_range("--max-windows", self.max_windows, 0)
        check_range("--mask-rate", self.mask_rate, 0, 1, low_open=True, high_open=True)
        check_range("--seed", self.seed, 0, MAX_SEED)
        check_range("--window", self.window, 2)
        if self.data and self.dataset:
            raise PerceiverLMError("give either --data or --dataset, not both")
