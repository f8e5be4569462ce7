"""GLUE fine-tuning, evaluation and test predictions with the multi-task query decoder, through Accelerate.

One model holds one learned query and one head per chosen task on top of a pretrained encoder.
Each batch comes from one task; batches of all tasks are interleaved at random every epoch, so a
task is sampled in proportion to its size (see `ProportionalBatches`). One optimizer for all.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from perceiver_lm import checkpoint as ckpt
from perceiver_lm.config import PRESETS, PerceiverConfig, model_config
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.model import PerceiverClassifier, PerceiverLM
from perceiver_lm.noise import parse_noise
from perceiver_lm.optim import adamw, parameter_groups
from perceiver_lm.options import MAX_STEPS, options_record
from perceiver_lm.resume import TrainState, save_model_copy
from perceiver_lm.run_dir import write_json_atomic
from perceiver_lm.runtime import on_main
from perceiver_lm.trainer import Data, Run, Schedule, train
from tasks.finetune import own
from tasks.finetune.data import (
    Corruption,
    GlueSplit,
    ProportionalBatches,
    TaskExamples,
    collate,
    load_split,
    subset_split,
)
from tasks.finetune.options import GlueOptions
from tasks.finetune.predict import check_scorable, evaluate_splits, primary_score
from tasks.finetune.predict import eval_loaders as make_eval_loaders
from tasks.glue.tasks import GlueTask

METRICS_FILE = "dev_metrics.json"


# Fine-tuning defaults per model shape, measured (docs/studies.md, "Byte encoder"). The paper's lr 5e-5 with 200
# warm-up steps suits the 201M model after massive pretraining; the CPU presets learn in a few hundred
# steps with larger ones (`small` from random init on SST-2: lr 1e-3 never leaves the majority class,
# 3e-4 reaches ~75 % at 600 steps). A shape that is no preset gets the paper's values.
FINETUNE_DEFAULTS: dict[str, dict[str, float]] = {
    "tiny": {"lr": 5e-4, "warmup_steps": 60},
    "small": {"lr": 3e-4, "warmup_steps": 60},
    "base": {"lr": 5e-5, "warmup_steps": 200},
}


# The lookup tables `--embedding-lr-scale` speeds up: the byte embedding and the hashed n-gram table (not the
# position embedding, which every example updates at every position).
EMBEDDING_TABLES = ("encoder.token_embedding.weight", "encoder.ngrams.table.weight")


# How the body is fine-tuned: from random weights everything trains at --lr from the first step. A
# pretrained body gets the recipe the transfer study chose (docs/studies.md, "Transfer at small budgets"): so far
# the same, since neither a body at 0.3x the rate nor a 100-step frozen-body warm-up did better from a
# review-pretrained `small` (SST-2, 1,000 labels, 2 seeds: 57.6 default, 55.7 and 57.0).
RANDOM_START = {"body_lr_scale": 1.0, "freeze_body_steps": 0}
PRETRAINED_START = {"body_lr_scale": 1.0, "freeze_body_steps": 0}


# Model fields that only the masked-LM decoder reads: a classifier built on the body is the same either way.
MLM_DECODER_ONLY = ("span_queries",)


def finetune_defaults(config: PerceiverConfig) -> tuple[str, dict[str, float]]:
    """The preset whose shape ``config`` is (or "base" for any other shape) and its fine-tuning defaults."""

    def same_body(preset: PerceiverConfig) -> bool:
        return preset == config.replace(**{f: getattr(preset, f) for f in MLM_DECODER_ONLY})

    name = next((n for n, preset in PRESETS.items() if same_body(preset) and n in FINETUNE_DEFAULTS), "base")
    return name, FINETUNE_DEFAULTS[name]


def with_defaults(options: GlueOptions, config: PerceiverConfig) -> tuple[GlueOptions, str]:
    """``options`` with an unset --lr/--warmup-steps filled from the model shape's defaults and the body's
    schedule from the start's (random or pretrained), and a note saying so. From random weights the defaults are
    --preset's, [model] overrides or not."""
    if options.checkpoint is None and options.preset in FINETUNE_DEFAULTS:
        name, defaults = options.preset, FINETUNE_DEFAULTS[options.preset]
    else:
        name, defaults = finetune_defaults(config)
    start = PRETRAINED_START if options.checkpoint is not None else RANDOM_START
    filled = {k: v for k, v in {**defaults, **start}.items() if getattr(options, k) is None}
    if not filled:
        return options, ""
    note = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in filled.items())
    kind = "a pretrained" if options.checkpoint is not None else "a random"
    return dataclasses.replace(options, **filled), f"fine-tuning defaults of the {name} shape from {kind} start: {note}"


