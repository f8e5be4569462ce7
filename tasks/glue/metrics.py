"""GLUE metrics in percent, computed by the Hugging Face ``evaluate`` module next to this file (glue_metric.py).

``compute`` and ``compute_all`` take this project's metric names (accuracy, f1, matthews, pearson,
spearman: ``GlueTask.metrics``) and give percent; the module itself gives fractions under the keys of
the Hub's "glue" metric. To use the module directly, offline::

    metric = load_glue_metric("mrpc")  # or evaluate.load(str(metric_module_path()), "mrpc")
    metric.compute(predictions=[1, 0], references=[1, 1])  # {'accuracy': 0.5, 'f1': 0.666...}

Degenerate cases give 0 instead of NaN: a constant prediction has no correlation with the labels,
CoLA's Matthews coefficient is 0 for it (as scikit-learn defines it), and F1 is 0 without positives.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from perceiver_lm.errors import PerceiverLMError

if TYPE_CHECKING:
    import evaluate

_MODULE = Path(__file__).with_name("glue_metric.py")

# Our metric name -> (a glue_metric configuration that computes it, the metric's key in that configuration's result).
_SOURCE = {
    "accuracy": ("sst2", "accuracy"),
    "f1": ("mrpc", "f1"),
    "matthews": ("cola", "matthews_correlation"),
    "pearson": ("stsb", "pearson"),
    "spearman": ("stsb", "spearmanr"),
}
# Metric tuples of GLUE tasks that one configuration computes in one pass over the predictions.
_ONE_PASS = {frozenset({"accuracy", "f1"}): "mrpc", frozenset({"pearson", "spearman"}): "stsb"}
_REGRESSION = "stsb"


def metric_module_path() -> Path:
    """The evaluate module file (glue_metric.py), for ``evaluate.load(str(metric_module_path()), "sst2")``."""
    return _MODULE


def load_glue_metric(task_name: str, **load_kwargs) -> evaluate.EvaluationModule:
    """A new ``evaluate`` metric for one GLUE task, loaded offline from glue_metric.py.

    ``task_name`` is a configuration of the Hub's "glue" metric: a task name of this project (cola,
    sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or mnli_matched / mnli_mismatched. ``load_kwargs``
    go to ``evaluate.load`` (``keep_in_memory=True``, ``experiment_id=...``, ...). Its values are
    fractions in [0, 1], not percent.
    """
    # Imported here: evaluate imports transformers when it is installed, seconds that a CLI call need not pay.
    import evaluate

    from tasks.glue.glue_metric import CONFIGS

    if task_name not in CONFIGS:
        raise PerceiverLMError(f"no GLUE metric for task {task_name!r}; expected one of {', '.join(CONFIGS)}")
    return evaluate.load(str(_MODULE), task_name, **load_kwargs)


@functools.cache
def _shared_metric(config: str) -> evaluate.EvaluationModule:
    # In memory: no Arrow cache file, so processes scoring at once (one per GPU) never wait on each other's file lock.
    return load_glue_metric(config, keep_in_memory=True)


def _check(metric: str, predictions: np.ndarray, labels: np.ndarray) -> None:
    if len(predictions) != len(labels) or len(labels) == 0:
        raise PerceiverLMError(f"{metric}: {len(predictions)} predictions for {len(labels)} labels")
    if metric not in _SOURCE:
        raise PerceiverLMError(f"unknown metric {metric!r}; expected one of {', '.join(_SOURCE)}")


def _class_ids(metric: str, values: np.ndarray) -> np.ndarray:
    # The module stores class ids as int64; whole floats (labels read as float) are class ids too.
    if values.dtype.kind in "biu":
        return values.astype(np.int64)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    raise PerceiverLMError(f"{metric}: expected class ids (whole numbers), got {values.dtype} values")


def _fractions(config: str, metric: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if config != _REGRESSION:
        predictions, labels = _class_ids(metric, predictions), _class_ids(metric, labels)
    return _shared_metric(config).compute(predictions=predictions, references=labels)


def compute(metric: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """One metric, in percent, of predictions (class ids, or scores for regression) against labels."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    _check(metric, predictions, labels)
    config, key = _SOURCE[metric]
    return 100.0 * _fractions(config, metric, predictions, labels)[key]


def compute_all(metrics: tuple[str, ...], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Each of metrics, in percent, as ``compute`` gives it; a task's metric pair takes one pass."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    for metric in metrics:
        _check(metric, predictions, labels)
    config = _ONE_PASS.get(frozenset(metrics))
    if config is None:
        return {m: compute(m, predictions, labels) for m in metrics}
    fractions = _fractions(config, "/".join(metrics), predictions, labels)
    return {m: 100.0 * fractions[_SOURCE[m][1]] for m in metrics}
