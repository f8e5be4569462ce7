"""Fine-tuning options (`finetune` and its alias `glue`); no torch import, so that the CLI builds its commands
without loading the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from perceiver_lm.config import PRESETS
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.noise import parse_noise
from perceiver_lm.options import (
    CAPS,
    MAX_BATCH,
    MAX_COUNT,
    MAX_LR,
    MAX_SEED,
    Precision,
    argument,
    check_choices,
    flag,
    option,
    options_from_dict,
    precision_option,
)
from perceiver_lm.validation import check_range, parse_float, parse_int, shown
from tasks.glue.tasks import TASKS, parse_tasks

MAX_EXAMPLE_BYTES = 1 << 24  # --max-length, --window: as MultiTaskConfig takes them
MAX_HEAD_HIDDEN = 1 << 16  # --head-hidden: as wide as any model config size
MAX_EPOCHS = 1_000_000  # --epochs: passes over the data
GLUE_CAPS = {**CAPS, "head_hidden": MAX_HEAD_HIDDEN, "epochs": MAX_EPOCHS}


@dataclass(frozen=True)
class GlueOptions:
    """Fine-tuning options; each field is one ``perceiver-lm finetune train`` (``glue train``) option of the same
    name. A task of your own comes first; the GLUE tasks after it (--tasks, --glue-dir)."""

    train_file: str | None = option(
        None,
        "A task of your own: its training file (CSV, TSV, JSON, JSON Lines, Parquet, or for tagging CoNLL "
        ".conll/.conllu), read by the columns below; its labels are the values of the label column there.",
        data_order=True,
        files=True,
    )
    validation_file: str | None = option(
        None,
        "The validation file of your task, scored at every evaluation (the same columns).",
        data_order=True,
        files=True,
    )
    test_file: str | None = option(None, "The test file of your task, for `predict` (labels not needed).")
    dataset: str | None = option(
        None,
        "A task of your own from a Hugging Face dataset (a Hub name, or a local folder datasets can load) instead of "
        "files: its --train-split and --validation-split (and --test-split), read by the columns below.",
        data_order=True,
    )
    dataset_config: str | None = option(None, "Configuration name of --dataset.", data_order=True)
    train_split: str = option("train", "Training split of --dataset.", data_order=True)
    validation_split: str = option("validation", "Validation split of --dataset.", data_order=True)
    test_split: str = option("test", "Test split of --dataset, for `predict`.")
    text_column: str | None = option(
        None,
        "Your task's text column (for token-classification: a column of word lists); default: text (tokens).",
        data_order=True,
    )
    text_pair_column: str | None = option(
        None, "Your task's second text column, for a pair task (read as [CLS] text [SEP] pair [SEP]).", data_order=True
    )
    label_column: str | None = option(
        None,
        "Your task's label column: label names, scores for regression, tag lists for token-classification; default: "
        "label (tags).",
        data_order=True,
    )
    id_column: str | None = option(
        None, "Your task's example id column, written beside predictions; default: row numbers."
    )
    task_type: Literal["classification", "regression", "token-classification"] = option(
        "classification",
        "Your task's kind: a label per text (classification), a score per text (regression), or a tag per word "
        "(token-classification: part of speech, named entities; also from CoNLL column files, .conll/.conllu).",
        data_order=True,
    )
    task_name: str | None = option(
        None, "Your task's name in the model and its files; default: the training file's name.", data_order=True
    )
    task_metrics: list[str] = option(
        [],
        "Your task's metrics, repeatable (accuracy, f1, matthews, pearson, spearman; for tagging span_f1, "
        "span_precision, span_recall, token_accuracy); the first picks the best model. Default: accuracy (and f1 "
        "with two labels); pearson and spearman for regression; span_f1 ... for IOB/BIOES tags, else token_accuracy.",
        data_order=True,
    )
    task_file: str | None = option(
        None,
        "TOML or JSON file of tasks of your own: [[task]] tables whose keys are the options above without "
        "dashes or the task_ prefix (train_file, validation_file, test_file, text_column, text_pair_column, "
        "label_column, id_column, type, name, metrics); paths relative to the file.",
        data_order=True,
        files=True,
    )
    checkpoint: str | None = option(
        None,
        "Pretrained perceiver-lm MLM checkpoint or run directory; without it the model starts from random weights "
        "(--preset).",
        data_order=True,
    )
    preset: str = option(
        "small",
        f"Model shape when no --checkpoint is given (random-initialisation baseline): {', '.join(PRESETS)}.",
        data_order=True,
    )
    model: dict[str, Any] | None = option(
        None,
        "Model config fields that replace --preset's when starting from random weights (a config file's [model]).",
        cli=False,
    )
    tasks: str | None = option(
        None,
        f"Built-in GLUE tasks to fine-tune (together with yours): comma-separated ({', '.join(TASKS)}) or all; "
        "default: sst2 when no task of your own is given (--train-file, --dataset, --task-file).",
        data_order=True,
    )
    glue_dir: str | None = option(
        None,
        "GLUE directory in the original layout (SST-2/train.tsv, ...) for --tasks; default: the nyu-mll/glue Hub "
        "dataset.",
        data_order=True,
        files=True,
    )
    output_dir: str = option("runs/glue", "Run directory: best model, checkpoints, dev metrics JSON.")
    epochs: float = option(10.0, "Passes over the (mixed) training data (paper: 10).")
    max_steps: int | None = option(None, "Stop after this many optimizer steps (overrides --epochs for the schedule).")
    max_minutes: float | None = option(
        None, "Stop (evaluate and checkpoint) after this many minutes of training; the schedule still spans the steps."
    )
    batch_size: int = option(32, "Examples per batch per process (paper grid: 16, 32, 64).", data_order=True)
    grad_accum: int = option(1, "Gradient accumulation steps per optimizer step.", data_order=True)
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
        data_order=True,
    )
    embedding_lr_scale: float = option(
        1.0,
        "Learning rate of the byte and n-gram embedding tables as a multiple of the body's. Each row is a sparse "
        "feature, updated only in the steps whose text holds its byte or n-gram: from random weights on IMDb a "
        "rate 10x the body's learns several times faster (docs/finetuning.md, 'IMDb reviews').",
        data_order=True,
    )
    freeze_body_steps: int | None = option(
        None,
        "Train only the task queries and heads for the first N steps, then the whole model. Default: 0 (the "
        "pretrained recipe's value with --checkpoint).",
        data_order=True,
    )
    weight_decay: float = option(0.01, "Decoupled weight decay on weight matrices (paper: 0.01).")
    min_lr_ratio: float = option(0.0, "Final learning rate as a fraction of --lr (cosine decay).")
    clip_norm: float = option(1.0, "Clip the global gradient norm to this (0 disables).")
    max_length: int | None = option(
        None, "Truncate examples to this many bytes (specials included); default: the model's window.", data_order=True
    )
    window: int | None = option(
        None,
        "Read examples longer than this many bytes as consecutive windows of it (kept in the model); default: the "
        "model's max_seq_len. Shorter windows cost less per byte.",
    )
    max_train_examples: int | None = option(
        None, "Use at most this many training examples per task (a seeded random subset).", data_order=True
    )
    max_eval_examples: int | None = option(
        None, "Evaluate on at most this many dev examples per split (the first ones).", data_order=True
    )
    eval_every: int | None = option(None, "Evaluate every N steps; default: at the end of every epoch.")
    save_every: int | None = option(
        None, "Write a resumable checkpoint every N steps (and at the end); default: at every evaluation."
    )
    keep_checkpoints: int = option(1, "How many recent checkpoints to keep (best/ is kept apart).")
    log_every: int = option(10, "Log the training loss per task to metrics.jsonl every N steps.")
    eval_batch_size: int = option(64, "Examples per evaluation batch per process.")
    head_hidden: int = option(768, "Hidden width of each task's 2-layer tanh head (paper: 768).")
    word_features: bool = option(
        True,
        "Tagging tasks: each word's tag also reads the byte features at its first and last bytes (the word's own "
        "n-grams), beside what its positional query gathers from the latents (measured: docs/tagging.md).",
        data_order=True,
    )
    length_buckets: bool = option(
        True,
        "Batch training examples of similar length together (sorted within pools of 64 batches; pools and batches "
        "shuffled).",
        data_order=True,
    )
    train_noise: list[str] = option(
        [],
        "Augment: corrupt the training texts with KIND:RATE noise (repeatable, applied together; each example once, "
        "seeded by --seed), e.g. drop:0.05.",
        data_order=True,
    )
    skip_bad_rows: bool = option(
        False, "Count and skip malformed TSV rows instead of stopping at the first.", data_order=True
    )
    mixed_precision: Precision = precision_option()
    compile: bool = option(
        False,
        "torch.compile the model (inductor, through Accelerate, dynamic shapes); batches pad to a few lengths (4 "
        "per doubling): on a 2-core CPU SST-2 steps ran 1.24x faster after 3 minutes of compiling (seconds with a "
        "warm cache). Checkpoints are the same plain model.",
    )
    seed: int = option(0, "Seed for the task heads, data order and dropout.", data_order=True)
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
            check_range(flag(name), getattr(self, name), 0, low_open=True, cap=GLUE_CAPS.get(name))
        for name in ("warmup_steps", "weight_decay", "clip_norm", "freeze_body_steps", "max_minutes"):
            check_range(flag(name), getattr(self, name), 0, cap=GLUE_CAPS.get(name))
        check_range("--min-lr-ratio", self.min_lr_ratio, 0, 1)
        check_range("--body-lr-scale", self.body_lr_scale, 0, 1000)
        check_range("--embedding-lr-scale", self.embedding_lr_scale, 0, 1000, low_open=True)
        check_range("--lr", self.lr, 0, MAX_LR, low_open=True)
        check_range("--seed", self.seed, 0, MAX_SEED)
        check_range("--max-length", self.max_length, 4, cap=MAX_EXAMPLE_BYTES)
        check_range("--window", self.window, 16, MAX_EXAMPLE_BYTES)
        if not isinstance(self.model, (dict, type(None))):
            raise PerceiverLMError(f"`model` must be a table of model config fields, got {type(self.model).__name__}")
        if self.model and self.checkpoint is not None:
            raise PerceiverLMError(
                f"--checkpoint {self.checkpoint}: the model's shape is the checkpoint's; leave out the [model] table"
            )
        if self.tasks is not None:
            parse_tasks(self.tasks)
        if (self.train_file is None) != (self.validation_file is None):
            raise PerceiverLMError("a task of your own needs both --train-file and --validation-file")
        if self.dataset is not None and self.train_file is not None:
            raise PerceiverLMError("give a task of your own as files (--train-file ...) or as --dataset, not both")
        for spec in self.train_noise:
            parse_noise(spec, "--train-noise")
        if self.resume and self.overwrite:
            raise PerceiverLMError(
                "give --resume (continue the run in --output-dir) or --overwrite (start over there), not both"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> GlueOptions:
        return options_from_dict(cls, data, source, "GLUE")


@dataclass(frozen=True)
class GlueTrainOptions:
    """``perceiver-lm finetune train`` beyond `GlueOptions`: a file of options and the hyperparameter sweep."""

    config: Path | None = option(None, "JSON/TOML file of these options; options given here win.")
    sweep: bool = option(
        False,
        "Fine-tune once per grid point (--sweep-batch-sizes x --sweep-lrs), keep the best dev score per task.",
    )
    sweep_batch_sizes: str = option("16,32,64", "Batch sizes of the sweep grid (paper: 16,32,64).")
    sweep_lrs: str = option("1e-4,5e-5,2e-5,1e-5", "Learning rates of the sweep grid (paper: 1e-4,5e-5,2e-5,1e-5).")

    def __post_init__(self) -> None:
        check_choices(self)
        _ = self.grid  # refuse a malformed grid before any work

    @property
    def grid(self) -> tuple[list[int], list[float]]:
        """The sweep's batch sizes and learning rates."""
        try:
            sizes = [parse_int(b, "--sweep-batch-sizes") for b in self.sweep_batch_sizes.split(",")]
            lrs = [parse_float(x, "--sweep-lrs") for x in self.sweep_lrs.split(",")]
        except PerceiverLMError:
            raise PerceiverLMError(
                f"--sweep-batch-sizes/--sweep-lrs: expected comma-separated numbers (ASCII digits 0-9), got "
                f"{shown(self.sweep_batch_sizes)} / {shown(self.sweep_lrs)}"
            ) from None
        for size in sizes:
            check_range("--sweep-batch-sizes", size, 0, low_open=True, cap=MAX_BATCH)
        return sizes, lrs


