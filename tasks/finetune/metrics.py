"""GLUE metrics in percent, computed by the Hugging Face ``evaluate`` module next to this file (glue_metric.py).

``compute`` and ``compute_all`` take this project's metric names (accuracy, f1, matthews, pearson,
spearman: ``GlueTask.metrics``) and give percent; the module itself gives fractions under the keys of
the Hub's "glue" metric. Both come from one table, ``glue_metric.SCORERS``: a metric's name here is
its entry's short name, or its key where the entry gives none; whether it scores class ids or real
values is the entry's too. A new metric is one function and its row in that table. To use the module
directly, offline::

    metric = load_glue_metric("mrpc")  # or evaluate.load(str(metric_module_path()), "mrpc")
    metric.compute(predictions=[1, 0], references=[1, 1])  # {'accuracy': 0.5, 'f1': 0.666...}
    load_glue_metric("accuracy+f1")  # any '+'-joined keys of the table: the same two values

Degenerate cases give 0 instead of NaN: a constant prediction has no correlation with the labels,
CoLA's Matthews coefficient is 0 for it (as scikit-learn defines it), and F1 is 0 without positives.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.validation import shown

if TYPE_CHECKING:
    import evaluate

    from tasks.glue.glue_metric import Scorer

_MODULE = Path(__file__).parent.parent / "glue" / "glue_metric.py"  # GLUE's metric, tasks/glue


def metric_module_path() -> Path:
    """The evaluate module file (glue_metric.py), for ``evaluate.load(str(metric_module_path()), "sst2")``."""
    return _MODULE


def _scorers() -> dict[str, Scorer]:
    # Imported here: glue_metric imports evaluate, which imports transformers when it is installed,
    # seconds that a CLI call need not pay.
    from tasks.glue.glue_metric import SCORERS

    return SCORERS


def _keys() -> dict[str, str]:
    """This project's metric name -> the metric's key in ``glue_metric.SCORERS`` (and in the module's results)."""
    return {scorer.name or key: key for key, scorer in _scorers().items()}


def metric_names() -> tuple[str, ...]:
    """The metric names ``compute`` and ``GlueTask.metrics`` take: accuracy, f1, matthews, pearson, spearman, ..."""
    return tuple(_keys())


def regression_metric(name: str) -> bool:
    """Whether metric ``name`` (one of `metric_names`) scores real values rather than class ids."""
    return _scorers()[_keys()[name]].regression


def load_glue_metric(task_name: str, **load_kwargs) -> evaluate.EvaluationModule:
    """A new ``evaluate`` metric for one GLUE task (or list of metric keys), loaded offline from glue_metric.py.

    ``task_name`` is a configuration of the Hub's "glue" metric: a task name of this project (cola,
    sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or mnli_matched / mnli_mismatched; or keys of
    ``glue_metric.SCORERS`` joined by '+' ("accuracy+f1", "matthews_correlation"). ``load_kwargs``
    go to ``evaluate.load`` (``keep_in_memory=True``, ``experiment_id=...``, ...). Its values are
    fractions in [0, 1], not percent.
    """
    import evaluate

    from tasks.glue.glue_metric import CONFIGS, config_keys

    try:
        config_keys(task_name)
    except ValueError:
        raise PerceiverLMError(
            f"no GLUE metric for task {shown(task_name)}; expected one of {', '.join(CONFIGS)}, "
            f"or metric keys joined by '+' among {', '.join(_scorers())}"
        ) from None
    return evaluate.load(str(_MODULE), task_name, **load_kwargs)


@functools.cache
def _shared_metric(config: str) -> evaluate.EvaluationModule:
    # In memory: no Arrow cache file, so processes scoring at once (one per GPU) never wait on each other's file lock.
    return load_glue_metric(config, keep_in_memory=True)


def _check(metric: str, predictions: np.ndarray, labels: np.ndarray, keys: dict[str, str]) -> None:
    if len(predictions) != len(labels) or len(labels) == 0:
        raise PerceiverLMError(f"{metric}: {len(predictions)} predictions for {len(labels)} labels")
    if metric not in keys:
        raise PerceiverLMError(f"unknown metric {shown(metric)}; expected one of {', '.join(keys)}")


def _class_ids(metric: str, values: np.ndarray) -> np.ndarray:
    # The module stores class ids as int64; whole floats (labels read as float) are class ids too.
    if values.dtype.kind in "biu":
        return values.astype(np.int64)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    raise PerceiverLMError(f"{metric}: expected class ids (whole numbers), got {values.dtype} values")


def compute(metric: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """One metric, in percent, of predictions (class ids, or scores for regression) against labels."""
    return compute_all((metric,), predictions, labels)[metric]


def compute_all(metrics: tuple[str, ...], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Each of metrics, in percent, as ``compute`` gives it, in one pass over the predictions.

    The pass is the module's configuration of the metrics' keys joined by '+' ("accuracy+f1"). A task's
    metrics are all of one kind; a tuple that mixes class-id and regression metrics takes one pass per kind.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if not metrics:
        return {}
    keys = _keys()
    for metric in metrics:
        _check(metric, predictions, labels, keys)
    scorers = _scorers()
    percent: dict[str, float] = {}
    for regression in (False, True):
        group = [m for m in dict.fromkeys(metrics) if scorers[keys[m]].regression == regression]
        if not group:
            continue
        if regression:
            p, y = predictions, labels
        else:
            label = "/".join(group)
            p, y = _class_ids(label, predictions), _class_ids(label, labels)
        fractions = _shared_metric("+".join(keys[m] for m in group)).compute(predictions=p, references=y)
        percent.update({m: 100.0 * fractions[keys[m]] for m in group})
    return {m: percent[m] for m in metrics}


# Tagging metrics (tagging_metric.py, the conlleval/seqeval convention): this project's name -> the module's key.
TAGGING_METRICS: dict[str, str] = {
    "span_f1": "f1",
    "span_precision": "precision",
    "span_recall": "recall",
    "token_accuracy": "token_accuracy",
}
_TAGGING_MODULE = Path(__file__).with_name("tagging_metric.py")
PER_TYPE = "f1_"  # the prefix of the per-type span F1 scores `compute_tagging` adds ("f1_PER")


def tagging_module_path() -> Path:
    """The evaluate module of the tagging metrics (tagging_metric.py), for ``evaluate.load(str(...))``."""
    return _TAGGING_MODULE


@functools.cache
def _tagging_metric() -> evaluate.EvaluationModule:
    import evaluate

    return evaluate.load(str(_TAGGING_MODULE), keep_in_memory=True)


def compute_tagging(
    metrics: tuple[str, ...], predictions: list[list[str]], references: list[list[str]]
) -> dict[str, float]:
    """Each of ``metrics`` (names of `TAGGING_METRICS`) in percent, of tag sequences against gold ones; with a span
    metric also each span type's F1 (``f1_PER``, ...)."""
    unknown = [m for m in metrics if m not in TAGGING_METRICS]
    if unknown:
        raise PerceiverLMError(f"unknown tagging metric(s) {', '.join(unknown)}; expected {', '.join(TAGGING_METRICS)}")
    if len(predictions) != len(references) or not references:
        raise PerceiverLMError(f"{'/'.join(metrics)}: {len(predictions)} predictions for {len(references)} labels")
    result = _tagging_metric().compute(predictions=predictions, references=references)
    percent = {m: 100.0 * result[TAGGING_METRICS[m]] for m in metrics}
    if any(m.startswith("span_") for m in metrics):
        percent |= {f"{PER_TYPE}{k}": 100.0 * v["f1"] for k, v in result.items() if isinstance(v, dict)}
    return percent
