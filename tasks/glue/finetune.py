"""GLUE fine-tuning, evaluation and test predictions with the multi-task query decoder, through Accelerate.

One model holds one learned query and one head per chosen task on top of a pretrained encoder.
Each batch comes from one task; batches of all tasks are interleaved at random every epoch, so a
task is sampled in proportion to its size (see `ProportionalBatches`). One optimizer for all.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from perceiver_lm import checkpoint as ckpt
from perceiver_lm.config import PRESETS, MultiTaskConfig, PerceiverConfig, TaskSpec, get_preset
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.model import PerceiverClassifier, PerceiverLM
from perceiver_lm.noise import parse_noise
from perceiver_lm.optim import adamw, parameter_groups
from perceiver_lm.run_dir import (
    check_output_folder,
    claim_folder,
    refuse_non_empty,
    write_json_atomic,
    write_text_atomic,
)
from perceiver_lm.trainer import METRICS_FILE as TRAIN_METRICS_FILE
from perceiver_lm.trainer import (
    Run,
    Schedule,
    TrainState,
    check_resume,
    finish_trackers,
    fit,
    gather_state,
    make_accelerator,
    on_main,
    restore,
    resume_source,
    run_folder,
    run_record,
    set_loader_epoch,
    use_accelerator,
)
from perceiver_lm.validation import check_range
from tasks.glue.data import Corruption, GlueSplit, ProportionalBatches, TaskExamples, collate, eval_loader, load_split
from tasks.glue.metrics import compute_all
from tasks.glue.options import GlueOptions
from tasks.glue.tasks import GlueTask, parse_tasks

METRICS_FILE = "dev_metrics.json"


# Fine-tuning defaults per model shape, measured (README, "Byte encoder"). The paper's lr 5e-5 with 200
# warm-up steps suits the 201M model after massive pretraining; the CPU presets learn in a few hundred
# steps with larger ones (`small` from random init on SST-2: lr 1e-3 never leaves the majority class,
# 3e-4 reaches ~75 % at 600 steps). A shape that is no preset gets the paper's values.
FINETUNE_DEFAULTS: dict[str, dict[str, float]] = {
    "tiny": {"lr": 5e-4, "warmup_steps": 60},
    "small": {"lr": 3e-4, "warmup_steps": 60},
    "base": {"lr": 5e-5, "warmup_steps": 200},
}


# How the body is fine-tuned: from random weights everything trains at --lr from the first step. A
# pretrained body gets the recipe the transfer study chose (README, "Transfer at small budgets"): so far
# the same, since neither a body at 0.3x the rate nor a 100-step frozen-body warm-up did better from a
# review-pretrained `small` (SST-2, 1,000 labels, 2 seeds: 57.6 default, 55.7 and 57.0).
RANDOM_START = {"body_lr_scale": 1.0, "freeze_body_steps": 0}
PRETRAINED_START = {"body_lr_scale": 1.0, "freeze_body_steps": 0}


def finetune_defaults(config: PerceiverConfig) -> tuple[str, dict[str, float]]:
    """The preset whose shape ``config`` is (or "base" for any other shape) and its fine-tuning defaults."""
    name = next((n for n, preset in PRESETS.items() if preset == config and n in FINETUNE_DEFAULTS), "base")
    return name, FINETUNE_DEFAULTS[name]


def with_defaults(options: GlueOptions, config: PerceiverConfig) -> tuple[GlueOptions, str]:
    """``options`` with an unset --lr/--warmup-steps filled from the model shape's defaults and the body's
    schedule from the start's (random or pretrained), and a note saying so."""
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


def primary_score(task: GlueTask, scores: dict[str, dict[str, float]]) -> float:
    """The number the sweep and model selection compare: the paper's metric, averaged over dev splits."""
    return float(np.mean([split[task.metrics[0]] for split in scores.values()]))


