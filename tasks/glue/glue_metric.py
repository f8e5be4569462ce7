"""GLUE's dev-set metrics as a Hugging Face ``evaluate`` module, one configuration per task, loadable offline.

Load it by path, which needs no network (the Hub's "glue" metric does, the first time)::

    import evaluate
    from tasks.glue.metrics import metric_module_path

    sst2 = evaluate.load(str(metric_module_path()), "sst2")
    sst2.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {'accuracy': 0.666...}

Configurations and the keys they return, as the Hub's "glue" metric names them:
cola: matthews_correlation; stsb: pearson, spearmanr; mrpc, qqp: accuracy, f1;
sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli: accuracy.
Values are fractions in [0, 1] (correlations in [-1, 1]), as on the Hub.

One difference from the Hub's metric: a constant prediction or reference vector scores 0.0 instead of
NaN for pearson, spearmanr and matthews_correlation (there is no correlation to measure, and a NaN would
poison averages and model selection), and f1 is 0.0 when no example is positive in either vector.

evaluate reads this file's import lines to check dependencies and copies the file into its module cache,
so each import line names one installed module and nothing is imported from this project.
"""

import warnings

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

# Configuration name (the Hub "glue" metric's) -> the keys it returns, in order.
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

REGRESSION = frozenset({"stsb"})

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
    predictions: class ids (int), or similarity scores (float) for stsb.
    references: gold class ids (int), or gold scores (float) for stsb.
Returns: a dict with the configuration's keys among accuracy, f1, matthews_correlation, pearson, spearmanr.
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


_SCORERS = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _matthews,
    "pearson": _pearson,
    "spearmanr": _spearman,
}


class GlueMetric(evaluate.Metric):
    """GLUE's metric for one task; the configuration name picks the task."""

    def _info(self):
        if self.config_name not in CONFIGS:
            raise ValueError(
                f"glue_metric: unknown configuration {self.config_name!r}; expected one of {', '.join(CONFIGS)}"
            )
        dtype = "float32" if self.config_name in REGRESSION else "int64"
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
        dtype = np.float64 if self.config_name in REGRESSION else None
        predictions, references = np.asarray(predictions, dtype=dtype), np.asarray(references, dtype=dtype)
        if len(predictions) == 0:
            raise ValueError(f"glue_metric ({self.config_name}): no predictions to score")
        return {key: _SCORERS[key](predictions, references) for key in CONFIGS[self.config_name]}
