"""Task kinds: what it means for a task to be a classification or a regression, in one place.

A kind owns how a label value of a file becomes a training target, the loss, how outputs become
predictions and predictions text, and the default metrics. `GlueTask.kind` picks one; nothing else in
fine-tuning asks which kind a task is. A new kind is one class here (and its metrics in `glue_metric`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

from perceiver_lm.validation import shown

if TYPE_CHECKING:  # torch is imported where a loss is computed: the CLI builds its commands without it
    import torch


def label_name(value: Any) -> str:
    """A label value of a file as the label's name: strings as they are, whole numbers without ".0"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


class TaskKind(Protocol):
    name: str  # as a task file's `type` says it
    regression: bool  # whether its metrics score real values (`glue_metric.Scorer.regression`)
    named_labels: bool  # whether its labels are names read from the training data (else none: scores)

    def num_outputs(self, labels: tuple[str, ...]) -> int:
        """Outputs of the task's head."""

    def target(self, value: Any, labels: tuple[str, ...]) -> float:
        """The training target of a label value read from a file; ValueError (its message without the place)
        when the value is not one."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of logits [B, C] against targets [B]."""

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Predictions [B] (float) from logits [B, C], in the targets' terms."""

    def text(self, prediction: float, labels: tuple[str, ...], bounds: tuple[float, float] | None) -> str:
        """A prediction as a predictions file writes it; ``bounds`` clip a score (STS-B's [0, 5])."""

    def default_metrics(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        """The metrics a task of this kind is scored with unless it names its own."""


class Classification:
    """One of the task's label names per text: cross-entropy over them, the most likely one predicted."""

    name = "classification"
    regression = False
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


class Regression:
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


KINDS: tuple[TaskKind, ...] = (Classification(), Regression())


def kind_named(name: str, where: str) -> TaskKind:
    """The kind a task file's `type` (or --task-type) names, or one line listing the kinds."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise ValueError(f"{where}: type must be {' or '.join(k.name for k in KINDS)}, got {shown(name)}")