def _load_model(options: GlueOptions, tasks: list[GlueTask], notes: list[str]) -> PerceiverClassifier:
    heads = MultiTaskConfig(tuple(TaskSpec(t.name, t.num_outputs) for t in tasks), options.head_hidden)
    if options.checkpoint is None:
        notes.append(f"no --checkpoint: random initialisation, preset {options.preset}")
        return PerceiverClassifier(get_preset(options.preset), heads)
    directory = ckpt.resolve_model_dir(options.checkpoint)
    if (directory / ckpt.TASKS_FILE).is_file():
        raise PerceiverLMError(f"--checkpoint {directory}: already fine-tuned; start from a pretrained MLM checkpoint")
    return PerceiverClassifier.from_lm(PerceiverLM.from_pretrained(directory), heads)


def subset_split(split: GlueSplit, limit: int | None, seed: int, first: bool = False) -> GlueSplit:
    """At most ``limit`` examples of ``split``: a seeded random subset in file order, or the first ones."""
    if limit is None or len(split) <= limit:
        return split
    keep = np.arange(limit) if first else np.sort(np.random.default_rng(seed).choice(len(split), limit, replace=False))
    return dataclasses.replace(
        split,
        ids=[split.ids[i] for i in keep],
        labels=[split.labels[i] for i in keep] if split.labels else [],
        index=[split.index[i] for i in keep] if split.index else [],
    )