@dataclass(frozen=True)
class GlueEvalOptions:
    """``perceiver-lm finetune eval``: `tasks.finetune.predict.evaluate_checkpoint`, optionally written as JSON."""

    checkpoint: Path = argument("Fine-tuned model (a run's best/ folder, or any checkpoint with tasks.json).")
    tasks: str | None = option(None, "Subset of the model's tasks to evaluate (default: all of them).")
    out: Path | None = option(None, "Write the dev metrics as JSON here.")
    batch_size: int = option(64, "Examples per evaluation batch per process.")
    max_eval_examples: int | None = option(None, "Evaluate on at most this many examples per split.")
    noise: list[str] = option(
        [],
        "Corrupt the dev texts first: KIND:RATE, repeatable, applied together in order (drop, add, mutate, repeat, "
        "uppercase, random_case, antspeak; e.g. drop:0.1).",
    )
    noise_seed: int = option(0, "Seed of --noise: the same seed corrupts the same way.")
    validation_file: str | None = option(
        None, "Score the model's task of your own on this file instead of the validation file it trained with."
    )
    text_column: str | None = option(None, "Column of the texts: checked against the model's task of your own.")
    text_pair_column: str | None = option(None, "Column of the second texts: checked like --text-column.")
    label_column: str | None = option(None, "Column of the labels: checked like --text-column.")
    id_column: str | None = option(None, "Column of the ids: checked like --text-column.")
    glue_dir: str | None = option(None, "GLUE directory in the original layout for GLUE tasks; default: the Hub.")

    def __post_init__(self) -> None:
        check_choices(self)
        check_range("--batch-size", self.batch_size, 0, low_open=True, cap=MAX_BATCH)
        check_range("--max-eval-examples", self.max_eval_examples, 0, low_open=True, cap=MAX_COUNT)
        check_range("--noise-seed", self.noise_seed, 0, MAX_SEED)
        for spec in self.noise:
            parse_noise(spec, "--noise")


