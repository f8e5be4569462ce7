"""GLUE's dev-set metrics as a Hugging Face ``evaluate`` module, one configuration per task, loadable offline.

Load it by path, which needs no network (the Hub's "glue" metric does, the first time)::

    import evaluate
    from tasks.finetune.metrics import metric_module_path

    sst2 = evaluate.load(str(metric_module_path()), "sst2")
    sst2.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {'accuracy': 0.666...}

Configurations and the keys they return, as the Hub's "glue" metric names them:
cola: matthews_correlation; stsb: pearson, spearmanr; mrpc, qqp: accuracy, f1;
sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli: accuracy.
Any other configuration is a '+'-joined list of keys of ``SCORERS`` ("accuracy+f1", "pearson",
"matthews_correlation+accuracy"): it returns those keys, in that order, in one pass.
Values are fractions in [0, 1] (correlations in [-1, 1]), as on the Hub.

``SCORERS`` is the one table of metrics: a new metric is one function and its row there (plus its
name in a task's ``GlueTask.metrics``); configurations, input types and the short names of
``tasks.finetune.metrics`` all follow from it.

One difference from the Hub's metric: a constant prediction or reference vector scores 0.0 instead of
NaN for pearson, spearmanr and matthews_correlation (there is no correlation to measure, and a NaN would
poison averages and model selection), and f1 is 0.0 when no example is positive in either vector.

evaluate reads this file's import lines to check dependencies and copies the file into its module cache,
so each import line names one installed module and nothing is imported from this project.
"""

import warnings
from collections.abc import Callable
from typing import NamedTuple

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

_DESCRIPTION = """
The dev-set metrics of the GLUE benchmark (Wang et al., 2019): Matthews correlation for CoLA,
Pearson and Spearman correlation for STS-B, accuracy and F1 of the positive class for MRPC and QQP,
accuracy for the others. Constant predictions or references give 0.0 instead of NaN.
"""

_CITATION = """
@inproceedings{wang2019glue,
  title = {{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author = {Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle = {International Conference on Learning Representations},
  year = {2019},
}
"""

_INPUTS_DESCRIPTION = """
Args:
    predictions: class ids (int), or scores (float) for stsb and other regression configurations.
    references: gold class ids (int), or gold scores (float) likewise.
Returns: a dict with the configuration's keys (accuracy, f1, matthews_correlation, pearson, spearmanr, ...).
Example:
    >>> metric = evaluate.load("tasks/glue/glue_metric.py", "mrpc")
    >>> metric.compute(predictions=[1, 1, 0, 0], references=[1, 0, 1, 0])
    {'accuracy': 0.5, 'f1': 0.5}
"""


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.ptp(values) == 0)


def _accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    return float(np.mean(predictions == references))


def _f1(predictions: np.ndarray, references: np.ndarray) -> float:
    return float(f1_score(references, predictions, pos_label=1, zero_division=0.0))


def _matthews(predictions: np.ndarray, references: np.ndarray) -> float:
    # scikit-learn also gives 0 here, but warns when both vectors hold one and the same class.
    if _is_constant(predictions) or _is_constant(references):
        return 0.0
    return float(matthews_corrcoef(references, predictions))


def _correlation(fn, predictions: np.ndarray, references: np.ndarray) -> float:
    if _is_constant(predictions) or _is_constant(references):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(predictions, references)[0])


def _pearson(predictions: np.ndarray, references: np.ndarray) -> float:
    return _correlation(pearsonr, predictions, references)


def _spearman(predictions: np.ndarray, references: np.ndarray) -> float:
    return _correlation(spearmanr, predictions, references)


class Scorer(NamedTuple):
    """One metric: its function of (predictions, references) as numpy arrays, giving a fraction (float)."""

    score: Callable[[np.ndarray, np.ndarray], float]
    regression: bool = False  # scores real values (stored float32, scored float64); else class ids (int64)
    name: str = ""  # the short name of GlueTask.metrics and results files (tasks.finetune.metrics), if not the key


# The one table of metrics: key (the Hub "glue" metric's name for it, and the key of its results) -> scorer.
SCORERS: dict[str, Scorer] = {
    "accuracy": Scorer(_accuracy),
    "f1": Scorer(_f1),
    "matthews_correlation": Scorer(_matthews, name="matthews"),
    "pearson": Scorer(_pearson, regression=True),
    "spearmanr": Scorer(_spearman, regression=True, name="spearman"),
}

# The Hub "glue" metric's configurations (one per task) -> the keys they return, in order.
CONFIGS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "mnli_matched": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def config_keys(config_name: str) -> tuple[str, ...]:
    """The keys a configuration returns: a GLUE task's (``CONFIGS``), or the '+'-joined keys of ``SCORERS``."""
    if config_name in CONFIGS:
        return CONFIGS[config_name]
    keys = tuple(config_name.split("+")) if config_name else ()
    if not keys or any(k not in SCORERS for k in keys) or len(set(keys)) != len(keys):
        raise ValueError(
            f"glue_metric: unknown configuration {config_name!r}; expected one of {', '.join(CONFIGS)}, "
            f"or metric keys joined by '+' (each once) among {', '.join(SCORERS)}"
        )
    if len({SCORERS[k].regression for k in keys}) > 1:
        raise ValueError(
            f"glue_metric: configuration {config_name!r} mixes regression and classification metrics; "
            "score them in two configurations"
        )
    return keys


def is_regression(config_name: str) -> bool:
    """Whether a configuration scores real values (its metrics are regression metrics), not class ids."""
    return SCORERS[config_keys(config_name)[0]].regression


class GlueMetric(evaluate.Metric):
    """GLUE's metric for one task, or for any '+'-joined list of metric keys; the configuration name picks it."""

    def _info(self):
        dtype = "float32" if is_regression(self.config_name) else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            reference_urls=["https://gluebenchmark.com/"],
            format="numpy",
        )

    def _compute(self, predictions, references):
        # Scores are stored as float32 (the Hub's feature type); correlating in float32 would lose digits.
        keys = config_keys(self.config_name)
        dtype = np.float64 if is_regression(self.config_name) else None
        predictions, references = np.asarray(predictions, dtype=dtype), np.asarray(references, dtype=dtype)
        if len(predictions) == 0:
            raise ValueError(f"glue_metric ({self.config_name}): no predictions to score")
        return {key: SCORERS[key].score(predictions, references) for key in keys}
