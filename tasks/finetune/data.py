"""Fine-tuning examples as byte ids: splits of every task (from a task's own files, a Hugging Face dataset, or
the GLUE distribution through `tasks.glue.files`), noise, batches of one task at a time.

A task's own files: CSV/TSV read cell by cell as text, JSON/JSON Lines/Parquet through `datasets`, CoNLL
column files; every row checked, and a bad one is one line naming file, row and column.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.noise import Noise, apply_all, example_seed
from perceiver_lm.options import MAX_SEED
from perceiver_lm.tokenizer import encode_example, pad_batch, pad_word_positions
from perceiver_lm.user_files import check_input_file
from perceiver_lm.validation import check_range, shown
from tasks.finetune.kinds import IGNORED, Encoded
from tasks.glue.tasks import TASKS, GlueTask


@dataclass
class GlueSplit:
    """One split of one task, encoded: ids per example, labels (class ids or scores), GLUE ids."""

    task: GlueTask
    name: str  # "train", "dev", "matched", "test_mismatched", ...
    source: str  # file path or Hub id, for messages
    ids: list[np.ndarray] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)  # targets (`TaskKind.target`); empty for unlabeled test splits
    index: list[str] = field(default_factory=list)  # GLUE example ids (test splits)
    skipped: int = 0
    words: list[tuple[str, ...]] = field(default_factory=list)  # a per-word task's words per example
    reads: list[np.ndarray] = field(default_factory=list)  # ...and their first and last bytes (`Encoded.reads`)
    texts: list[str | None] = field(default_factory=list)  # ...the text they were cut from (character spans)
    offsets: list[np.ndarray | None] = field(default_factory=list)  # ...and their characters in it

    def add(self, encoded: Encoded, example_id: str | None = None) -> None:
        """Append one encoded example (and its id)."""
        self.ids.append(encoded.ids)
        if encoded.reads is not None:
            self.words.append(encoded.words)
            self.reads.append(encoded.reads)
            self.texts.append(encoded.text)
            self.offsets.append(encoded.offsets)
        if example_id is not None:
            self.index.append(example_id)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labeled(self) -> bool:
        return len(self.labels) == len(self.ids)


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
        words=[split.words[i] for i in keep] if split.words else [],
        reads=[split.reads[i] for i in keep] if split.reads else [],
        texts=[split.texts[i] for i in keep] if split.texts else [],
        offsets=[split.offsets[i] for i in keep] if split.offsets else [],
    )


@dataclass(frozen=True)
class Corruption:
    """Noise applied to every example's texts before encoding; example i's text k draws from (seed, 2 i + k)."""

    noises: tuple[Noise, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise PerceiverLMError(f"noise seed must be an integer, got {type(self.seed).__name__}")
        check_range("noise seed", self.seed, 0, MAX_SEED)  # as every seed option (--seed, --noise-seed)

    def encode(self, a: str, b: str | None, example: int, max_length: int) -> np.ndarray:
        if self.noises:
            a = apply_all(a, self.noises, example_seed(self.seed, 2 * example))
            b = None if b is None else apply_all(b, self.noises, example_seed(self.seed, 2 * example + 1))
        return encode_example(a, b, max_length)

    def describe(self) -> str:
        return "" if not self.noises else " with noise " + "+".join(map(str, self.noises))


CLEAN = Corruption()


def nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _hub_split(task: GlueTask, name: str, max_length: int, corruption: Corruption) -> GlueSplit:
    """Split ``name`` of ``task`` from the Hub: its dataset, configuration, split names and columns (``task.hub_*``)."""
    hub_name = task.hub_split(name)
    where = task.hub_dataset if task.hub_config is None else f"{task.hub_dataset}/{task.hub_config}"
    tests = dict(task.test_files)
    glue = TASKS.get(task.name) is task
    prefix = f"{'GLUE ' if glue else 'task '}{task.name} {name}: {where}:{hub_name}"
    try:
        import datasets

        rows = datasets.load_dataset(task.hub_dataset, task.hub_config, split=hub_name)
    except Exception as err:  # datasets raises many types when offline or the split is unknown
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = (
            "the Hub is unreachable (offline mode is on)"
            if offline
            else (str(err).strip().splitlines() or [type(err).__name__])[0]
        )
        if not glue:
            raise PerceiverLMError(f"task {task.name} {name}: --dataset {where} cannot be loaded: {hint}") from None
        raise PerceiverLMError(
            f"GLUE {task.name} {name}: no --glue-dir given and {task.hub_dataset} cannot be loaded: {hint}; "
            "pass --glue-dir DIR with the original GLUE layout (SST-2/train.tsv, ...)"
        ) from None
    labeled = task.hub_label in rows.column_names or name == "train" or name in dict(task.dev)  # test: optional
    columns = (*task.hub_text, *([task.hub_label] if labeled else []), *([task.hub_index] if task.hub_index else []))
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise PerceiverLMError(
            f"{prefix} has no column {', '.join(map(repr, missing))} (found: {', '.join(rows.column_names)})"
        )
    split = GlueSplit(task, name, f"{where}:{hub_name}{corruption.describe()}")
    kind = task.kind
    for row_number, row in enumerate(rows):
        try:
            encoded = kind.encode([row[c] for c in task.hub_text], max_length, corruption, len(split.ids))
        except ValueError as err:
            raise PerceiverLMError(f"{prefix} row {row_number}: {err}") from None
        split.add(encoded, str(row_number if task.hub_index is None else row[task.hub_index]))
        label = row[task.hub_label] if labeled else None
        if kind.per_word and label is not None:
            if isinstance(label, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in label):
                # Tag ids of a Sequence(ClassLabel) column, named by the task's labels (the dataset's names).
                if any(not 0 <= t < len(task.labels) for t in label):
                    top = len(task.labels) - 1
                    raise PerceiverLMError(f"{prefix} row {row_number}: tag ids {label} outside 0..{top}")
                label = [task.labels[t] for t in label]
            split.labels.append(_checked_target(task, encoded, label, f"{prefix} row {row_number}"))
        elif isinstance(label, str):  # a label string, as in local files, rather than a class id
            try:
                split.labels.append(task.kind.target(label, task.labels))
            except ValueError as err:
                raise PerceiverLMError(f"{prefix} row {row_number}: {err}") from None
        elif label is not None and not (label == -1 and (not kind.regression or name in tests)):
            # -1 is the Hub's "no label" (test splits, and class ids); a regression target of -1 is a target.
            if not np.isfinite(float(label)):
                raise PerceiverLMError(
                    f"{prefix}: row {row_number}, column {shown(task.hub_label)}: the target {label} is not finite"
                )
            split.labels.append(float(label))
    if not split.ids:
        raise PerceiverLMError(f"{prefix}: no examples")
    if split.labels and len(split.labels) != len(split.ids):
        raise PerceiverLMError(
            f"{prefix}: {len(split.ids) - len(split.labels)} of {len(split.ids)} "
            f"rows have no label in column {shown(task.hub_label)}; a split is labelled throughout or not at all"
        )
    return split


# File extension -> (datasets builder, its arguments) for the files of a task of your own that a builder reads
# (JSON keeps its own types); CSV and TSV are read by `read_delimited`, every cell as text.
FILE_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
# TSV: one row a line, quoting off (a text may start with a quote, as GLUE's do); CSV: RFC 4180 quoting.
DELIMITED: dict[str, dict[str, Any]] = {
    ".tsv": {"delimiter": "\t", "quoting": csv.QUOTE_NONE},
    ".csv": {"delimiter": ",", "quoting": csv.QUOTE_MINIMAL},
}
# Column files of tagged words (CoNLL), one word a line and a blank line between sentences: read by `read_conll`.
CONLL = (".conll", ".conllu")
OWN_FILE_KINDS = (".csv", ".tsv", *FILE_BUILDERS, *CONLL)


def read_conll(path: str, untagged: bool = False) -> dict[str, list[list[str]]]:
    """The sentences of a CoNLL column file as columns ``tokens`` and ``tags`` (lists per sentence). With
    ``untagged`` (a test file) a ``.conll`` file may hold words alone, a word a line: then it has no ``tags``.

    ``.conll`` (CoNLL-2003 and the like): a word's line holds the word first and its tag last, separated by tabs
    (then a word may hold spaces) or spaces; ``-DOCSTART-`` lines are skipped. ``.conllu`` (Universal
    Dependencies): ten tab-separated fields, the word FORM second and UPOS fourth (``tags``; XPOS also as
    ``xpos``), ``#`` comments skipped, and so are multiword-token ranges (``3-4``) and empty nodes (``5.1``),
    which are not words of the sentence's tags.
    """
    universal = path.lower().endswith(".conllu")
    columns: dict[str, list[list[str]]] = {"tokens": [], "tags": [], **({"xpos": []} if universal else {})}
    sentence: dict[str, list[str]] = {name: [] for name in columns}

    def close() -> None:
        if sentence["tokens"]:
            for name in columns:
                columns[name].append(sentence[name])
                sentence[name] = []

    try:
        with open(path, encoding="utf-8-sig", newline=None, opener=nonblocking) as handle:
            for number, line in enumerate(handle, start=1):
                line = line.rstrip("\n")
                if not line.strip():
                    close()
                    continue
                if universal:
                    if line.startswith("#"):
                        continue
                    fields = line.split("\t")
                    if len(fields) != 10:
                        raise PerceiverLMError(
                            f"{path}: line {number}: {len(fields)} tab-separated field(s), CoNLL-U has 10"
                        )
                    if "-" in fields[0] or "." in fields[0]:
                        continue
                    word, tag, xpos = fields[1], fields[3], fields[4]
                    sentence["xpos"].append(xpos)
                else:
                    # Tab-separated columns may hold a word with spaces; otherwise any whitespace separates them.
                    fields = [f for f in line.split("\t") if f.strip()] if "\t" in line else line.split()
                    if fields[0] == "-DOCSTART-":
                        continue
                    if untagged and not columns["tokens"] and not sentence["tokens"]:  # the first word decides
                        untagged = len(fields) == 1
                    if len(fields) < 2 and not untagged:
                        raise PerceiverLMError(f"{path}: line {number}: expected a word and its tag, got {shown(line)}")
                    if len(fields) > 1 and untagged:
                        raise PerceiverLMError(f"{path}: line {number}: a word alone, as on the file's first line, got "
                                               f"{shown(line)}")  # fmt: skip
                    word, tag = (fields[0], "") if untagged else (fields[0], fields[-1])
                sentence["tokens"].append(word)
                sentence["tags"].append(tag)
    except UnicodeDecodeError as err:
        raise PerceiverLMError(f"{path}: not UTF-8 text (byte {err.start})") from None
    close()
    if not columns["tokens"]:
        raise PerceiverLMError(f"{path}: no sentences")
    return {k: v for k, v in columns.items() if k != "tags"} if untagged and not universal else columns


def read_delimited(path: str, dialect: dict[str, Any]) -> dict[str, list[str]]:
    """The columns of a CSV/TSV file with a header row, every cell the text it holds: nothing is typed, nothing
    read as missing (``NA``, ``null`` and ``007`` stay what they are), and a row of another width than the
    header is an error naming its line, so that no row is lost or merged into another."""
    size = os.stat(path).st_size
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, size + 1))  # no cell is longer than the file (the default is 131,072)
    try:
        with open(path, encoding="utf-8-sig", newline="", opener=nonblocking) as handle:
            reader = csv.reader(handle, strict=True, **dialect)
            try:
                header = next(reader, None)
                if header is None:
                    raise PerceiverLMError(f"{path}: no examples")
                repeated = sorted({c for c in header if header.count(c) > 1})
                if repeated:
                    raise PerceiverLMError(f"{path}: line 1: column name(s) {', '.join(map(shown, repeated))} twice")
                columns: dict[str, list[str]] = {name: [] for name in header}
                for row in reader:
                    if not row:  # a blank line holds no row
                        continue
                    if len(row) != len(header):
                        raise PerceiverLMError(
                            f"{path}: line {reader.line_num}: {len(row)} field(s), the header has {len(header)}"
                            + (" (quoting is off in TSV files: a tab inside a text splits it)" if "\t" in
                               dialect["delimiter"] else "")
                        )  # fmt: skip
                    for name, cell in zip(header, row, strict=True):
                        columns[name].append(cell)
            except csv.Error as err:
                raise PerceiverLMError(f"{path}: line {reader.line_num}: {err}") from None
    except UnicodeDecodeError as err:
        raise PerceiverLMError(f"{path}: not UTF-8 text (byte {err.start})") from None
    finally:
        csv.field_size_limit(limit)
    if not next(iter(columns.values()), []):
        raise PerceiverLMError(f"{path}: no examples")
    return columns


def read_rows(path: str, split: str = "train") -> Any:
    """The rows of one CSV/TSV/JSON/JSON Lines/Parquet file as a `datasets.Dataset`, or one line saying why not."""
    suffix = Path(path).suffix.lower()
    if suffix not in OWN_FILE_KINDS:
        raise PerceiverLMError(f"{path}: expected a {', '.join(OWN_FILE_KINDS)} file")
    check_input_file(path, what=f"{suffix[1:].upper()} file")  # datasets would read a FIFO or a device forever
    import datasets

    if suffix in DELIMITED:
        return datasets.Dataset.from_dict(read_delimited(path, DELIMITED[suffix]))
    if suffix in CONLL:
        return datasets.Dataset.from_dict(read_conll(path, untagged=split == "test"))
    builder, kwargs = FILE_BUILDERS[suffix]
    shown_bars = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a local file loads in moments: its bars would only surround an error line
    try:
        return datasets.load_dataset(builder, data_files={split: str(path)}, split=split, **kwargs)
    except Exception as err:  # the builders raise many types (pyarrow, json) for a malformed file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "corresponds to no data" in first or Path(path).stat().st_size == 0:  # a header, or nothing at all
            raise PerceiverLMError(f"{path}: no examples") from None
        raise PerceiverLMError(f"{path}: cannot read it as {builder} ({first[:300]})") from None
    finally:
        if shown_bars:
            datasets.enable_progress_bars()


def _file_split(task: GlueTask, name: str, max_length: int, corruption: Corruption) -> GlueSplit:
    """Split ``name`` of a task of your own from its file: texts, label names (or scores) and ids, checked per row."""
    files = dict(task.files)
    if name not in files:
        raise PerceiverLMError(f"task {task.name}: no file for its {name} split (give --{name}-file)")
    path = files[name]
    rows = read_rows(path, "test" if name == "test" else "train")
    labeled = task.hub_label in rows.column_names or name != "test"  # a test file may come without labels
    wanted = [*task.hub_text, *([task.hub_label] if labeled else []), *([task.hub_index] if task.hub_index else [])]
    missing = [c for c in wanted if c not in rows.column_names]
    if missing:
        raise PerceiverLMError(
            f"{path}: no column {', '.join(map(repr, missing))} (found: {', '.join(rows.column_names)})"
        )
    split = GlueSplit(task, name, f"{path}{corruption.describe()}")
    for number, row in enumerate(rows, start=1):
        try:
            encoded = task.kind.encode([row[c] for c in task.hub_text], max_length, corruption, len(split.ids))
        except ValueError as err:
            columns = ", ".join(map(shown, task.hub_text))
            raise PerceiverLMError(f"{path}: row {number}, column {columns}: {err}") from None
        if labeled:
            where = f"{path}: row {number}, column {shown(task.hub_label)}"
            split.labels.append(_checked_target(task, encoded, row[task.hub_label], where))
        split.add(encoded, str(number - 1 if task.hub_index is None else row[task.hub_index]))
    if not split.ids:
        raise PerceiverLMError(f"{path}: no examples")
    return split


def _checked_target(task: GlueTask, encoded: Encoded, value: Any, where: str) -> Any:
    """The target of a row's label cell given the row's inputs (a tag per word, or character spans)."""
    try:
        return task.kind.row_target(encoded, value, task.labels)
    except ValueError as err:
        raise PerceiverLMError(f"{where}: {err}") from None


def load_split(
    task: GlueTask,
    name: str,
    glue_dir: str | Path | None,
    max_length: int,
    skip_bad_rows: bool = False,
    corruption: Corruption = CLEAN,
) -> GlueSplit:
    """Load split ``name`` of ``task``: "train", a dev split (see ``task.dev``) or a test file stem.

    Args:
        task: the task, from `tasks.glue.tasks.TASKS`.
        name: "train", the split names in ``task.dev`` ("dev"; MNLI "matched"/"mismatched"), or
            the test file stems in ``task.test_files`` ("test"; MNLI "test_matched", ...).
        glue_dir: the GLUE distribution directory; None loads from the Hugging Face Hub.
        max_length: truncate every example to this many ids (specials included).
        skip_bad_rows: count and skip malformed rows instead of failing.
        corruption: noise applied to the texts before encoding (robustness evaluation, augmentation).
    """
    if max_length < 4:
        raise PerceiverLMError(f"--max-length must be at least 4, got {max_length}")
    dev = dict(task.dev)
    tests = dict(task.test_files)
    if name != "train" and name not in dev and name not in tests:
        kind = "GLUE " if TASKS.get(task.name) is task else "task "
        raise PerceiverLMError(f"{kind}{task.name} has no split {shown(name)} (train, {', '.join([*dev, *tests])})")
    if task.files:
        return _file_split(task, name, max_length, corruption)
    if glue_dir is None:
        return _hub_split(task, name, max_length, corruption)
    folder = Path(glue_dir) / task.directory
    if not Path(glue_dir).is_dir():
        what = "is not a folder" if Path(glue_dir).exists() else "no such file or folder"
        raise PerceiverLMError(f"--glue-dir {glue_dir}: {what}")
    if not folder.is_dir():
        raise PerceiverLMError(f"--glue-dir {glue_dir}: no {task.directory}/ folder for task {task.name}")
    from tasks.glue.files import read_tsv  # here: the GLUE reader builds on this module's splits

    if name in tests:
        return read_tsv(task, folder / f"{name}.tsv", task.test, name, max_length, skip_bad_rows, corruption)
    stem = dev.get(name, "train")
    return read_tsv(task, folder / f"{stem}.tsv", task.labeled, name, max_length, skip_bad_rows, corruption)


class TaskExamples(torch.utils.data.Dataset):
    """Examples of several tasks in one indexable dataset; item = (ids, label, task index, position, word positions
    or None, task kind)."""

    def __init__(self, splits: list[GlueSplit], task_indices: list[int]) -> None:
        self.items = []
        self.offsets = []
        for split, task_index in zip(splits, task_indices, strict=True):
            self.offsets.append(len(self.items))
            kind = split.task.kind
            reads = split.reads or [None] * len(split)
            labels = split.labels if split.labeled else [None] * len(split)
            self.items += [
                (ids, label, task_index, i, at, kind)
                for i, (ids, label, at) in enumerate(zip(split.ids, labels, reads, strict=True))
            ]
        self.sizes = [len(s) for s in splits]
        self.lengths = np.array([len(item[0]) for item in self.items])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class ProportionalBatches(torch.utils.data.Sampler):
    """Batches of one task each; every epoch shuffles each task and interleaves all batches at random.

    Each task contributes ceil(size / batch_size) full batches per epoch (the last one filled up
    with the task's first examples), so tasks are sampled in proportion to their size and every
    example is seen once per epoch, a few twice. With ``by_length``, each
    task's shuffled examples are sorted by length within pools of `POOL_BATCHES` batches before they
    are cut into batches: a batch holds examples of similar length, so padding (and, with trimmed
    latents, the latents run) follows its own examples, while pools and batches stay in random
    order. The order is a function of (seed, epoch): set the epoch before iterating.
    """

    POOL_BATCHES = 64

    def __init__(self, dataset: TaskExamples, batch_size: int, seed: int, by_length: bool = True) -> None:
        self.dataset, self.batch_size, self.seed, self.by_length, self.epoch = dataset, batch_size, seed, by_length, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        pool = self.batch_size * self.POOL_BATCHES
        for offset, size in zip(self.dataset.offsets, self.dataset.sizes, strict=True):
            order = offset + rng.permutation(size)
            if self.by_length:
                pools = [order[i : i + pool] for i in range(0, size, pool)]
                order = np.concatenate([p[np.argsort(self.dataset.lengths[p], kind="stable")] for p in pools])
            # The last batch is filled up from the task's start: with every batch full, Accelerate's per-process
            # sharding drops none, and every process sees the same number of batches.
            order = np.resize(order, -(-size // self.batch_size) * self.batch_size)
            batches += [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return sum(-(-size // self.batch_size) for size in self.dataset.sizes)


def eval_loader(
    split: GlueSplit, task_index: int, batch_size: int, pin_memory: bool = False, bucketed: bool = False
) -> torch.utils.data.DataLoader:
    """Batches of one split in order of length (short padding); the ``position`` field restores file order.
    ``bucketed``: see `collate`."""
    data = TaskExamples([split], [task_index])
    order = np.argsort(data.lengths, kind="stable").tolist()
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        sampler=order,
        collate_fn=functools.partial(collate, bucketed=bucketed),
        pin_memory=pin_memory,
    )


def collate(items: list[tuple], bucketed: bool = False) -> dict[str, Any]:
    """Pad a batch of one task (`TaskExamples` items) to its longest example; its kind pads the targets (an
    unlabelled split's are NaN), a per-word task's words pad with position 0 and target `IGNORED`.

    ``bucketed`` pads to one of a few lengths (`perceiver_lm.tokenizer.bucket_length`), so that a compiled model
    meets few shapes; the outputs are the same (padding is masked)."""
    ids, labels, tasks, positions, reads, kinds = zip(*items, strict=True)
    batch = pad_batch(list(ids), bucketed=bucketed)
    out = {
        "input_ids": torch.from_numpy(batch.input_ids),
        "attention_mask": torch.from_numpy(batch.attention_mask),
        "task": tasks[0],  # one task per batch; a Python int, so that picking the head needs no device sync
        "position": torch.tensor(positions),
    }
    if reads[0] is not None:
        out["word_positions"] = torch.from_numpy(pad_word_positions(list(reads)))
        out["word_count"] = torch.tensor([len(r) for r in reads])
        if labels[0] is None:  # unlabelled: nothing is scored
            labels = [np.full(len(r), IGNORED) for r in reads]
    elif labels[0] is None:
        labels = [float("nan")] * len(labels)
    out["labels"] = kinds[0].batch_targets(list(labels))
    return out
