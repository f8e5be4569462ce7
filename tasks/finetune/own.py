"""Tasks of your own: labelled text from CSV/TSV/JSON/JSON Lines/Parquet files, declared by options or a task file.

An own task becomes a `GlueTask` like the nine GLUE ones (so everything fine-tuning does, it does for
it: the multi-task query decoder, length buckets, resume, best/, model cards, noise, metrics). Its
labels are the label column's values in the training file, sorted (numerically when they are all
numbers); the saved model keeps its declaration and label names (``TaskSpec.about``), so that
``glue eval`` and ``glue predict`` read the same columns and write the label names back.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perceiver_lm.config import MultiTaskConfig, TaskSpec
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.options import read_options_file
from perceiver_lm.validation import shown
from tasks.finetune.data import read_rows
from tasks.finetune.kinds import TaskKind, kind_named, label_name
from tasks.finetune.metrics import TAGGING_METRICS, metric_names
from tasks.finetune.options import GlueOptions
from tasks.glue.tasks import TASKS, Columns, GlueTask, parse_tasks

OWN_SPLITS = (("train", "train"), ("dev", "dev"), ("test", "test"))
MAX_LABELS = 1024  # as many outputs as a task head may have (MultiTaskConfig)


@dataclass(frozen=True)
class OwnTask:
    """How one task of your own reads its data: the ``glue train`` options of that name, or a task-file entry."""

    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    dataset: str | None = None  # a Hugging Face dataset (Hub name or local folder) instead of files
    dataset_config: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    text_column: str | None = None  # None: the kind's (`TaskKind.columns`): text, or tokens for tagging
    text_pair_column: str | None = None
    label_column: str | None = None  # None: the kind's: label, or tags for tagging
    id_column: str | None = None
    type: str = "classification"
    name: str | None = None
    metrics: tuple[str, ...] = ()

    def task_name(self) -> str:
        source = Path(self.train_file) if self.dataset is None else Path(self.dataset) / "train"
        name = self.name or _name_of(source)
        name = name if not name[0].isdigit() else f"t_{name}"
        if not name.isidentifier():
            raise PerceiverLMError(f"task name {shown(name)}: expected letters, digits and _ (pass --task-name)")
        return name


def _name_of(train_file: Path) -> str:
    """A task name from its training file: ``reviews_train.csv`` -> reviews, ``imdb/train.jsonl`` -> imdb."""
    for text in (train_file.stem, train_file.parent.name):
        words = [w for w in re.split(r"\W+|_", text.lower()) if w and w not in ("train", "training")]
        if words:
            return "_".join(words)
    return "task"


def declared(options: GlueOptions) -> list[OwnTask]:
    """The tasks of your own that ``options`` declare: the single task of --train-file, then --task-file's."""
    own = []
    if options.train_file is not None or options.dataset is not None:
        own.append(
            OwnTask(
                **{f: getattr(options, f) for f in ("train_file", "validation_file", "test_file", "dataset")},
                **{f: getattr(options, f) for f in ("dataset_config", "train_split", "validation_split", "test_split")},
                **{f: getattr(options, f) for f in ("text_column", "text_pair_column", "label_column", "id_column")},
                type=options.task_type,
                name=options.task_name,
                metrics=tuple(options.task_metrics),
            )
        )
    if options.task_file is not None:
        own += read_task_file(options.task_file)
    return own


def read_task_file(path: str) -> list[OwnTask]:
    """The ``[[task]]`` tables of a TOML or JSON task file; relative paths are relative to the file."""
    data = read_options_file(path, "--task-file")
    entries = data.get("task")
    if set(data) != {"task"} or not isinstance(entries, list) or not entries:
        raise PerceiverLMError(f"--task-file {path}: expected [[task]] tables (a list under the key 'task')")
    fields = {f.name: f for f in dataclasses.fields(OwnTask)}
    tasks = []
    for number, entry in enumerate(entries, start=1):
        where = f"--task-file {path}: task {number}"
        if not isinstance(entry, dict):
            raise PerceiverLMError(f"{where}: expected a table of task options")
        unknown = sorted(set(entry) - set(fields))
        if unknown:
            raise PerceiverLMError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(fields)})")
        missing = [k for k in ("train_file", "validation_file") if k not in entry]
        if missing and "dataset" not in entry:
            raise PerceiverLMError(f"{where}: needs {' and '.join(missing)} (or a dataset)")
        for key, value in entry.items():
            wanted = (list, tuple) if key == "metrics" else (str, type(None))
            if not isinstance(value, wanted) or (key == "metrics" and not all(isinstance(m, str) for m in value)):
                raise PerceiverLMError(f"{where}: {key} must be {'a list of names' if key == 'metrics' else 'text'}")
        folder = Path(path).parent
        files = {k: str(folder / v) for k, v in entry.items() if k.endswith("_file") and v is not None}
        tasks.append(OwnTask(**{**entry, **files, "metrics": tuple(entry.get("metrics", ()))}))
    return tasks