@dataclass
class FinetuneResult:
    """What `finetune` returns: where the run lives, its best dev scores and the best model."""

    output_dir: Path
    best: dict[str, dict[str, Any]]  # task -> {"step", "scores": {split: {metric: value}}}
    best_model: Path
    steps: int


def _load_model(options: GlueOptions, tasks: list[GlueTask], notes: list[str]) -> PerceiverClassifier:
    heads = own.heads(tasks, options.head_hidden, options.max_length, options.window, options.word_features)
    lm = None
    if options.checkpoint is None:
        changed = f" with {', '.join(sorted(options.model))} from [model]" if options.model else ""
        notes.append(f"no --checkpoint: random initialisation, preset {options.preset}{changed}")
        config = model_config(options.preset, options.model, "[model] of the fine-tuning options")
    else:
        directory = ckpt.resolve_model_dir(options.checkpoint)
        if (directory / ckpt.TASKS_FILE).is_file():
            raise PerceiverLMError(
                f"--checkpoint {directory}: already fine-tuned; start from a pretrained MLM checkpoint"
            )
        lm = PerceiverLM.from_pretrained(directory)
        config = lm.config
    if options.window is not None and options.window > config.max_seq_len:
        raise PerceiverLMError(
            f"--window {options.window}: longer than the model's window (max_seq_len={config.max_seq_len})"
        )
    return PerceiverClassifier(config, heads) if lm is None else PerceiverClassifier.from_lm(lm, heads)


def _pretrained_window(options: GlueOptions, notes: list[str]) -> GlueOptions:
    """``options`` with --window defaulting to the window the --checkpoint was pretrained on (when shorter than
    its max_seq_len): positions past it, and with trimmed latents the latents over them, never trained."""
    if options.checkpoint is None:
        return options
    directory = ckpt.resolve_model_dir(options.checkpoint)
    if not (directory / ckpt.CONFIG_FILE).is_file():
        return options  # _load_model says what is wrong with it
    trained = ckpt.pretrained_window(directory, PerceiverConfig.load(directory / ckpt.CONFIG_FILE))
    if trained is None:
        return options
    if options.window is None:
        notes.append(f"--checkpoint was pretrained on {trained}-byte windows: longer inputs are read as windows of "
                     f"{trained} bytes (--window to change)")  # fmt: skip
        return dataclasses.replace(options, window=trained)
    if options.window > trained:
        notes.append(f"note: --window {options.window} reads positions past the {trained} bytes the --checkpoint "
                     "was pretrained on (they never trained)")  # fmt: skip
    return options


