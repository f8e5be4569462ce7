"""Task kinds: what it means for a task to be a classification, a regression or a tagging, in one place.

A kind owns how a row's inputs and label become ids and a training target, how targets pad into a batch, the
loss, how outputs become predictions and predictions files, and its metrics. `GlueTask.kind` picks one;
nothing else in fine-tuning asks which kind a task is. A new kind is one class here (and its metrics).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from perceiver_lm.tokenizer import encode_words as words_to_ids
from perceiver_lm.validation import shown

if TYPE_CHECKING:  # torch is imported where a loss is computed: the CLI builds its commands without it
    import torch

IGNORED = -100  # the target of a padding word: no loss, no score (cross_entropy's ignore_index)


@dataclass
class Encoded:
    """One example as the model reads it: ids, and for a per-word kind its words and the byte each is read at."""

    ids: np.ndarray
    words: tuple[str, ...] | None = None
    text: str | None = None  # a tagging input given as text: the text its words were cut from...
    offsets: np.ndarray | None = None  # ...and each word's [start, end) characters in it
    # [words, 2] positions in ``ids`` of each word's first and last byte: its query reads at the last byte, where
    # the byte encoder's n-grams (which reach back) spell the word, and its features are those of both bytes
    # (measured: docs/tagging.md)
    reads: np.ndarray | None = None


def encode_words(words: Sequence[str]) -> Encoded:
    """``[CLS] w1 w2 ... [SEP]`` and where each word is read (`perceiver_lm.tokenizer.encode_words`). Never cut: a
    longer input is read as windows, so that every word gets a prediction."""
    ids, reads = words_to_ids(words)
    return Encoded(ids, words=tuple(words), reads=reads)


def label_name(value: Any) -> str:
    """A label value of a file as the label's name: strings as they are, whole numbers without ".0"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


