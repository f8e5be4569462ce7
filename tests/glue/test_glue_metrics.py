import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import evaluate
import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

import tasks.finetune.metrics as metrics_module
import tasks.glue
import tasks.glue.glue_metric
from perceiver_lm.errors import PerceiverLMError
from tasks.finetune.metrics import compute, compute_all, load_glue_metric, metric_module_path, metric_names
from tasks.glue.glue_metric import CONFIGS, SCORERS, Scorer
from tasks.glue.tasks import TASKS

MODULE = str(metric_module_path())
# The Hub "glue" metric's configurations, less hans (a diagnostic set, not a GLUE task).
HUB_CONFIGS = (
    "cola",
    "sst2",
    "mrpc",
    "stsb",
    "qqp",
    "mnli",
    "mnli_matched",
    "mnli_mismatched",
    "qnli",
    "rte",
    "wnli",
)


def test_metrics_match_hand_computed_values():
    assert compute("accuracy", [1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(50.0)
    # tp 1, fp 1, fn 1: precision = recall = 1/2
    assert compute("f1", [1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(50.0)
    # tp 2, fp 1, tn 1, fn 0: (2*1 - 1*0) / sqrt(3 * 2 * 2 * 1)
    assert compute("matthews", [1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(100 * 2 / math.sqrt(12))
    # deviations (-1, 0, 1) and (-4/3, -1/3, 5/3): r = 3 / (sqrt(2) * sqrt(42) / 3)
    assert compute("pearson", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0]) == pytest.approx(100 * 9 / math.sqrt(84))
    # rank differences (0, 1, 1): 1 - 6 * 2 / (3 * (9 - 1))
    assert compute("spearman", [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(50.0)


def test_constant_predictions_score_zero_not_nan():
    labels = [0, 1, 1, 0, 1]
    assert compute("matthews", [1] * 5, labels) == 0.0
    assert compute("f1", [0] * 5, labels) == 0.0
    assert compute("accuracy", [1] * 5, labels) == pytest.approx(60.0)
    assert compute("pearson", [2.5] * 5, [0.0, 1.0, 2.0, 3.0, 4.0]) == 0.0
    assert compute("spearman", [2.5] * 5, [0.0, 1.0, 2.0, 3.0, 4.0]) == 0.0
    assert compute("pearson", [0.0, 1.0, 2.0], [3.0, 3.0, 3.0]) == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        compute("accuracy", [1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="unknown metric"):
        compute("bleu", [1], [1])


def test_bad_input_is_refused_in_one_line():
    for call, message in (
        (lambda: compute("f1", [], []), "f1: 0 predictions for 0 labels"),
        (lambda: compute_all(("accuracy", "f1"), [1, 0], [1]), "accuracy: 2 predictions for 1 labels"),
        (lambda: compute_all(("matthews", "bleu"), [1], [1]), "unknown metric 'bleu'"),
        (lambda: compute("accuracy", [0.5, 1.0], [0, 1]), "accuracy: expected class ids"),
        (lambda: load_glue_metric("squad"), "no GLUE metric for task 'squad'"),
    ):
        with pytest.raises(PerceiverLMError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_module_sits_in_the_glue_package():
    assert metric_module_path() == Path(tasks.glue.__file__).with_name("glue_metric.py")
    assert metric_module_path().is_file()
    assert tuple(CONFIGS) == HUB_CONFIGS


def _random_inputs(config: str, rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    if config == "stsb":
        # float32, the module's feature type, so the stored values are the ones scipy sees here
        return rng.uniform(0, 5, n).astype(np.float32), rng.uniform(0, 5, n).astype(np.float32)
    classes = 3 if config.startswith("mnli") else 2
    labels = rng.integers(0, classes, n)
    # agree with the labels more often than chance, so the scores are not all near 0
    predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, classes, n))
    return predictions, labels


def _reference_fractions(config: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """What the Hub "glue" metric computes, with scikit-learn and scipy directly."""
    p64, l64 = predictions.astype(np.float64), labels.astype(np.float64)
    scorers = {
        "accuracy": lambda: accuracy_score(labels, predictions),
        "f1": lambda: f1_score(labels, predictions),
        "matthews_correlation": lambda: matthews_corrcoef(labels, predictions),
        "pearson": lambda: pearsonr(p64, l64)[0],
        "spearmanr": lambda: spearmanr(p64, l64)[0],
    }
    return {key: float(scorers[key]()) for key in CONFIGS[config]}


@pytest.mark.parametrize("config", HUB_CONFIGS)
def test_each_configuration_loads_offline_and_scores_as_sklearn_and_scipy(config):
    metric = evaluate.load(MODULE, config)
    assert metric.config_name == config
    want_dtype = "float32" if config == "stsb" else "int64"
    assert {name: f.dtype for name, f in metric.features.items()} == {
        "predictions": want_dtype,
        "references": want_dtype,
    }
    predictions, labels = _random_inputs(config, np.random.default_rng(sorted(CONFIGS).index(config)))
    got = metric.compute(predictions=predictions, references=labels)
    want = _reference_fractions(config, predictions, labels)
    assert list(got) == list(want)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert all(-1.0 <= v <= 1.0 for v in got.values())


def test_hand_computed_fractions_through_evaluate():
    mrpc = evaluate.load(MODULE, "mrpc").compute(predictions=[1, 1, 0, 0], references=[1, 0, 1, 0])
    assert mrpc == pytest.approx({"accuracy": 0.5, "f1": 0.5})
    cola = evaluate.load(MODULE, "cola").compute(predictions=[1, 1, 1, 0], references=[1, 1, 0, 0])
    assert cola == pytest.approx({"matthews_correlation": 2 / math.sqrt(12)})
    stsb = evaluate.load(MODULE, "stsb").compute(predictions=[1.0, 2.0, 3.0], references=[1.0, 2.0, 4.0])
    assert stsb == pytest.approx({"pearson": 9 / math.sqrt(84), "spearmanr": 1.0}, rel=1e-12)
    mnli = evaluate.load(MODULE, "mnli_mismatched").compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])
    assert mnli == {"accuracy": 0.75}


def test_batches_add_up_and_combine_works():
    predictions, labels = _random_inputs("mrpc", np.random.default_rng(1))
    metric = load_glue_metric("mrpc")
    for start in range(0, len(labels), 64):
        metric.add_batch(predictions=predictions[start : start + 64], references=labels[start : start + 64])
    assert metric.compute() == pytest.approx(_reference_fractions("mrpc", predictions, labels))

    combined = evaluate.combine([evaluate.load(MODULE, "cola"), evaluate.load(MODULE, "mrpc")])
    got = combined.compute(predictions=predictions, references=labels)
    want = {**_reference_fractions("cola", predictions, labels), **_reference_fractions("mrpc", predictions, labels)}
    assert got == pytest.approx(want)


def test_degenerate_inputs_give_zero_not_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cola = evaluate.load(MODULE, "cola")
        assert cola.compute(predictions=[1, 1, 1, 1], references=[0, 1, 1, 0]) == {"matthews_correlation": 0.0}
        assert cola.compute(predictions=[1, 1, 1, 1], references=[1, 1, 1, 1]) == {"matthews_correlation": 0.0}
        assert cola.compute(predictions=[0, 1, 1, 0], references=[0, 0, 0, 0]) == {"matthews_correlation": 0.0}
        stsb = evaluate.load(MODULE, "stsb")
        assert stsb.compute(predictions=[2.5] * 4, references=[0.0, 1.0, 2.0, 3.0]) == {
            "pearson": 0.0,
            "spearmanr": 0.0,
        }
        assert stsb.compute(predictions=[0.0, 1.0, 2.0, 3.0], references=[4.0] * 4) == {
            "pearson": 0.0,
            "spearmanr": 0.0,
        }
        mrpc = evaluate.load(MODULE, "mrpc")
        assert mrpc.compute(predictions=[0, 0, 0], references=[0, 0, 0]) == {"accuracy": 1.0, "f1": 0.0}
        assert mrpc.compute(predictions=[0, 0, 0], references=[1, 0, 1]) == pytest.approx(
            {"accuracy": 1 / 3, "f1": 0.0}
        )


def test_unknown_configuration_and_empty_input_are_refused():
    with pytest.raises(ValueError, match="unknown configuration 'hans'; expected one of cola, sst2"):
        evaluate.load(MODULE, "hans")
    with pytest.raises(ValueError, match="unknown configuration 'default'"):
        evaluate.load(MODULE)
    with pytest.raises(ValueError, match="no predictions to score"):
        evaluate.load(MODULE, "sst2").compute(predictions=[], references=[])


def _previous(metric: str, predictions, labels) -> float:
    """The hand-written implementation this module replaced, in percent."""
    p, y = np.asarray(predictions), np.asarray(labels)
    if metric == "accuracy":
        return 100.0 * float(np.mean(p == y))
    if metric == "f1":
        return 100.0 * float(f1_score(y.astype(int), p.astype(int), pos_label=1, zero_division=0.0))
    if metric == "matthews":
        return 100.0 * float(matthews_corrcoef(y.astype(int), p.astype(int)))
    fn = pearsonr if metric == "pearson" else spearmanr
    if np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0
    return 100.0 * float(fn(p.astype(float), y.astype(float))[0])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("task", sorted(TASKS))
def test_compute_and_compute_all_match_the_previous_implementation(task, seed):
    metrics = TASKS[task].metrics
    config = "stsb" if TASKS[task].is_regression else task
    predictions, labels = _random_inputs(config, np.random.default_rng(seed), n=257)
    if seed == 1 and not TASKS[task].is_regression:
        # what evaluation loops hand over besides int64: narrower ints, and labels read as whole floats
        predictions, labels = predictions.astype(np.int32), labels.astype(np.float32)
    want = {m: _previous(m, predictions, labels) for m in metrics}
    got = compute_all(metrics, predictions, labels)
    assert list(got) == list(metrics)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    for m in metrics:
        assert compute(m, predictions, labels) == pytest.approx(want[m], rel=1e-12, abs=1e-12)
    assert compute_all((), predictions, labels) == {}


def test_loads_in_a_fresh_offline_process(tmp_path):
    # A fresh HF_HOME: evaluate has no cached copy, so the load below is a cold one;
    # an unreachable proxy makes any network access fail instead of slipping through.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "NO_PROXY", "no_proxy"))}
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        TQDM_DISABLE="1",
    )
    script = (
        "import json, sys, evaluate\n"
        "m = evaluate.load(sys.argv[1], 'qqp')\n"
        "print(json.dumps(m.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, MODULE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert list((tmp_path / "hf" / "modules" / "evaluate_modules" / "metrics" / "glue_metric").glob("*/glue_metric.py"))


@pytest.mark.parametrize(("joined", "config"), [("accuracy+f1", "mrpc"), ("pearson+spearmanr", "stsb")])
def test_plus_joined_configurations_score_as_the_glue_ones(joined, config):
    predictions, labels = _random_inputs(config, np.random.default_rng(5))
    metric = evaluate.load(MODULE, joined)
    assert metric.config_name == joined
    assert {f.dtype for f in metric.features.values()} == {"float32" if config == "stsb" else "int64"}
    got = metric.compute(predictions=predictions, references=labels)
    assert got == evaluate.load(MODULE, config).compute(predictions=predictions, references=labels)
    assert list(got) == list(CONFIGS[config])
    reversed_keys = "+".join(reversed(joined.split("+")))
    assert list(evaluate.load(MODULE, reversed_keys).compute(predictions=predictions, references=labels)) == list(
        reversed(CONFIGS[config])
    )
    assert load_glue_metric(joined).compute(predictions=predictions, references=labels) == got


def test_bad_plus_joined_configurations_are_refused():
    for config, message in (
        ("accuracy+bleu", "unknown configuration 'accuracy\\+bleu'"),
        ("accuracy+accuracy", "unknown configuration"),
        ("accuracy+", "unknown configuration"),
        ("matthews", "unknown configuration 'matthews'"),  # configurations name the module's keys
        ("accuracy+pearson", "mixes regression and classification metrics"),
    ):
        with pytest.raises(ValueError, match=message):
            evaluate.load(MODULE, config)
    with pytest.raises(PerceiverLMError, match="no GLUE metric for task 'accuracy\\+pearson'"):
        load_glue_metric("accuracy+pearson")


def test_metric_names_come_from_the_one_table():
    assert metric_names() == ("accuracy", "f1", "matthews", "pearson", "spearman")
    assert {m for task in TASKS.values() for m in task.metrics} <= set(metric_names())
    assert {k for keys in CONFIGS.values() for k in keys} <= set(SCORERS)


def _error_rate(predictions, references):
    return float(np.mean(predictions != references))


def _glue_metric_modules():
    """This project's glue_metric, and the copy of it that evaluate imports (and scores with)."""
    copy = sys.modules[type(evaluate.load(MODULE, "accuracy")).__module__]
    return [tasks.glue.glue_metric, copy]


@pytest.fixture
def passes(monkeypatch):
    """The configurations ``compute_all`` scores with, one per pass; the shared metrics are dropped afterwards."""
    seen = []
    shared = metrics_module._shared_metric

    def counting(config):
        seen.append(config)
        return shared(config)

    monkeypatch.setattr(metrics_module, "_shared_metric", counting)
    yield seen
    shared.cache_clear()


def test_a_new_metric_is_one_row_of_the_table_and_shares_the_pass(monkeypatch, passes):
    for module in _glue_metric_modules():
        monkeypatch.setitem(module.SCORERS, "error_rate", Scorer(_error_rate, name="error"))
    predictions, labels = _random_inputs("mrpc", np.random.default_rng(2))
    task_metrics = ("accuracy", "f1", "error")  # as a GlueTask would list them
    got = compute_all(task_metrics, predictions, labels)
    assert passes == ["accuracy+f1+error_rate"]  # one pass, through one derived configuration
    assert list(got) == list(task_metrics)
    assert got["error"] == pytest.approx(100.0 - got["accuracy"])
    assert got["f1"] == pytest.approx(_previous("f1", predictions, labels), rel=1e-12)
    assert "error" in metric_names()
    assert compute("error", [1, 0, 1, 1], [1.0, 1.0, 1.0, 0.0]) == pytest.approx(50.0)  # whole floats are class ids
    with pytest.raises(PerceiverLMError, match="error: expected class ids"):
        compute("error", [0.5], [1])


def test_a_new_regression_metric_takes_real_values(monkeypatch, passes):
    def mean_squared_error(predictions, references):
        assert predictions.dtype == np.float64  # scored in float64, as pearson and spearmanr are
        return float(np.mean((predictions - references) ** 2))

    for module in _glue_metric_modules():
        monkeypatch.setitem(module.SCORERS, "mse", Scorer(mean_squared_error, regression=True))
    got = compute_all(("pearson", "spearman", "mse"), [0.5, 1.0, 2.0], [1.0, 1.0, 4.0])
    assert passes == ["pearson+spearmanr+mse"]
    assert got["mse"] == pytest.approx(100.0 * (0.25 + 0 + 4) / 3)


def test_a_tuple_mixing_kinds_takes_one_pass_per_kind(passes):
    predictions, labels = np.array([1, 0, 1, 1, 0]), np.array([1, 1, 1, 0, 0])
    got = compute_all(("pearson", "accuracy", "f1"), predictions, labels)
    assert passes == ["accuracy+f1", "pearson"]
    assert list(got) == ["pearson", "accuracy", "f1"]
    assert got == pytest.approx({m: compute(m, predictions, labels) for m in got}, rel=1e-12)
