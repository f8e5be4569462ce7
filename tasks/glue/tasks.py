"""The nine GLUE tasks, declared once: files, columns, labels, metrics, submission names, paper scores.

Columns name the header of the original GLUE distribution's TSV files (``SST-2/train.tsv`` ...);
CoLA's train/dev files have no header, so its columns there are 0-based indices. ``labels`` lists
the label strings as they appear in the local files, in the order of the Hugging Face
``nyu-mll/glue`` class ids; an empty tuple marks regression (STS-B).

A task also says where its data lives on the Hub and which columns it reads there (``hub_*``
fields; the defaults are nyu-mll/glue's), so a task of another Hub dataset is one more ``GlueTask``
value, for example a sentiment dataset with columns ``text``/``label``, no id column and no
validation split::

    GlueTask("imdb", "IMDB", None, ("text",), labeled=Columns("text", None, "label"),
             test=Columns("text", None, None), labels=("0", "1"), metrics=("accuracy",),
             hub_dataset="stanfordnlp/imdb", hub_index=None, hub_splits=(("train", "train"), ("dev", "test")))
"""

from __future__ import annotations

from dataclasses import dataclass

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.validation import shown
from tasks.finetune.kinds import Classification, Regression, TaskKind

# Our split names -> nyu-mll/glue's; a split not listed (the test splits: "test", "test_matched", ...) is named alike.
GLUE_HUB_SPLITS: tuple[tuple[str, str], ...] = (
    ("train", "train"),
    ("dev", "validation"),
    ("matched", "validation_matched"),
    ("mismatched", "validation_mismatched"),
)


@dataclass(frozen=True)
class Columns:
    """Where an example's parts are in one kind of file (header names, or indices without header)."""

    text_a: str | int
    text_b: str | int | None
    label: str | int | None  # None in test files
    index: str | int | None = None  # the id GLUE's submission format wants (test files)
    header: bool = True