class TaskKind(Protocol):
    name: str  # as a task file's `type` (and --task-type) says it
    regression: bool  # whether its metrics score real values (`glue_metric.Scorer.regression`)
    named_labels: bool  # whether its labels are names read from the training data (else none: scores)
    per_word: bool  # an output per word (`TaskSpec.per_word`) rather than per example
    columns: tuple[str, str]  # the default input and label columns
    prediction_suffixes: tuple[str, ...]  # of the files `prediction_files` writes

    def encode(self, inputs: list[Any], max_length: int, corruption: Any, example: int) -> Encoded:
        """A row's input column values (one, or a pair) as ids; ValueError (its message without the place) when they
        are not what the kind reads. ``corruption`` (`tasks.finetune.data.Corruption`) adds noise."""

    def label_values(self, value: Any) -> list[Any]:
        """The label names one row's label cell holds (one, or one per word)."""

    def row_target(self, encoded: Encoded, value: Any, labels: tuple[str, ...]) -> Any:
        """The target of a row's label cell given its encoded inputs (a tag per word, or spans of its text);
        ValueError when they do not fit."""

    def batch_targets(self, targets: list[Any]) -> torch.Tensor:
        """The targets of a batch's examples as one tensor (padded where they differ in length)."""

    def metric_names(self) -> tuple[str, ...]:
        """The metrics that score this kind."""

    def scores(
        self, metrics: tuple[str, ...], predictions: list[Any], targets: list[Any], labels: tuple[str, ...]
    ) -> dict[str, float]:
        """``metrics`` in percent, of predictions against targets (one per example, in file order)."""

    def prediction_files(
        self, stem: str, ids: list[str], predictions: list[Any], split: Any, labels: tuple[str, ...], bounds: Any
    ) -> dict[str, str]:
        """File name -> text of the predictions of a split (`tasks.finetune.data.GlueSplit`) with example ``ids``."""

    def num_outputs(self, labels: tuple[str, ...]) -> int:
        """Outputs of the task's head."""

    def target(self, value: Any, labels: tuple[str, ...]) -> float:
        """The training target of a label value read from a file; ValueError (its message without the place)
        when the value is not one."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of logits [B, C] against targets [B]."""

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Predictions [B] (float) from logits [B, C] ([B, Q] from [B, Q, C] per word), in the targets' terms."""

    def text(self, prediction: float, labels: tuple[str, ...], bounds: tuple[float, float] | None) -> str:
        """A prediction as a predictions file writes it; ``bounds`` clip a score (STS-B's [0, 5])."""

    def default_metrics(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        """The metrics a task of this kind is scored with unless it names its own."""


class SentenceKind:
    """What the kinds with one label per text (or pair of texts) share: inputs, batching, metrics, a TSV of
    predictions."""

    regression = False
    per_word = False
    columns = ("text", "label")
    prediction_suffixes = (".tsv",)

    def encode(self, inputs: list[Any], max_length: int, corruption: Any, example: int) -> Encoded:
        for value in inputs:
            if not isinstance(value, str):
                raise ValueError(f"expected text, got {shown(value)}")
        return Encoded(corruption.encode(inputs[0], inputs[1] if len(inputs) > 1 else None, example, max_length))

    def label_values(self, value: Any) -> list[Any]:
        return [value]

    def batch_targets(self, targets: list[Any]) -> torch.Tensor:
        import torch

        return torch.tensor(targets, dtype=torch.float32)

    def metric_names(self) -> tuple[str, ...]:
        from tasks.finetune.metrics import metric_names, regression_metric

        return tuple(m for m in metric_names() if regression_metric(m) == self.regression)

    def scores(
        self, metrics: tuple[str, ...], predictions: list[Any], targets: list[Any], labels: tuple[str, ...]
    ) -> dict[str, float]:
        from tasks.finetune.metrics import compute_all

        return compute_all(metrics, np.asarray(predictions), np.asarray(targets))

    def row_target(self, encoded: Encoded, value: Any, labels: tuple[str, ...]) -> Any:
        return self.target(value, labels)  # one label per row: the inputs do not matter

    def prediction_files(
        self, stem: str, ids: list[str], predictions: list[Any], split: Any, labels: tuple[str, ...], bounds: Any
    ) -> dict[str, str]:
        values = [self.text(p, labels, bounds) for p in predictions]
        return {f"{stem}.tsv": "index\tprediction\n" + "".join(f"{i}\t{v}\n" for i, v in zip(ids, values, strict=True))}


class Classification(SentenceKind):
    """One of the task's label names per text: cross-entropy over them, the most likely one predicted."""

    name = "classification"
    named_labels = True

    def num_outputs(self, labels: tuple[str, ...]) -> int:
        return len(labels)

    def target(self, value: Any, labels: tuple[str, ...]) -> float:
        name = label_name(value)
        if name not in labels:
            raise ValueError(f"label {shown(name)} is not one of the training labels ({', '.join(labels)})")
        return float(labels.index(name))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), targets.long())

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1).float()

    def text(self, prediction: float, labels: tuple[str, ...], bounds: tuple[float, float] | None) -> str:
        return labels[int(prediction)]

    def default_metrics(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        return ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)