def task_loss(task: GlueTask, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification, mean squared error for regression (STS-B)."""
    if task.is_regression:
        return F.mse_loss(logits[:, 0].float(), labels)
    return F.cross_entropy(logits.float(), labels.long())


def predictions_of(task: GlueTask, logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 0].float() if task.is_regression else logits.argmax(-1).float()


@torch.no_grad()
def predict_split(
    model, loader: DataLoader, task_index: int, task: GlueTask, accelerator
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels of every example of one split, in file order, gathered over processes."""
    was_training = model.training
    model.eval()
    preds, labels, positions = [], [], []
    for batch in loader:
        logits = model(batch["input_ids"], batch["attention_mask"], task=task_index).logits
        p, y, at = accelerator.gather_for_metrics((predictions_of(task, logits), batch["labels"], batch["position"]))
        preds.append(p.cpu())
        labels.append(y.cpu())
        positions.append(at.cpu())
    model.train(was_training)
    order = torch.cat(positions).argsort()  # loaders may batch by length
    return torch.cat(preds)[order].numpy(), torch.cat(labels)[order].numpy()


def _eval_loaders(
    splits: dict[tuple[str, str], GlueSplit], task_index: dict[str, int], batch_size: int, pin_memory: bool = False
) -> dict[tuple[str, str], DataLoader]:
    return {key: eval_loader(split, task_index[key[0]], batch_size, pin_memory) for key, split in splits.items()}


def _evaluate(model, loaders, tasks_by_name, task_index, accelerator) -> dict[str, dict[str, dict[str, float]]]:
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for (name, split), loader in loaders.items():
        task = tasks_by_name[name]
        preds, labels = predict_split(model, loader, task_index[name], task, accelerator)
        scores.setdefault(name, {})[split] = compute_all(task.metrics, preds, labels)
    return scores


# Options that decide which examples each step sees (and from which model): a resumed run must keep them.
RESUME_OPTIONS = (
    "tasks",
    "checkpoint",
    "preset",
    "glue_dir",
    "max_length",
    "max_train_examples",
    "batch_size",
    "grad_accum",
    "length_buckets",
    "seed",
    "train_noise",
    "skip_bad_rows",
    "max_eval_examples",  # the restored best scores were measured on these dev examples
    "body_lr_scale",  # the optimizer's parameter groups follow from these two
    "freeze_body_steps",
)


class GlueTraining:
    """GLUE fine-tuning as a job of the training loop (`perceiver_lm.trainer.fit`).

    A batch holds one task; each evaluation scores every dev split, keeps the best scores per task in
    the run's state and the best model (mean of the tasks' primary scores) in ``best/``.
    """

    def __init__(self, tasks: list[GlueTask], eval_loaders: dict[tuple[str, str], DataLoader], output: Path) -> None:
        self.tasks, self.eval_loaders, self.output = tasks, eval_loaders, output
        self.by_name = {t.name: t for t in tasks}
        self.task_index = {t.name: i for i, t in enumerate(tasks)}
        self.slots = tuple(self.by_name)
        self.name = "glue " + ",".join(self.slots)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        index = batch["task"]  # a Python int: choosing the head costs no device sync
        logits = model(batch["input_ids"], batch["attention_mask"], task=index).logits
        return task_loss(self.tasks[index], logits, batch["labels"]), index

    def validate(self, run: Run, state: TrainState, train_loss: dict[str, float]) -> dict[str, float]:
        scores = _evaluate(run.model, self.eval_loaders, self.by_name, self.task_index, run.accelerator)
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
            weights, _ = gather_state(run.model)  # every process takes part: the model may be sharded
            card = {**run_record(run, state), "eval": finite}  # the scores that made this model the best
            model = run.accelerator.unwrap_model(run.model)
            best_dir = self.output / "best"
            on_main(run.accelerator, lambda: ckpt.save_model(model, best_dir, card, weights), f"writing {best_dir}")
        summary = {
            "options": dataclasses.asdict(run.options),
            "best": best,
            "history": records["history"],
            "num_processes": run.accelerator.num_processes,
        }
        path = self.output / METRICS_FILE
        on_main(run.accelerator, lambda: write_json_atomic(path, summary), f"writing {path}")
        return finite


def finetune(options: GlueOptions, accelerator: Any = None) -> FinetuneResult:
    """Fine-tune on one or several GLUE tasks at once; keeps the best dev score per task.

    The run holds a lock on ``options.output_dir`` while it runs; ``--resume`` continues its newest
    checkpoint.

    Args:
        options: tasks, data source, model source and the optimisation grid point.
        accelerator: the Accelerator to train with; default: one built from the options.
    """
    from accelerate.utils import DistributedDataParallelKwargs

    with run_folder(options, (METRICS_FILE, TRAIN_METRICS_FILE, "best")) as output:
        tasks = parse_tasks(options.tasks)
        accelerator, precision = use_accelerator(
            accelerator,
            options.mixed_precision,
            options.cpu,
            options.grad_accum,
            # A batch holds one task, so the other tasks' queries and heads get no gradient on that rank.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=len(tasks) > 1)],
        )
        try:
            run, job, state = setup(options, tasks, output, accelerator, precision)
            fit(run, job, state)
        finally:
            finish_trackers(accelerator)
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
    return train, dev


def setup(
    options: GlueOptions, tasks: list[GlueTask], output: Path, accelerator: Any, precision: str
) -> tuple[Run, GlueTraining, TrainState]:
    """Model, optimizer, data and (with --resume) the checkpoint's state, prepared for `fit`."""
    from accelerate.utils import set_seed

    processes = accelerator.num_processes
    set_seed(options.seed)
    notes: list[str] = []  # said once the data has loaded: a run that fails on its files says only why
    model = _load_model(options, tasks, notes)
    options, note = with_defaults(options, model.config)  # before the resume check, which compares filled values
    notes += [note] if note else []
    source = resume_source(output, options.resume)
    if source is not None:
        check_resume(source, model, options, RESUME_OPTIONS, processes)
    max_length = options.max_length or model.config.max_seq_len
    if max_length > model.config.max_seq_len:
        raise PerceiverLMError(
            f"--max-length {max_length} is longer than the model's window ({model.config.max_seq_len})"
        )
    train_splits, dev_splits = _load_splits(options, tasks, max_length)
    for note in notes:
        accelerator.print(note, file=sys.stderr)
    for split in [*train_splits, *dev_splits.values()]:
        cut = sum(len(ids) == max_length for ids in split.ids)
        accelerator.print(
            f"{split.task.name} {split.name}: {len(split):,} examples from {split.source}"
            + (f" ({cut:,} cut to {max_length} bytes)" if cut else ""),
            file=sys.stderr,
        )
    task_index = {t.name: i for i, t in enumerate(tasks)}
    train_data = TaskExamples(train_splits, [task_index[t.name] for t in tasks])
    sampler = ProportionalBatches(train_data, options.batch_size, options.seed, by_length=options.length_buckets)
    gpu = accelerator.device.type == "cuda"  # pinned batches copy to the GPU without blocking the host
    train_loader = DataLoader(train_data, batch_sampler=sampler, collate_fn=collate, pin_memory=gpu)
    eval_loaders = _eval_loaders(dev_splits, task_index, options.eval_batch_size, gpu)
    body = (options.body_lr_scale, options.freeze_body_steps)
    optimizer = adamw(
        parameter_groups(model, options.weight_decay, lambda name: (1.0, 0) if name.startswith("decoder.") else body),
        lr=options.lr,
    )
    model, optimizer, train_loader, *prepared = accelerator.prepare(
        model, optimizer, train_loader, *eval_loaders.values()
    )
    per_epoch = max(1, len(train_loader) // options.grad_accum)  # optimizer steps per epoch
    total = options.max_steps or max(1, math.ceil(options.epochs * per_epoch))
    eval_every = options.eval_every or per_epoch
    schedule = Schedule.of(
        options,
        max_steps=total,
        eval_every=eval_every,
        save_every=options.save_every or eval_every,
        steps_per_epoch=per_epoch,
    )
    examples_per_step = options.batch_size * processes * options.grad_accum
    run = Run(accelerator, model, optimizer, train_loader, output, schedule, options, ("examples", examples_per_step))
    run.set_epoch = lambda loader, epoch: (set_loader_epoch(loader, epoch), sampler.set_epoch(epoch))
    state = restore(run, source) if source is not None else TrainState()
    run.say(
        f"model: {sum(p.numel() for p in model.parameters()):,} parameters; {processes} process(es) on "
        f"{accelerator.device}, {precision}; {total} steps of {options.batch_size}x{processes}x{options.grad_accum} "
        f"examples ({per_epoch} per epoch)"
    )
    job = GlueTraining(tasks, dict(zip(eval_loaders, prepared, strict=True)), output)
    return run, job, state


def evaluate_checkpoint(
    checkpoint: str | Path,
    glue_dir: str | None,
    task_names: str | None = None,
    batch_size: int = 64,
    max_eval_examples: int | None = None,
    noise: Sequence[str] = (),
    noise_seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """Dev scores of a fine-tuned checkpoint on its tasks (or the ``task_names`` subset of them).

    ``noise`` ("KIND:RATE" specs, applied together in order) corrupts the dev texts first, the same
    way for the same ``noise_seed``: robustness to typos, casing and spacing.
    """
    check_range("--max-eval-examples", max_eval_examples, 0, low_open=True)
    corruption = Corruption(tuple(parse_noise(spec) for spec in noise), noise_seed)
    accelerator = make_accelerator()
    model = PerceiverClassifier.from_pretrained(checkpoint)
    names = [t.name for t in model.tasks.tasks]
    tasks = parse_tasks(task_names) if task_names else parse_tasks(",".join(names))
    task_index = {t.name: model.tasks.index(t.name) for t in tasks}  # refuses tasks the model has no head for
    length = model.config.max_seq_len
    splits = {
        (t.name, s): subset_split(
            load_split(t, s, glue_dir, length, False, corruption), max_eval_examples, 0, first=True
        )
        for t in tasks
        for s, _ in t.dev
    }
    loaders = _eval_loaders(splits, task_index, batch_size)
    model, *prepared = accelerator.prepare(model, *loaders.values())
    return _evaluate(
        model, dict(zip(loaders, prepared, strict=True)), {t.name: t for t in tasks}, task_index, accelerator
    )


def predict_test(
    checkpoint: str | Path, glue_dir: str | None, out_dir: str | Path, batch_size: int = 64, overwrite: bool = False
) -> list[Path]:
    """Write GLUE test-set predictions in the submission format (``SST-2.tsv``: ``index<TAB>prediction``).

    Submission files already in ``out_dir`` are replaced only with ``overwrite``; other files there are left alone.
    """
    out = check_output_folder(out_dir, "--out")
    unwrapped = PerceiverClassifier.from_pretrained(checkpoint)
    tasks = parse_tasks(",".join(t.name for t in unwrapped.tasks.tasks))
    plan = [
        (task, stem, submission)
        for task in tasks
        for stem, submission in (((task.test_files[0][0], task.submission),) if task.submission else task.test_files)
    ]
    present = [f"{submission}.tsv" for _, _, submission in plan if (out / f"{submission}.tsv").exists()]
    if present and not overwrite:
        raise PerceiverLMError(
            f"--out {out}: already holds {', '.join(present)}; pass --overwrite to replace them, or pick another folder"
        )
    accelerator = make_accelerator()
    model = accelerator.prepare(unwrapped)
    written = []
    for task, stem, submission in plan:
        split = load_split(task, stem, glue_dir, unwrapped.config.max_seq_len)
        index = unwrapped.tasks.index(task.name)
        loader = accelerator.prepare(eval_loader(split, index, batch_size))
        preds, _ = predict_split(model, loader, index, task, accelerator)
        if not accelerator.is_main_process:
            continue
        # GLUE wants label strings for the NLI tasks, 0/1 for the others, and scores in [0, 5] for STS-B.
        values = [f"{float(np.clip(p, 0.0, 5.0)):.3f}" if task.is_regression else task.labels[int(p)] for p in preds]
        ids = split.index or [str(i) for i in range(len(split))]
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{submission}.tsv"
        write_text_atomic(
            path, "index\tprediction\n" + "".join(f"{i}\t{v}\n" for i, v in zip(ids, values, strict=True))
        )
        written.append(path)
    return written


def sweep(options: GlueOptions, batch_sizes: list[int], lrs: list[float]) -> dict[str, Any]:
    """Fine-tune once per (batch size, lr) grid point; keep the best dev score per task.

    Each grid point runs into ``output_dir/bs{B}_lr{LR}``; the summary goes to ``output_dir/sweep.json``.
    """
    tasks = parse_tasks(options.tasks)
    output = check_output_folder(options.output_dir, "--output-dir")
    hint = "pick another --output-dir, or pass --overwrite to rerun the sweep there"
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under `accelerate launch` the main process holds the lock
    with claim_folder(
        output,
        "--output-dir",
        lambda: options.overwrite or refuse_non_empty(output, "--output-dir", hint),
        lock=main_rank,
    ):
        return _sweep(options, tasks, output, batch_sizes, lrs, main_rank)


def _sweep(
    options: GlueOptions,
    tasks: list[GlueTask],
    output: Path,
    batch_sizes: list[int],
    lrs: list[float],
    main_rank: bool = True,
) -> dict[str, Any]:
    runs, best = [], {}
    for batch_size, lr in itertools.product(batch_sizes, lrs):
        point = dataclasses.replace(
            options, batch_size=batch_size, lr=lr, output_dir=str(Path(options.output_dir) / f"bs{batch_size}_lr{lr:g}")
        )
        result = finetune(point)
        runs.append({"batch_size": batch_size, "lr": lr, "best": result.best, "output_dir": str(result.output_dir)})
        for task in tasks:
            entry = result.best[task.name]
            if task.name not in best or primary_score(task, entry["scores"]) > primary_score(
                task, best[task.name]["scores"]
            ):
                best[task.name] = {**entry, "batch_size": batch_size, "lr": lr, "output_dir": str(result.output_dir)}
    summary = {
        "options": dataclasses.asdict(options),
        "grid": {"batch_size": batch_sizes, "lr": lrs},
        "best": best,
        "runs": runs,
    }
    if main_rank:
        write_json_atomic(output / "sweep.json", summary)
    return summary


def results_table(best: dict[str, dict[str, Any]]) -> str:
    """Dev scores per task beside the Perceiver IO paper's (single-task and multi-task queries)."""
    from tasks.glue.tasks import TASKS

    lines = [f"{'task':<6} {'metric':<22} {'ours':>14} {'paper':>7} {'paper multi-task':>17}", "-" * 70]
    for name, entry in best.items():
        task = TASKS[name]
        for split, scores in entry["scores"].items():
            label = task.name if split == "dev" else f"{task.name}-{split[:2]}"
            shown = " / ".join(f"{v:.2f}" for v in scores.values())
            paper = f"{task.paper:.2f}" if task.paper is not None else "-"
            multi = f"{task.paper_multitask:.2f}" if task.paper_multitask is not None else "-"
            lines.append(f"{label:<6} {'/'.join(scores):<22} {shown:>14} {paper:>7} {multi:>17}")
    return "\n".join(lines)