@dataclass(frozen=True)
class GlueTask:
    name: str  # short name, also the task's name in the model and CLI: "sst2"
    directory: str  # folder in the GLUE distribution: "SST-2"
    hub_config: str | None  # configuration of the Hub dataset (hub_dataset); None for a dataset without any
    hub_text: tuple[str, ...]  # text columns on the Hub (one, or a pair)
    labeled: Columns  # train and dev files
    test: Columns
    labels: tuple[str, ...]  # label names of a classification; () for a score
    metrics: tuple[str, ...]  # the first is the paper's (docs/design.md); model selection and the sweep use it
    dev: tuple[tuple[str, str], ...] = (("dev", "dev"),)  # (split name, file stem); Hub split: hub_splits
    test_files: tuple[tuple[str, str], ...] = (("test", "test"),)  # (file stem, submission file stem)
    submission: str = ""  # submission file stem for a single test file
    paper: float | None = None  # Perceiver IO (single-task, 201M) dev score (Jaegle et al., 2021)
    paper_multitask: float | None = None  # Perceiver IO with multi-task queries
    hub_dataset: str = "nyu-mll/glue"  # the Hub dataset the task loads without --glue-dir
    hub_label: str = "label"  # label column on the Hub: class ids (order of labels), label strings or scores; -1: none
    hub_index: str | None = "idx"  # example id column on the Hub; None: the row number is the id
    hub_splits: tuple[tuple[str, str], ...] = GLUE_HUB_SPLITS  # (our split name, Hub split); others named alike
    # A task of your own from files: (our split name, file path), read with `datasets`' csv/json/parquet
    # builders by extension (.tsv is tab-separated); its label column holds label names (``labels``), not ids.
    files: tuple[tuple[str, str], ...] = ()
    # What the labels are (`tasks.finetune.kinds`); None: classification when there are label names, else regression
    # (the GLUE table's tasks).
    task_kind: TaskKind | None = None

    def hub_split(self, name: str) -> str:
        """The Hub split of our split ``name`` ("dev" -> "validation"); a split not in hub_splits is named alike."""
        return dict(self.hub_splits).get(name, name)

    @property
    def kind(self) -> TaskKind:
        """What the task's labels are (`tasks.finetune.kinds`): label names to choose from, or a score."""
        if self.task_kind is not None:
            return self.task_kind
        return Classification() if self.labels else Regression()

    @property
    def num_outputs(self) -> int:
        return self.kind.num_outputs(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.kind.regression


_PAIR_INDEXED = Columns("sentence1", "sentence2", "label", index="index")

TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask(
            "cola",
            "CoLA",
            "cola",
            ("sentence",),
            labeled=Columns(3, None, 1, header=False),
            test=Columns("sentence", None, None, index="index"),
            labels=("0", "1"),
            metrics=("matthews",),
            submission="CoLA",
            paper=50.19,
            paper_multitask=47.88,
        ),
        GlueTask(
            "sst2",
            "SST-2",
            "sst2",
            ("sentence",),
            labeled=Columns("sentence", None, "label"),
            test=Columns("sentence", None, None, index="index"),
            labels=("0", "1"),
            metrics=("accuracy",),
            submission="SST-2",
            paper=93.17,
            paper_multitask=93.75,
        ),
        GlueTask(
            "mrpc",
            "MRPC",
            "mrpc",
            ("sentence1", "sentence2"),
            labeled=Columns("#1 String", "#2 String", "Quality"),
            test=Columns("#1 String", "#2 String", None, index="index"),
            labels=("0", "1"),
            metrics=("accuracy", "f1"),
            submission="MRPC",
            paper=87.24,
            paper_multitask=90.36,
        ),
        GlueTask(
            "stsb",
            "STS-B",
            "stsb",
            ("sentence1", "sentence2"),
            labeled=Columns("sentence1", "sentence2", "score"),
            test=Columns("sentence1", "sentence2", None, index="index"),
            labels=(),
            metrics=("pearson", "spearman"),
            submission="STS-B",
            paper=86.81,
            paper_multitask=79.95,
        ),
        GlueTask(
            "qqp",
            "QQP",
            "qqp",
            ("question1", "question2"),
            labeled=Columns("question1", "question2", "is_duplicate"),
            test=Columns("question1", "question2", None, index="id"),
            labels=("0", "1"),
            metrics=("accuracy", "f1"),
            submission="QQP",
            paper=90.12,
            paper_multitask=89.49,
        ),
        GlueTask(
            "mnli",
            "MNLI",
            "mnli",
            ("premise", "hypothesis"),
            labeled=Columns("sentence1", "sentence2", "gold_label"),
            test=Columns("sentence1", "sentence2", None, index="index"),
            labels=("entailment", "neutral", "contradiction"),
            metrics=("accuracy",),
            dev=(("matched", "dev_matched"), ("mismatched", "dev_mismatched")),
            test_files=(("test_matched", "MNLI-m"), ("test_mismatched", "MNLI-mm")),
            paper=83.22,
            paper_multitask=82.05,
        ),
        GlueTask(
            "qnli",
            "QNLI",
            "qnli",
            ("question", "sentence"),
            labeled=Columns("question", "sentence", "label"),
            test=Columns("question", "sentence", None, index="index"),
            labels=("entailment", "not_entailment"),
            metrics=("accuracy",),
            submission="QNLI",
            paper=91.71,
            paper_multitask=90.37,
        ),
        GlueTask(
            "rte",
            "RTE",
            "rte",
            ("sentence1", "sentence2"),
            labeled=_PAIR_INDEXED,
            test=Columns("sentence1", "sentence2", None, index="index"),
            labels=("entailment", "not_entailment"),
            metrics=("accuracy",),
            submission="RTE",
            paper=64.84,
            paper_multitask=80.08,
        ),
        GlueTask(
            "wnli",
            "WNLI",
            "wnli",
            ("sentence1", "sentence2"),
            labeled=_PAIR_INDEXED,
            test=Columns("sentence1", "sentence2", None, index="index"),
            labels=("0", "1"),
            metrics=("accuracy",),
            submission="WNLI",
        ),
    )
}


def parse_tasks(spec: str) -> list[GlueTask]:
    """Tasks from a comma-separated list such as ``sst2,cola`` (or ``all``), in the order given."""
    names = (
        list(TASKS)
        if spec.strip() == "all"
        else [n.strip().lower().replace("-", "") for n in spec.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise PerceiverLMError(
            f"--tasks: unknown GLUE task(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(TASKS)} or all"
        )
    if len(set(names)) != len(names):
        raise PerceiverLMError(f"--tasks: a task is listed twice ({shown(spec)})")
    return [TASKS[n] for n in names]