class Regression(SentenceKind):
    """A real-valued score per text (STS-B's similarity): mean squared error, the score predicted."""

    name = "regression"
    regression = True
    named_labels = False

    def num_outputs(self, labels: tuple[str, ...]) -> int:
        return 1

    def target(self, value: Any, labels: tuple[str, ...]) -> float:
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number (a regression target), got {shown(value)}") from None
        if not math.isfinite(score):
            raise ValueError(f"the target {shown(value)} is not finite")
        return score

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.mse_loss(logits[:, 0].float(), targets)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0].float()

    def text(self, prediction: float, labels: tuple[str, ...], bounds: tuple[float, float] | None) -> str:
        low, high = bounds or (-math.inf, math.inf)
        return f"{min(max(float(prediction), low), high):.3f}"

    def default_metrics(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        return ("pearson", "spearman")


class TokenClassification:
    """A tag per word (part of speech, named entities): each word's last byte is decoded by positional queries
    (`TaskSpec.per_word`); cross-entropy over the tag names at each word, the most likely one predicted; spans read
    from IOB/BIO/BIOES tags (`tagging_metric`). Inputs are word lists, labels tag-name lists as long."""

    name = "token-classification"
    regression = False
    named_labels = True
    per_word = True
    columns = ("tokens", "tags")
    prediction_suffixes = (".jsonl", ".conll")

    def num_outputs(self, labels: tuple[str, ...]) -> int:
        return len(labels)

    def encode(self, inputs: list[Any], max_length: int, corruption: Any, example: int) -> Encoded:
        if len(inputs) != 1:
            raise ValueError("a tagging task reads one column of words (no text pair)")
        if getattr(corruption, "noises", ()):
            raise ValueError("noise is not applied to word lists (a typo would change which bytes a tag is read at)")
        if isinstance(inputs[0], str):  # a text whose entities are character spans: cut into words here
            found = list(WORD.finditer(inputs[0]))
            if not found:
                raise ValueError("no words")
            encoded = encode_words([m.group() for m in found])
            encoded.text = inputs[0]
            encoded.offsets = np.asarray([m.span() for m in found], dtype=np.int64).reshape(-1, 2)
            return encoded
        words = _words(inputs[0])
        if not words:
            raise ValueError("no words")
        return encode_words(words)

    def label_values(self, value: Any) -> list[Any]:
        if _is_spans(value):  # the tags its spans give: B- and I- of each type, and O
            types = sorted({kind for _, _, kind in _spans(value)})
            return ["O", *(f"{p}-{t}" for t in types for p in "BI")]
        return list(_words(value, "tags"))

    def target(self, value: Any, labels: tuple[str, ...]) -> np.ndarray:
        ids = []
        for number, name in enumerate(_words(value, "tags"), start=1):
            if name not in labels:
                raise ValueError(f"tag {number}: {shown(name)} is not one of the training tags ({', '.join(labels)})")
            ids.append(labels.index(name))
        return np.asarray(ids, dtype=np.int64)

    def row_target(self, encoded: Encoded, value: Any, labels: tuple[str, ...]) -> np.ndarray:
        """Tag ids of a row: its tag list, as many as its words; or, for a text, its character spans as IOB2 tags
        of the words they cover (a span must start and end at word boundaries)."""
        if encoded.offsets is not None:  # a text: its label cell holds character spans (none: all O)
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
                raise ValueError(
                    "tags need a list of words in the text column (it holds a text, which takes character spans)"
                )
            value = _span_tags(_spans(value if isinstance(value, (list, tuple, np.ndarray)) else [value]), encoded)
        elif _is_spans(value):
            raise ValueError("character spans need a text column (this row's words are a list)")
        target = self.target(value, labels)
        if len(target) != len(encoded.words):
            raise ValueError(f"{len(encoded.words)} words but {len(target)} tags")
        return target

    def batch_targets(self, targets: list[Any]) -> torch.Tensor:
        import torch

        longest = max(len(t) for t in targets)
        out = torch.full((len(targets), longest), IGNORED, dtype=torch.long)
        for row, target in enumerate(targets):
            out[row, : len(target)] = torch.from_numpy(np.asarray(target, dtype=np.int64))
        return out

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(logits.float().flatten(0, 1), targets.long().flatten(), ignore_index=IGNORED)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)  # [B, Q]

    def default_metrics(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        prefixed = [t for t in labels if t != "O" and t[:2] in ("B-", "I-", "E-", "S-", "L-", "U-")]
        spans = bool(prefixed) and len(prefixed) == len([t for t in labels if t != "O"])
        return ("span_f1", "span_precision", "span_recall", "token_accuracy") if spans else ("token_accuracy",)

    def metric_names(self) -> tuple[str, ...]:
        from tasks.finetune.metrics import TAGGING_METRICS

        return tuple(TAGGING_METRICS)

    def scores(
        self, metrics: tuple[str, ...], predictions: list[Any], targets: list[Any], labels: tuple[str, ...]
    ) -> dict[str, float]:
        from tasks.finetune.metrics import compute_tagging

        names = [[labels[i] for i in p] for p in predictions]
        gold = [[labels[i] for i in t] for t in targets]
        return compute_tagging(metrics, names, gold)

    def prediction_files(
        self, stem: str, ids: list[str], predictions: list[Any], split: Any, labels: tuple[str, ...], bounds: Any
    ) -> dict[str, str]:
        from tasks.finetune.tagging_metric import spans

        lines, blocks = [], []
        texts = split.texts or [None] * len(split.words)
        offsets = split.offsets or [None] * len(split.words)
        for index, words, predicted, text, at in zip(ids, split.words, predictions, texts, offsets, strict=True):
            tags = [labels[i] for i in predicted]
            found = []
            for kind, a, b in spans(tags):
                span = {"type": kind, "start": a, "end": b + 1, "text": " ".join(words[a : b + 1])}
                if text is not None:  # a text input: the span's characters in it too
                    first, last = int(at[a][0]), int(at[b][1])
                    span.update(text=text[first:last], start_char=first, end_char=last)
                found.append(span)
            record = {"id": index, **({"text": text} if text is not None else {}), "tokens": list(words)}
            record |= {"tags": tags, "spans": found}
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            blocks.append("".join(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True)))
        return {f"{stem}.jsonl": "".join(lines), f"{stem}.conll": "\n".join(blocks)}