def _sorted_labels(values: set[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(values, key=float))
    except ValueError:
        return tuple(sorted(values))


def _kind(name: str, where: str) -> TaskKind:
    try:
        return kind_named(name, where)
    except ValueError as err:
        raise PerceiverLMError(str(err)) from None


def build_task(own: OwnTask) -> GlueTask:
    """The `GlueTask` of a task of your own, with its labels read from its training file."""
    name = own.task_name()
    kind = _kind(own.type, f"task {name}")
    text_column, label_column = own.text_column or kind.columns[0], own.label_column or kind.columns[1]
    own = dataclasses.replace(own, text_column=text_column, label_column=label_column)
    if kind.per_word and own.text_pair_column is not None:
        raise PerceiverLMError(f"task {name}: a {kind.name} task reads one column of words (no --text-pair-column)")
    labels = _labels_of(own, kind) if kind.named_labels else ()
    metrics = tuple(own.metrics) or kind.default_metrics(labels)
    known = (*metric_names(), *TAGGING_METRICS)
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise PerceiverLMError(f"task {name}: unknown metric(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    mismatched = [m for m in metrics if m not in kind.metric_names()]
    if mismatched:
        raise PerceiverLMError(
            f"task {name}: metric(s) {', '.join(mismatched)} do not score {kind.name} "
            f"(choose from {', '.join(kind.metric_names())})"
        )
    if "f1" in metrics and len(labels) != 2:
        raise PerceiverLMError(f"task {name}: f1 scores a two-label task (its second label is the positive one)")
    text = (own.text_column,) if own.text_pair_column is None else (own.text_column, own.text_pair_column)
    if own.dataset is not None:
        splits = (("train", own.train_split), ("dev", own.validation_split), ("test", own.test_split))
        # A local folder is stored absolute (as files are); anything else is a Hub name.
        dataset = os.path.abspath(own.dataset) if os.path.isdir(own.dataset) else own.dataset
        columns = (own.label_column, own.id_column)
        return own_task(name, text, *columns, labels, metrics, own.dataset_config, dataset, splits, kind=kind)
    # Stored absolute in the model, so that `glue eval` and `glue predict` find them from any folder.
    files = (
        ("train", os.path.abspath(own.train_file)),
        ("dev", os.path.abspath(own.validation_file)),
        *((("test", os.path.abspath(own.test_file)),) if own.test_file else ()),
    )
    return own_task(name, text, own.label_column, own.id_column, labels, metrics, files=files, kind=kind)


def own_task(
    name: str,
    text: tuple[str, ...],
    label_column: str,
    id_column: str | None,
    labels: tuple[str, ...],
    metrics: tuple[str, ...],
    config: str | None = None,
    dataset: str = "",
    splits: tuple[tuple[str, str], ...] = OWN_SPLITS,
    files: tuple[tuple[str, str], ...] = (),
    kind: TaskKind | None = None,
) -> GlueTask:
    """The `GlueTask` of a task of your own: from a dataset (its configuration and splits) or from ``files``."""
    pair = text[1] if len(text) > 1 else None
    return GlueTask(
        name,
        name,
        config,
        text,
        labeled=Columns(text[0], pair, label_column, id_column),
        test=Columns(text[0], pair, None, id_column),
        labels=labels,
        metrics=metrics,
        submission=name,  # predictions go to NAME.tsv
        hub_dataset=dataset,
        hub_label=label_column,
        hub_index=id_column,
        hub_splits=splits,
        files=files,
        task_kind=kind,
    )


def _labels_of(own: OwnTask, kind: TaskKind) -> tuple[str, ...]:
    """The label names of a classification (tagging) task: a dataset's class names, else the training split's
    values (tags)."""
    if own.dataset is not None:
        import datasets

        where = f"--dataset {own.dataset}:{own.train_split}"
        try:
            rows = datasets.load_dataset(own.dataset, own.dataset_config, split=own.train_split)
        except Exception as err:  # datasets raises many types when offline or a name is unknown
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise PerceiverLMError(f"{where}: cannot be loaded ({first[:300]})") from None
        feature = rows.features.get(own.label_column)
        if kind.per_word:  # tags: a sequence (or list) of class ids
            feature = getattr(feature, "feature", feature[0] if isinstance(feature, list) and feature else None)
        if isinstance(feature, datasets.ClassLabel):  # class ids, named by the dataset
            return tuple(feature.names)
    else:
        where, rows = own.train_file, read_rows(own.train_file)
    if own.label_column not in rows.column_names:
        raise PerceiverLMError(f"{where}: no column {shown(own.label_column)} (found: {', '.join(rows.column_names)})")
    if kind.per_word:
        values = set()
        for row, cell in enumerate(rows[own.label_column], start=1):
            if own.dataset is not None and isinstance(cell, list) and any(isinstance(t, int) for t in cell):
                # A dataset's tag ids name their tags only through a ClassLabel feature (read above).
                raise PerceiverLMError(
                    f"{where}: column {shown(own.label_column)} holds tag ids without class names (row {row}); give "
                    "tag names, or a Sequence(ClassLabel) feature"
                )
            try:
                values.update(kind.label_values(cell))
            except ValueError as err:
                raise PerceiverLMError(f"{where}: row {row}, column {shown(own.label_column)}: {err}") from None
    else:
        values = rows.unique(own.label_column)
    if any(v is None or v == "" for v in values):
        cells = enumerate(rows[own.label_column], start=1)
        row = next(i for i, v in cells if any(x in (None, "") for x in kind.label_values(v)))
        raise PerceiverLMError(f"{where}: row {row}, column {shown(own.label_column)}: no label")
    if own.dataset is not None and not all(isinstance(v, str) for v in values):
        raise PerceiverLMError(
            f"{where}: column {shown(own.label_column)} holds numbers without class names; give label names, or pass "
            "--task-type regression"
        )
    labels = _sorted_labels({label_name(v) for v in values})
    if not 2 <= len(labels) <= MAX_LABELS:
        raise PerceiverLMError(
            f"{where}: column {shown(own.label_column)} holds {len(labels)} distinct label(s); "
            f"classification needs 2 to {MAX_LABELS} (or pass --task-type regression)"
        )
    return labels


def job_tasks(options: GlueOptions) -> list[GlueTask]:
    """Every task a run trains: the GLUE ones of --tasks (sst2 when nothing else is given), then your own."""
    own = [build_task(t) for t in declared(options)]
    glue = parse_tasks(options.tasks) if options.tasks is not None else ([] if own else parse_tasks("sst2"))
    tasks = glue + own
    names = [t.name for t in tasks]
    clash = sorted({n for n in names if names.count(n) > 1} | {t.name for t in own if t.name in TASKS})
    if clash:
        raise PerceiverLMError(
            f"task name(s) {', '.join(clash)} taken twice (a GLUE task or another task); pass --task-name"
        )
    return tasks


def heads(
    tasks: list[GlueTask],
    head_hidden: int,
    max_length: int | None = None,
    window: int | None = None,
    word_features: bool = False,
) -> MultiTaskConfig:
    """The task heads of a model for ``tasks`` reading ``max_length`` bytes of each example (None: the window)
    in windows of ``window`` bytes (None: the model's); a task of your own keeps its declaration in the model."""
    specs = (
        TaskSpec(t.name, t.num_outputs, about=_about(t) if is_own(t) else None, per_word=t.kind.per_word) for t in tasks
    )
    return MultiTaskConfig(tuple(specs), head_hidden, max_length=max_length, window=window, word_features=word_features)


def is_own(task: GlueTask) -> bool:
    """Whether ``task`` is a task of your own (not one of the GLUE table's)."""
    return TASKS.get(task.name) is not task


def _about(task: GlueTask) -> dict[str, Any]:
    source = {"files": dict(task.files)} if task.files else {
        "dataset": task.hub_dataset,
        "dataset_config": task.hub_config,
        "splits": dict(task.hub_splits),
    }  # fmt: skip
    return {
        **source,
        "text_columns": list(task.hub_text),
        "label_column": task.hub_label,
        "id_column": task.hub_index,
        "labels": list(task.labels),
        "metrics": list(task.metrics),
        "type": task.kind.name,
    }


def model_tasks(tasks: MultiTaskConfig, files: dict[str, str] | None = None) -> list[GlueTask]:
    """The tasks of a fine-tuned model: GLUE tasks by name, tasks of your own from their saved declaration,
    with ``files`` (split name -> file) replacing the ones they were trained with."""
    out = []
    for spec in tasks.tasks:
        if spec.about is None:
            out.append(parse_tasks(spec.name)[0])
            continue
        about = spec.about
        text = tuple(about["text_columns"])
        if "dataset" in about and files:
            raise PerceiverLMError(f"task {spec.name} reads the dataset {about['dataset']}, not files")
        out.append(
            own_task(
                spec.name,
                text,
                about["label_column"],
                about["id_column"],
                tuple(about["labels"]),
                tuple(about["metrics"]),
                about.get("dataset_config"),
                about.get("dataset", ""),
                tuple(about["splits"].items()) if "splits" in about else OWN_SPLITS,
                tuple({**about.get("files", {}), **(files or {})}.items()),
                # Models saved before the kinds were named: label names, or a score.
                _kind(about.get("type") or ("classification" if about["labels"] else "regression"), spec.name),
            )
        )
    return out
