import math

import pytest

from tasks.glue.metrics import compute


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