# Words of a text given with character spans: runs of letters and digits, or single other characters
# ("Paris," -> "Paris", ","), as CoNLL-style tokenisations cut them.
WORD = re.compile(r"\w+|[^\w\s]")


def _is_spans(value: Any) -> bool:
    """Whether a label cell holds character spans (dicts or [start, end, type] triples) rather than tags."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value)


def _spans(value: Any) -> list[tuple[int, int, str]]:
    """Character spans as (start, end, type): dicts with start, end and label (or type), or [start, end, type]."""
    out = []
    for number, span in enumerate(value.tolist() if isinstance(value, np.ndarray) else value, start=1):
        if isinstance(span, dict):
            span = (span.get("start"), span.get("end"), span.get("label", span.get("type")))
        if not (
            isinstance(span, (list, tuple))
            and len(span) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) for x in span[:2])
            and isinstance(span[2], str)
            and span[2]
            and 0 <= span[0] < span[1]
        ):
            raise ValueError(
                f"span {number}: expected {{start, end, label}} or [start, end, label] with 0 <= start < end, "
                f"got {shown(span)}"
            )
        out.append((span[0], span[1], span[2]))
    return out


def _span_tags(found: list[tuple[int, int, str]], encoded: Encoded) -> list[str]:
    """IOB2 tags of a text's words from its character spans; a span cutting a word, past the text or overlapping
    another is a ValueError naming it."""
    tags = ["O"] * len(encoded.words)
    starts, ends = encoded.offsets[:, 0].tolist(), encoded.offsets[:, 1].tolist()
    for start, end, kind in sorted(found):
        inside = [i for i, (a, b) in enumerate(zip(starts, ends, strict=True)) if a < end and b > start]
        quoted = shown(encoded.text[start:end])
        if end > len(encoded.text) or not inside:
            raise ValueError(f"span {start}-{end} {kind}: covers no word of the text ({len(encoded.text)} characters)")
        if starts[inside[0]] < start or ends[inside[-1]] > end:
            raise ValueError(f"span {start}-{end} {kind} ({quoted}) starts or ends inside a word")
        if any(tags[i] != "O" for i in inside):
            raise ValueError(f"span {start}-{end} {kind} ({quoted}) overlaps another span")
        tags[inside[0]] = f"B-{kind}"
        for i in inside[1:]:
            tags[i] = f"I-{kind}"
    return tags


def _words(value: Any, what: str = "words") -> tuple[str, ...]:
    """A cell holding a list of strings (words, or tags: whole numbers there are tag names too, as a
    classification's labels are), or ValueError."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if what == "tags" and isinstance(value, (list, tuple)):
        value = [label_name(t) if isinstance(t, int) and not isinstance(t, bool) else t for t in value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) for w in value):
        raise ValueError(f"expected a list of {what} (strings), got {shown(value)}")
    if what == "words" and any(w == "" for w in value):
        empty = next(i for i, w in enumerate(value, start=1) if w == "")
        raise ValueError(f"word {empty} is empty (a tag is read at a word's last byte)")
    return tuple(value)


KINDS: tuple[TaskKind, ...] = (Classification(), Regression(), TokenClassification())


def kind_named(name: str, where: str) -> TaskKind:
    """The kind a task file's `type` (or --task-type) names, or one line listing the kinds."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise ValueError(f"{where}: type must be {' or '.join(k.name for k in KINDS)}, got {shown(name)}")
