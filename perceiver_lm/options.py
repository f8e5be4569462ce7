"""Pretraining options and the helpers every options dataclass uses; no torch import, so that the CLI
builds its commands (and `--help` answers) without loading the model."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from perceiver_lm.config import PRESETS, SIZE_LIMITS, PerceiverConfig, model_config
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.user_files import OPTIONS_FILE_LIMIT, parse_json, parse_toml, read_bounded
from perceiver_lm.validation import INTEGER_TEXT, check_fields, check_range, expected, matches, parse_int, shown

MAX_SEED = 2**32 - 1  # numpy's legacy seeding (which Accelerate's set_seed calls) takes no more
MAX_WORKERS = 256
# Sane upper bounds of the integer options, so that a typo (or 2**70 in a config file) is refused at once
# instead of starting a run without end or overflowing an int64 tensor.
MAX_STEPS = 10**9  # optimizer steps, and the step intervals and counts (warm-up, eval/save/log every N)
MAX_BATCH = 1 << 20  # examples or windows per batch per process; gradient accumulation steps
MAX_COUNT = 2**31 - 1  # examples, windows, checkpoints kept: counts that index arrays
MAX_WINDOW = SIZE_LIMITS["max_seq_len"]  # bytes per window: no model reads more
MAX_HEADS = 1 << 16  # --head, --top: far above any model's heads and latents
# The cap of each integer option of that name, in every command (`check_range`'s ``cap``).
CAPS = {
    **dict.fromkeys(
        ("max_steps", "warmup_steps", "eval_every", "save_every", "log_every", "freeze_body_steps"), MAX_STEPS
    ),
    **dict.fromkeys(("batch_size", "eval_batch_size", "grad_accum"), MAX_BATCH),
    **dict.fromkeys(
        ("eval_windows", "max_windows", "keep_checkpoints", "max_train_examples", "max_eval_examples"), MAX_COUNT
    ),
}
MAX_LR = 1000.0  # far above any rate that trains; larger ones overflow float32 in the optimizer's update
Precision = Literal["auto", "no", "bf16", "fp16"]  # the one choice list of every --mixed-precision
PRECISION_HELP = (
    "auto: bf16 autocast on GPUs and CPUs with native bf16 (Ampere and later; AVX512-BF16 or AMX), fp16 on older "
    "GPUs, fp32 on other CPUs; or no, bf16, fp16 (GPU only)."
)


def option(default: Any, help: str, *, data_order: bool = False, **kwargs: Any) -> Any:
    """One options field: its default, its ``--help`` text, and whether it fixes the run's data order.

    ``data_order=True`` marks a field that decides which examples each step sees (or what a checkpoint's
    state means): ``--resume`` refuses to continue a run whose checkpoint was written with another value.
    ``files=True`` marks one that names local files: ``--resume`` compares what they hold (`data_fingerprints`),
    not how their paths are spelt.
    """
    metadata = {"help": help, "data_order": data_order, **kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def precision_option(default: str = "auto") -> Any:
    """The ``mixed_precision`` field of every options dataclass (typed `Precision`): one help text.

    Scoring defaults to "no" (fp32) so that its numbers compare across machines; training to "auto".
    """
    why = "" if default == "auto" else " Not auto here, so that the numbers compare across machines."
    return option(default, PRECISION_HELP + why)


def argument(help: str, default: Any = MISSING) -> Any:
    """A positional command-line argument (``perceiver-lm info CHECKPOINT``); required without a default."""
    if default is MISSING:
        return field(metadata={"help": help, "argument": True})
    return option(default, help, argument=True)


def options_record(options: Any) -> dict[str, Any]:
    """An options dataclass as plain JSON values (paths as strings), as checkpoints and summaries store it."""

    def plain(value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(options).items()}


def data_order_fields(options_class: type) -> tuple[str, ...]:
    """The fields of an options dataclass marked ``data_order=True``, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(options_class) if f.metadata.get("data_order"))


def flag(name: str) -> str:
    """The command-line option of an options field: ``batch_size`` -> ``--batch-size``."""
    return f"--{name.replace('_', '-')}"


def _path_hint(hint: Any) -> tuple[bool, bool] | None:
    """(a list?, None allowed?) for Path, Path | None and list[Path] hints; None for any other hint."""
    args = typing.get_args(hint)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)] if optional else [hint]
    if inner == [Path]:
        return False, optional
    if len(inner) == 1 and typing.get_origin(inner[0]) is list and typing.get_args(inner[0]) == (Path,):
        return True, optional
    return None