def task_loss(task: GlueTask, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of the task's kind: cross-entropy for classification, mean squared error for regression."""
    return task.kind.loss(logits, labels)


class GlueTraining:
    """GLUE fine-tuning as a job of the training loop (`perceiver_lm.trainer.train`).

    A batch holds one task; each evaluation scores every dev split, keeps the best scores per task in
    the run's state and the best model (mean of the tasks' primary scores) in ``best/``.
    """

    produced = (METRICS_FILE, "best")

    def __init__(self, options: GlueOptions) -> None:
        self.options = options
        self.tasks = own.job_tasks(options)
        self.by_name = {t.name: t for t in self.tasks}
        self.task_index = {t.name: i for i, t in enumerate(self.tasks)}
        self.slots = tuple(self.by_name)
        self.name = "glue " + ",".join(self.slots)
        self.notes: list[str] = []  # said once the data has loaded: a run that fails on its files says only why
        self.eval_keys: list[tuple[str, str]] = []

    def accelerator_kwargs(self, output: Path) -> dict[str, Any]:
        from accelerate.utils import DistributedDataParallelKwargs

        # A batch holds one task, so the other tasks' queries and heads get no gradient on that rank.
        return {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=len(self.tasks) > 1)]}

    def build_model(self, source: Path | None) -> PerceiverClassifier:
        self.options = _pretrained_window(self.options, self.notes)
        model = _load_model(self.options, self.tasks, self.notes)
        self.options, note = with_defaults(self.options, model.config)  # the resume check compares filled values
        self.notes += [note] if note else []
        return model

    def build_data(self, model: PerceiverClassifier, accelerator: Any) -> Data:
        options = self.options
        # Longer than the model's window: the classifier reads consecutive windows (`PerceiverClassifier`).
        max_length = options.max_length or model.config.max_seq_len
        train_splits, dev_splits = _load_splits(options, self.tasks, max_length)
        for note in self.notes:
            accelerator.print(note, file=sys.stderr)
        window = options.window or model.config.max_seq_len
        for split in [*train_splits, *dev_splits.values()]:
            if split.task.kind.per_word:  # never cut: every word is tagged, longer inputs read as windows
                long = sum(len(ids) > window for ids in split.ids)
                note = f" ({long:,} longer than {window} bytes: read as windows)" if long else ""
            else:
                cut = sum(len(ids) == max_length for ids in split.ids)
                note = f" ({cut:,} cut to {max_length} bytes)" if cut else ""
            accelerator.print(f"{split.task.name} {split.name}: {len(split):,} examples from {split.source}{note}",
                              file=sys.stderr)  # fmt: skip
        train_data = TaskExamples(train_splits, [self.task_index[t.name] for t in self.tasks])
        sampler = ProportionalBatches(train_data, options.batch_size, options.seed, by_length=options.length_buckets)
        gpu = accelerator.device.type == "cuda"  # pinned batches copy to the GPU without blocking the host
        # Compiled, batches pad to a few lengths: each new shape would cost a compile (or slower dynamic kernels).
        pad = functools.partial(collate, bucketed=options.compile)
        train_loader = DataLoader(train_data, batch_sampler=sampler, collate_fn=pad, pin_memory=gpu)
        loaders = make_eval_loaders(dev_splits, self.task_index, options.eval_batch_size, gpu, options.compile)
        self.eval_keys = list(loaders)
        return Data(train_loader, list(loaders.values()), "examples", options.batch_size, sampler=sampler)

    def build_optimizer(self, model: PerceiverClassifier) -> torch.optim.Optimizer:
        options = self.options
        body = (options.body_lr_scale, options.freeze_body_steps)
        tables = (options.body_lr_scale * options.embedding_lr_scale, options.freeze_body_steps)

        def schedule_of(name: str) -> tuple[float, int]:
            if name.startswith("decoder."):
                return 1.0, 0
            return tables if name in EMBEDDING_TABLES else body

        return adamw(parameter_groups(model, options.weight_decay, schedule_of), lr=options.lr)

    def schedule(self, batches_per_epoch: int | None) -> Schedule:
        options = self.options
        per_epoch = max(1, batches_per_epoch // options.grad_accum)  # optimizer steps per epoch
        total = options.max_steps or max(1, math.ceil(options.epochs * per_epoch))
        if total > MAX_STEPS:
            raise PerceiverLMError(
                f"--epochs {options.epochs:g}: {total:,} optimizer steps of {per_epoch:,} per epoch, more than "
                f"{MAX_STEPS:,}; give fewer epochs or --max-steps"
            )
        eval_every = options.eval_every or per_epoch
        return Schedule.of(
            options,
            max_steps=total,
            eval_every=eval_every,
            save_every=options.save_every or eval_every,
            steps_per_epoch=per_epoch,
        )

    def started(self, run: Run, state: TrainState, source: Path | None) -> str:
        options, schedule = self.options, run.schedule
        return (
            f"{schedule.max_steps} steps of {options.batch_size}x{run.accelerator.num_processes}x"
            f"{options.grad_accum} examples ({schedule.steps_per_epoch} per epoch)"
        )

    def card(self) -> list[str]:
        options = self.options
        data = ", ".join(f"{t.name} ({_source(t, options.glue_dir)})" for t in self.tasks)
        lines = [f"- Fine-tuned on tasks (data): {data}"]
        return lines + ([f"- Started from the weights of: {options.checkpoint}"] if options.checkpoint else [])

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        index = batch["task"]  # a Python int: choosing the head costs no device sync
        words = batch.get("word_positions")  # a per-word task's
        logits = model(batch["input_ids"], batch["attention_mask"], task=index, word_positions=words).logits
        return task_loss(self.tasks[index], logits, batch["labels"]), index

    def validate(self, run: Run, state: TrainState, train_loss: dict[str, float]) -> dict[str, float]:
        loaders = dict(zip(self.eval_keys, run.eval_loaders, strict=True))
        scores = evaluate_splits(run.model, loaders, self.by_name, self.task_index, run.accelerator)
        records = state.job
        records.setdefault("history", []).append(
            {
                "step": state.step,
                "epoch": state.step / run.schedule.steps_per_epoch,
                "elapsed_s": state.elapsed_s,
                "train_loss": train_loss,
                "scores": scores,
            }
        )
        best = records.setdefault("best", {})
        for name, task_scores in scores.items():
            task = self.by_name[name]
            if name not in best or primary_score(task, task_scores) > primary_score(task, best[name]["scores"]):
                best[name] = {"step": state.step, "scores": task_scores}
        run.say(
            f"\nstep {state.step}/{run.schedule.max_steps} ({state.elapsed_s:.0f} s): "
            + "; ".join(
                f"{n} " + ", ".join(f"{m} {v:.2f}" for split in s.values() for m, v in split.items())
                for n, s in scores.items()
            )
        )
        flat = {f"{n}/{split}/{m}": v for n, s in scores.items() for split, ms in s.items() for m, v in ms.items()}
        finite = {k: float(v) for k, v in flat.items() if math.isfinite(v)}
        mean = float(np.mean([primary_score(self.by_name[n], s) for n, s in scores.items()]))
        if records.get("best_mean") is None or mean > records["best_mean"]:
            records["best_mean"] = mean
            save_model_copy(run, state, run.output / "best", finite)  # with the scores that made it the best
        summary = {
            "options": options_record(run.options),
            "best": best,
            "history": records["history"],
            "num_processes": run.accelerator.num_processes,
        }
        path = run.output / METRICS_FILE
        on_main(run.accelerator, lambda: write_json_atomic(path, summary), f"writing {path}")
        return finite


def _source(task: GlueTask, glue_dir: str | None) -> str:
    """Where a task's data came from, for the model card."""
    if task.files:
        return " + ".join(path for split, path in task.files if split != "test")
    return glue_dir or task.hub_dataset


def finetune(options: GlueOptions, accelerator: Any = None) -> FinetuneResult:
    """Fine-tune on one or several GLUE tasks at once; keeps the best dev score per task.

    The run holds a lock on ``options.output_dir`` while it runs; ``--resume`` continues its newest
    checkpoint.

    Args:
        options: tasks, data source, model source and the optimisation grid point.
        accelerator: the Accelerator to train with; default: one built from the options.
    """
    state = train(options, GlueTraining(options), accelerator)
    output = Path(options.output_dir)
    return FinetuneResult(output, state.job.get("best", {}), output / "best", state.step)


def _load_splits(
    options: GlueOptions, tasks: list[GlueTask], max_length: int
) -> tuple[list[GlueSplit], dict[tuple[str, str], GlueSplit]]:
    augment = Corruption(tuple(parse_noise(spec) for spec in options.train_noise), options.seed)
    train = [
        subset_split(
            load_split(t, "train", options.glue_dir, max_length, options.skip_bad_rows, augment),
            options.max_train_examples,
            options.seed,
        )
        for t in tasks
    ]
    dev = {
        (t.name, split): subset_split(
            load_split(t, split, options.glue_dir, max_length, options.skip_bad_rows),
            options.max_eval_examples,
            0,
            first=True,
        )
        for t in tasks
        for split, _ in t.dev
    }
    check_scorable(dev)
    return train, dev
