"""GLUE metrics with scikit-learn and scipy (what the official metric scripts call), in percent.

Degenerate cases give 0 instead of NaN: a constant prediction has no correlation with the labels,
and CoLA's Matthews coefficient is 0 for it, as scikit-learn defines it.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from perceiver_lm.errors import PerceiverLMError


def _correlation(fn, predictions: np.ndarray, labels: np.ndarray) -> float:
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(predictions, labels)[0])


def compute(metric: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """One metric, in percent, of predictions (class ids, or scores for regression) against labels."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(predictions) != len(labels) or len(labels) == 0:
        raise PerceiverLMError(f"{metric}: {len(predictions)} predictions for {len(labels)} labels")
    if metric == "accuracy":
        return 100.0 * float(np.mean(predictions == labels))
    if metric == "f1":
        return 100.0 * float(f1_score(labels.astype(int), predictions.astype(int), pos_label=1, zero_division=0.0))
    if metric == "matthews":
        return 100.0 * float(matthews_corrcoef(labels.astype(int), predictions.astype(int)))
    if metric == "pearson":
        return 100.0 * _correlation(pearsonr, predictions.astype(float), labels.astype(float))
    if metric == "spearman":
        return 100.0 * _correlation(spearmanr, predictions.astype(float), labels.astype(float))
    raise PerceiverLMError(f"unknown metric {metric!r}")


def compute_all(metrics: tuple[str, ...], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {m: compute(m, predictions, labels) for m in metrics}