@dataclass(frozen=True)
class GluePredictOptions:
    """``perceiver-lm finetune predict``: `tasks.finetune.predict.predict_test`."""

    checkpoint: Path = argument("Fine-tuned model (a run's best/ folder).")
    out: Path = option(
        Path("predictions"),
        "Folder for the prediction files: NAME.tsv with ids and label names (or scores) for a task of your own, "
        "NAME.jsonl (tokens, tags, spans) and NAME.conll for a tagging task; SST-2.tsv, MNLI-m.tsv, ... for GLUE.",
    )
    batch_size: int = option(64, "Examples per prediction batch per process.")
    overwrite: bool = option(False, "Replace submission files already in --out.")
    test_file: str | None = option(
        None, "Predict the model's task of your own on this file (default: the test file it was declared with)."
    )
    text_column: str | None = option(None, "Column of the texts: checked against the model's task of your own.")
    text_pair_column: str | None = option(None, "Column of the second texts: checked like --text-column.")
    id_column: str | None = option(None, "Column of the ids: checked like --text-column.")
    glue_dir: str | None = option(None, "GLUE directory in the original layout for GLUE tasks; default: the Hub.")

    def __post_init__(self) -> None:
        check_choices(self)
        check_range("--batch-size", self.batch_size, 0, low_open=True, cap=MAX_BATCH)