def _as_path(name: str, value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise PerceiverLMError(f"{flag(name)} must be a path, got {shown(value)}")
    return Path(value)


def check_choices(options: Any) -> None:
    """Refuse an options dataclass whose Literal-typed field holds a value outside its choices, or
    any field whose value is not of its type (options built in code, not only from files). Path
    fields take any str or os.PathLike and hold a Path afterwards."""
    for name, hint in typing.get_type_hints(type(options)).items():
        value = getattr(options, name)
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            raise PerceiverLMError(
                f"{flag(name)} must be one of {', '.join(typing.get_args(hint))}; got {shown(value)}"
            )
        path = _path_hint(hint)
        if path is not None and not (value is None and path[1]):
            if path[0] and not isinstance(value, (list, tuple)):
                raise PerceiverLMError(f"{flag(name)} must be a list of paths, got {shown(value)}")
            paths = [_as_path(name, v) for v in value] if path[0] else _as_path(name, value)
            object.__setattr__(options, name, paths)  # frozen dataclasses too
        elif path is None and not matches(hint, value):
            raise PerceiverLMError(f"{flag(name)} must be {expected(hint)}, got {shown(value)}")


def read_options_file(path: str | Path, option_name: str = "--config") -> dict[str, Any]:
    """The table of options in a JSON or TOML (``.toml``) file, or one line (naming ``option_name``) saying why
    it cannot be read. A regular file of at most `OPTIONS_FILE_LIMIT` bytes (`perceiver_lm.user_files`)."""
    path = Path(path)
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    label = f"{option_name} {path}"
    raw = read_bounded(path, OPTIONS_FILE_LIMIT, label, f"{kind} file of options")
    try:
        text = raw.decode("utf-8")
        data = parse_toml(text, label) if kind == "TOML" else parse_json(text, label)
    except UnicodeDecodeError as err:
        raise PerceiverLMError(
            f"{option_name} {path}: not UTF-8 text (byte {err.start}); expected a {kind} file of options"
        ) from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise PerceiverLMError(f"{option_name} {path}: not valid {kind} ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise PerceiverLMError(f"{option_name} {path}: expected a {kind} table of options, got {type(data).__name__}")
    return data


def options_from_dict(cls: type, data: dict[str, Any], source: str, kind: str) -> Any:
    """Build an options dataclass from a dict (a config file), naming unknown keys and mistyped values."""
    return cls(**check_fields(cls, data, source, f"{kind} option"))


@dataclass(frozen=True)
class TrainingOptions:
    """Pretraining options; each field is one ``perceiver-lm pretrain`` option of the same name."""

    data: list[str] = option(
        [],
        "Text files, globs or folders to pretrain on (raw bytes, read from disk a window at a time). Default: the "
        "built-in corpus.",
        data_order=True,
        files=True,
    )
    dataset: str | None = option(None, "Hugging Face dataset name to pretrain on instead of --data.", data_order=True)
    dataset_config: str | None = option(None, "Configuration name of --dataset.", data_order=True)
    dataset_split: str = option("train", "Split of --dataset.", data_order=True)
    text_column: str = option("text", "Text column of --dataset.", data_order=True)
    streaming: bool = option(
        False, "Stream --dataset instead of loading it (for corpora larger than memory or disk).", data_order=True
    )
    val_data: list[str] = option(
        [],
        "Validation files/globs/folders; default: carve --val-fraction off the end of the corpus.",
        data_order=True,
        files=True,
    )
    val_fraction: float = option(
        0.005, "Share of the corpus held out for validation (at least 8 windows).", data_order=True
    )
    output_dir: str = option("runs/pretrain", "Run directory: checkpoints, metrics.jsonl, TensorBoard logs.")
    init_from: str | None = option(
        None,
        "Start from this masked LM's weights (a checkpoint, a run directory, or a transformers PerceiverForMaskedLM "
        "folder) with a fresh optimizer, schedule and data order: continued, domain-adaptive pretraining. The model "
        "shape is the checkpoint's.",
        data_order=True,
    )
    window: int | None = option(None, "Bytes per training window; default: the model's max_seq_len.", data_order=True)
    batch_size: int = option(4, "Windows per batch per process.", data_order=True)
    grad_accum: int = option(1, "Gradient accumulation steps per optimizer step.", data_order=True)
    max_steps: int = option(5000, "Optimizer steps to train (the cosine schedule spans them).")
    max_minutes: float | None = option(None, "Stop (and checkpoint) after this many minutes of training.")
    optimizer: Literal["adamw", "lamb"] = option("adamw", "Optimizer: adamw or lamb.")
    lr: float = option(5e-4, "Peak learning rate.")
    weight_decay: float = option(0.01, "Decoupled weight decay on weight matrices.")
    warmup_steps: int = option(100, "Linear warm-up steps.")
    min_lr_ratio: float = option(0.1, "Final learning rate as a fraction of --lr (cosine decay).")
    clip_norm: float = option(1.0, "Clip the global gradient norm to this (0 disables).")
    mask_rate: float = option(0.15, "Fraction of units (words or bytes) masked per window.", data_order=True)
    mask_unit: Literal["word", "byte"] = option(
        "word", "Masking unit: whitespace-delimited words or single bytes.", data_order=True
    )
    mixed_precision: Precision = precision_option()
    compile: bool = option(
        False,
        "torch.compile the model (inductor, through Accelerate, dynamic shapes); checkpoints are the same plain "
        "model. On this project's 2-core CPU `small` pretraining ran no faster (0.96-1.02x) after 20-60 s of "
        "compiling; measure on yours (benchmarks/pretrain_throughput.py --compile off,on).",
    )
    eval_every: int = option(200, "Evaluate on the validation split every N steps (and at the end).")
    eval_windows: int = option(64, "Validation windows per evaluation (spread over the split).")
    save_every: int = option(500, "Write a checkpoint every N steps (and at the end).")
    keep_checkpoints: int = option(2, "How many recent checkpoints to keep.")
    log_every: int = option(10, "Log training loss every N steps.")
    seed: int = option(0, "Seed for initialisation, data order, masking and dropout.", data_order=True)
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
            check_range(flag(name), getattr(self, name), 0, low_open=True, cap=CAPS.get(name))
        check_range("--lr", self.lr, 0, MAX_LR, low_open=True)
        for name in ("weight_decay", "warmup_steps", "clip_norm", "max_minutes"):
            check_range(flag(name), getattr(self, name), 0, cap=CAPS.get(name))
        check_range("--mask-rate", self.mask_rate, 0, 1, low_open=True, high_open=True)
        check_range("--val-fraction", self.val_fraction, 0, 1, high_open=True)
        check_range("--min-lr-ratio", self.min_lr_ratio, 0, 1)
        check_range("--seed", self.seed, 0, MAX_SEED)
        check_range("--num-workers", self.num_workers, 0, MAX_WORKERS)
        check_range("--window", self.window, 2, cap=MAX_WINDOW)
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
    mixed_precision: Precision = precision_option("no")
    compile: bool = option(
        False, "torch.compile the model (inductor): the same numbers; the first batches wait for the compile."
    )
    cpu: bool = option(False, "Score on the CPU even when a GPU is present.")

    def __post_init__(self) -> None:
        check_choices(self)
        check_range("--batch-size", self.batch_size, 0, low_open=True, cap=MAX_BATCH)
        check_range("--max-windows", self.max_windows, 0, cap=MAX_COUNT)
        check_range("--mask-rate", self.mask_rate, 0, 1, low_open=True, high_open=True)
        check_range("--seed", self.seed, 0, MAX_SEED)
        check_range("--window", self.window, 2, cap=MAX_WINDOW)
        if self.data and self.dataset:
            raise PerceiverLMError("give either --data or --dataset, not both")


@dataclass(frozen=True)
class PretrainModelOptions:
    """``perceiver-lm pretrain`` beyond `TrainingOptions`: the model's shape and a file of options."""

    preset: str | None = option(None, f"Model preset: {', '.join(PRESETS)} (default: small).")
    config: Path | None = option(
        None,
        "JSON/TOML file of training options, with optional `preset` and a `model` table of config overrides; "
        "options given here win.",
    )
    model: dict[str, Any] | None = option(None, "Model config fields to override (a config file's [model]).", cli=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, (dict, type(None))) or not isinstance(self.preset, (str, type(None))):
            raise PerceiverLMError(
                f"{self.source}: `model` must be a table of model config fields and `preset` a string"
            )
        if self.config is not None:
            object.__setattr__(self, "config", _as_path("config", self.config))

    @property
    def source(self) -> str:
        return f"--config {self.config}" if self.config is not None else "model overrides"

    def config_for(self, options: TrainingOptions) -> PerceiverConfig | None:
        """The model config to pretrain (None with ``--init-from``: the shape is the checkpoint's)."""
        if options.init_from and (self.preset or self.model):
            raise PerceiverLMError(
                f"--init-from {options.init_from}: the model's shape is the checkpoint's; leave out --preset and the "
                "config file's `preset`/[model]"
            )
        return None if options.init_from else model_config(self.preset, self.model, self.source)


@dataclass(frozen=True)
class EvalCheckpoint:
    """What ``perceiver-lm evaluate`` scores (its `EvalOptions` say how)."""

    checkpoint: Path = argument("Pretrained checkpoint or run directory (its newest checkpoint).")

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class FillMaskOptions:
    """``perceiver-lm fill-mask``: `perceiver_lm.inference.fill_mask` on a checkpoint."""

    checkpoint: Path = argument("Checkpoint or run directory.")
    text: str = argument("Text with [MASK] (one byte) or [MASK*N] (N bytes) marks.")
    top_k: int = option(0, "Show the k most likely bytes per masked position.")

    def __post_init__(self) -> None:
        check_choices(self)
        check_range("--top-k", self.top_k, 0)  # at most 256 (the byte values): fill_mask says so


@dataclass(frozen=True)
class InfoOptions:
    """``perceiver-lm info``: `perceiver_lm.checkpoint.describe`."""

    checkpoint: Path = argument("Checkpoint or run directory.")

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class ConvertOptions:
    """``perceiver-lm convert``: import from or export to transformers' PerceiverForMaskedLM."""

    out: Path = argument("Folder to write.")
    from_transformers: str | None = option(None, "transformers PerceiverForMaskedLM folder or Hub id to import.")
    to_transformers: Path | None = option(None, "perceiver-lm checkpoint or run directory to export.")
    overwrite: bool = option(
        False, "Replace an earlier conversion in OUT (a folder holding anything else is never replaced)."
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if (self.from_transformers is None) == (self.to_transformers is None):
            raise PerceiverLMError("give exactly one of --from-transformers SOURCE or --to-transformers CHECKPOINT")


@dataclass(frozen=True)
class PlotOptions:
    """``perceiver-lm plot``: `perceiver_lm.viz.plotting.plot_curve`."""

    runs: list[Path] = argument("One or more pretraining run directories.")
    out: Path = option(Path("curve.png"), "PNG file to write.")
    label: list[str] = option([], "Legend label per run (default: the folder names).")
    x: str = option("minutes", "x axis: minutes (speed) or steps (learning per step).")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.label and len(self.label) != len(self.runs):
            raise PerceiverLMError(f"--label given {len(self.label)} times for {len(self.runs)} run(s)")


SPAN_FORMAT = "expected FIRST:END byte positions, e.g. 0:160"


@dataclass(frozen=True)
class AttentionOptions:
    """``perceiver-lm attention``: `perceiver_lm.viz.attention_render.attention_report`."""

    checkpoint: Path = argument("Checkpoint or run directory (masked LM or GLUE-fine-tuned).")
    text: str | None = argument("Text to read (or use --file).", None)
    file: Path | None = option(None, "Read the text from this UTF-8 file instead.")
    head: int | None = option(None, "Summarise one head (default: every head; -1: the mean of the heads).")
    top: int = option(3, "Latents to print per kind.")
    query: str | None = option(
        None,
        "Decoder query to show: a byte position (masked LM), a task name (fine-tuned model), or TASK:N for word N "
        "(from 0) of a tagging task (the text's words are split at whitespace, as the tagger reads them).",
    )
    png: Path | None = option(None, "Write a heatmap + example latents PNG here.")
    span: str | None = option(
        None, "Bytes FIRST:END the PNG heatmap zooms to (default: all of a short text, else 0:192)."
    )
    html: Path | None = option(None, "Write a self-contained interactive HTML page here.")
    json: Path | None = option(None, "Write the per-latent summaries as JSON here.")

    def __post_init__(self) -> None:
        check_choices(self)
        if (self.text is None) == (self.file is None):
            raise PerceiverLMError("give the text as an argument or with --file, not both")
        check_range("--top", self.top, 0, cap=MAX_HEADS)
        check_range("--head", self.head, -1, MAX_HEADS)
        _ = self.zoom  # refuse a malformed --span or --query before any work
        _ = self.decoder_query

    @property
    def zoom(self) -> tuple[int, int] | None:
        """``--span`` as (first, end) byte positions, or None for the default view."""
        if self.span is None:
            return None
        parts = self.span.split(":")
        try:
            if len(parts) != 2:
                raise PerceiverLMError(SPAN_FORMAT)
            first, end = (parse_int(x, "--span") for x in parts)
        except PerceiverLMError:
            raise PerceiverLMError(f"--span {shown(self.span)}: {SPAN_FORMAT} (ASCII digits 0-9)") from None
        return first, end

    @property
    def decoder_query(self) -> int | str | tuple[str, int] | None:
        """``--query`` as a byte position (ASCII digits, as every integer option takes), a task name (an
        identifier, as every task name is) or (task name, word index) for ``TASK:N``; anything else, such as
        ``²``, is refused."""
        query = self.query
        if query is None or (query.isidentifier() and not query[0].isdigit()):
            return query
        task, colon, word = query.partition(":")
        if colon and task.isidentifier() and INTEGER_TEXT.fullmatch(word):
            return task, parse_int(word, "--query")
        if not INTEGER_TEXT.fullmatch(query.strip(" \t")):
            raise PerceiverLMError(
                f"--query {shown(query)}: expected a byte position (ASCII digits 0-9), a task name or TASK:WORD"
            )
        return parse_int(query, "--query")
