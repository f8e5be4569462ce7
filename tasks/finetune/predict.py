"""Scoring fine-tuned GLUE models: dev scores of a checkpoint, test-set submissions, the results table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.model import PerceiverClassifier
from perceiver_lm.noise import parse_noise
from perceiver_lm.options import MAX_SEED
from perceiver_lm.run_dir import check_output_folder, write_text_atomic
from perceiver_lm.runtime import make_accelerator
from perceiver_lm.validation import check_range, shown
from tasks.finetune.data import Corruption, GlueSplit, eval_loader, load_split, subset_split
from tasks.finetune.metrics import PER_TYPE
from tasks.finetune.own import is_own, model_tasks
from tasks.glue.tasks import GlueTask


def primary_score(task: GlueTask, scores: dict[str, dict[str, float]]) -> float:
    """The number the sweep and model selection compare: the paper's metric, averaged over dev splits."""
    return float(np.mean([split[task.metrics[0]] for split in scores.values()]))


def predictions_of(task: GlueTask, logits: torch.Tensor) -> torch.Tensor:
    return task.kind.predictions(logits)


@torch.no_grad()
def predict_split(model, loader: DataLoader, task_index: int, task: GlueTask, accelerator) -> tuple[Any, Any]:
    """Predictions and targets of every example of one split, in file order, gathered over processes: arrays of
    a value each, or for a per-word task lists of an array of tag ids each (as long as its words)."""
    was_training = model.training
    model.eval()
    preds, labels, positions = [], [], []
    for batch in loader:
        words = batch.get("word_positions")
        logits = model(batch["input_ids"], batch["attention_mask"], task=task_index, word_positions=words).logits
        p, y = predictions_of(task, logits), batch["labels"]
        if words is not None:  # per word: [B, Q], Q differs between batches and processes
            p, y = accelerator.pad_across_processes(p, dim=1), accelerator.pad_across_processes(y, dim=1)
            p, y, at, count = accelerator.gather_for_metrics((p, y, batch["position"], batch["word_count"]))
            preds += [row[:n].cpu().numpy() for row, n in zip(p, count.tolist(), strict=True)]
            labels += [row[:n].cpu().numpy() for row, n in zip(y, count.tolist(), strict=True)]
        else:
            p, y, at = accelerator.gather_for_metrics((p, y, batch["position"]))
            preds += list(p.cpu().numpy())
            labels += list(y.cpu().numpy())
        positions.append(at.cpu())
    model.train(was_training)
    order = torch.cat(positions).argsort().tolist()  # loaders may batch by length
    preds, labels = [preds[i] for i in order], [labels[i] for i in order]
    return (preds, labels) if task.kind.per_word else (np.asarray(preds), np.asarray(labels))


def eval_loaders(
    splits: dict[tuple[str, str], GlueSplit],
    task_index: dict[str, int],
    batch_size: int,
    pin_memory: bool = False,
    bucketed: bool = False,
) -> dict[tuple[str, str], DataLoader]:
    return {
        key: eval_loader(split, task_index[key[0]], batch_size, pin_memory, bucketed) for key, split in splits.items()
    }


def _kind(task: GlueTask) -> str:
    """How messages name a task: "GLUE sst2", or "task reviews" for a task of your own."""
    return "task " if is_own(task) else "GLUE "


def check_scorable(splits: dict[tuple[str, str], GlueSplit]) -> None:
    """Refuse a dev split with no example to score, or with no labels to score against: its metrics would be
    computed from nothing (or from NaN labels). Call it before any model work."""
    for (name, split_name), split in splits.items():
        if len(split) == 0:
            raise PerceiverLMError(
                f"{_kind(split.task)}{name} {split_name}: {split.source}: no example to score (the split is empty)"
            )
        if not split.labeled:
            raise PerceiverLMError(
                f"{_kind(split.task)}{name} {split_name}: {split.source}: no example to score: the split has no labels "
                "(a test split?)"
            )


def evaluate_splits(model, loaders, tasks_by_name, task_index, accelerator) -> dict[str, dict[str, dict[str, float]]]:
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for (name, split), loader in loaders.items():
        task = tasks_by_name[name]
        preds, labels = predict_split(model, loader, task_index[name], task, accelerator)
        unlabelled = any(np.any(np.isnan(np.asarray(y, dtype=float))) for y in labels)
        if len(labels) == 0 or unlabelled:  # `check_scorable` refuses these before any work
            raise PerceiverLMError(f"{_kind(task)}{name} {split}: no labelled example to score")
        scores.setdefault(name, {})[split] = task.kind.scores(task.metrics, preds, labels, task.labels)
    return scores


def evaluate_checkpoint(
    checkpoint: str | Path,
    glue_dir: str | None,
    task_names: str | None = None,
    batch_size: int = 64,
    max_eval_examples: int | None = None,
    noise: Sequence[str] = (),
    noise_seed: int = 0,
    validation_file: str | None = None,
    columns: dict[str, str | None] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Dev scores of a fine-tuned checkpoint on its tasks (or the ``task_names`` subset of them).

    ``noise`` ("KIND:RATE" specs, applied together in order) corrupts the dev texts first, the same
    way for the same ``noise_seed``: robustness to typos, casing and spacing. A task of your own is
    scored on its validation file, or on ``validation_file`` (a model with one such task); ``columns`` are the
    column options a user repeated, checked against the model's declaration (`check_columns`).
    """
    check_range("--max-eval-examples", max_eval_examples, 0, low_open=True)
    check_range("--noise-seed", noise_seed, 0, MAX_SEED)  # as `glue eval --noise-seed` and every other seed
    corruption = Corruption(tuple(parse_noise(spec) for spec in noise), noise_seed)
    accelerator = make_accelerator()
    model = PerceiverClassifier.from_pretrained(checkpoint)
    tasks = _tasks(model, task_names, "dev", validation_file, "--validation-file", columns)
    task_index = {t.name: model.tasks.index(t.name) for t in tasks}
    length = model.tasks.max_length or model.config.max_seq_len
    splits = {
        (t.name, s): subset_split(
            load_split(t, s, glue_dir, length, False, corruption), max_eval_examples, 0, first=True
        )
        for t in tasks
        for s, _ in t.dev
    }
    check_scorable(splits)
    loaders = eval_loaders(splits, task_index, batch_size)
    model, *prepared = accelerator.prepare(model, *loaders.values())
    return evaluate_splits(
        model, dict(zip(loaders, prepared, strict=True)), {t.name: t for t in tasks}, task_index, accelerator
    )


COLUMN_OPTIONS = ("text_column", "text_pair_column", "label_column", "id_column")


def _declared_column(task: GlueTask, option: str) -> str | None:
    if option == "text_column":
        return task.hub_text[0]
    if option == "text_pair_column":
        return task.hub_text[1] if len(task.hub_text) > 1 else None
    return task.hub_label if option == "label_column" else task.hub_index


def check_columns(tasks: list[GlueTask], columns: dict[str, str | None]) -> None:
    """Column options repeated at evaluation or prediction (``COLUMN_OPTIONS``; None: not given) must name the
    columns the model's tasks of their own were fine-tuned on: a model reads the columns it declared."""
    own = [t for t in tasks if is_own(t)]
    for option, value in columns.items():
        if value is None:
            continue
        flag = "--" + option.replace("_", "-")
        if not own:
            raise PerceiverLMError(f"{flag} {value}: the model has no task of your own (its columns are GLUE's)")
        for task in own:
            declared = _declared_column(task, option)
            if value != declared:
                held = "no such column" if declared is None else f"column {shown(declared)}"
                raise PerceiverLMError(
                    f"{flag} {value}: the model's task {task.name} reads {held} (declared when it was fine-tuned); "
                    "give a file with that column, or leave the option out"
                )


def _tasks(
    model: PerceiverClassifier,
    names: str | None,
    split: str,
    file: str | None,
    option: str,
    columns: dict[str, str | None] | None = None,
) -> list[GlueTask]:
    """The model's tasks (or the ``names`` subset), a task of your own reading ``split`` from ``file`` if given;
    ``columns`` are column options to check against the tasks' declarations (`check_columns`)."""
    own = [s.name for s in model.tasks.tasks if s.about is not None and "files" in s.about]
    if file is not None and len(own) != 1:
        raise PerceiverLMError(
            f"{option} {file}: applies to a model with one task of your own; this one has {len(own)}"
            + (f" ({', '.join(own)})" if own else "")
        )
    tasks = model_tasks(model.tasks, {split: file} if file else None)
    check_columns(tasks, columns or {})
    if names is None:
        return tasks
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    for name in wanted:
        model.tasks.index(name)  # refuses a task the model has no head for
    return [t for t in tasks if t.name in wanted]


def predict_test(
    checkpoint: str | Path,
    glue_dir: str | None,
    out_dir: str | Path,
    batch_size: int = 64,
    overwrite: bool = False,
    test_file: str | None = None,
    columns: dict[str, str | None] | None = None,
) -> list[Path]:
    """Write test-set predictions: GLUE's submission format (``SST-2.tsv``: ``index<TAB>prediction``), and for a
    task of your own ``NAME.tsv`` with its ids and label names (scores for regression); for a tagging task
    ``NAME.jsonl`` (id, tokens, a tag per word, spans) and ``NAME.conll`` (word TAB tag, blank line between).

    A task of your own predicts its test file, or ``test_file`` (a model with one such task). Prediction files
    already in ``out_dir`` are replaced only with ``overwrite``; other files there are left alone.
    """
    out = check_output_folder(out_dir, "--out")
    unwrapped = PerceiverClassifier.from_pretrained(checkpoint)
    tasks = _tasks(unwrapped, None, "test", test_file, "--test-file", columns)
    plan = []
    for task in tasks:
        if task.files and "test" not in dict(task.files):
            raise PerceiverLMError(f"task {task.name}: no test file to predict; pass --test-file")
        files = ((task.test_files[0][0], task.submission),) if task.submission else task.test_files
        plan += [(task, stem, submission) for stem, submission in files]
    names = [submission + suffix for task, _, submission in plan for suffix in task.kind.prediction_suffixes]
    present = [name for name in names if (out / name).exists()]
    if present and not overwrite:
        raise PerceiverLMError(
            f"--out {out}: already holds {', '.join(present)}; pass --overwrite to replace them, or pick another folder"
        )
    accelerator = make_accelerator()
    model = accelerator.prepare(unwrapped)
    length = unwrapped.tasks.max_length or unwrapped.config.max_seq_len
    written = []
    for task, stem, submission in plan:
        split = load_split(task, stem, glue_dir, length)
        index = unwrapped.tasks.index(task.name)
        loader = accelerator.prepare(eval_loader(split, index, batch_size))
        preds, _ = predict_split(model, loader, index, task, accelerator)
        if not accelerator.is_main_process:
            continue
        written += _write_predictions(out, submission, task, split, preds)
    return written


def _write_predictions(out: Path, stem: str, task: GlueTask, split: GlueSplit, preds: list) -> list[Path]:
    """The task kind's prediction files (`TaskKind.prediction_files`) of one split, written atomically."""
    # GLUE wants label strings for the NLI tasks, 0/1 for the others, and scores in [0, 5] for STS-B.
    bounds = None if is_own(task) else (0.0, 5.0)  # STS-B's scores lie in [0, 5]
    ids = split.index or [str(i) for i in range(len(split))]
    files = task.kind.prediction_files(stem, ids, preds, split, task.labels, bounds)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_text_atomic(out / name, text)
    return [out / name for name in files]


def results_table(best: dict[str, dict[str, Any]]) -> str:
    """Dev scores per task beside the Perceiver IO paper's (single-task and multi-task queries)."""
    from tasks.glue.tasks import TASKS

    lines = [f"{'task':<6} {'metric':<22} {'ours':>14} {'paper':>7} {'paper multi-task':>17}", "-" * 70]
    for name, entry in best.items():
        task = TASKS.get(name)  # None: a task of your own, with no paper score
        for split, all_scores in entry["scores"].items():
            label = name if split == "dev" else f"{name}-{split[:2]}"
            scores = {k: v for k, v in all_scores.items() if not k.startswith(PER_TYPE)}
            shown = " / ".join(f"{v:.2f}" for v in scores.values())
            paper = f"{task.paper:.2f}" if task and task.paper is not None else "-"
            multi = f"{task.paper_multitask:.2f}" if task and task.paper_multitask is not None else "-"
            lines.append(f"{label:<6} {'/'.join(scores):<22} {shown:>14} {paper:>7} {multi:>17}")
            types = {k[len(PER_TYPE) :]: v for k, v in all_scores.items() if k.startswith(PER_TYPE)}
            if types:  # a tagging task's span F1 per type, on a line of its own
                lines.append(f"{'':<6} F1 per type: " + ", ".join(f"{t} {v:.2f}" for t, v in types.items()))
    return "\n".join(lines)
