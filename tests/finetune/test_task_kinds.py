"""A task kind is one class (docs/design.md, "A new task kind"): this test follows that recipe."""

import json

import pytest
import torch

from perceiver_lm import PerceiverLMError
from perceiver_lm.model import PerceiverClassifier
from perceiver_lm.validation import shown
from tasks.finetune import kinds
from tasks.finetune.data import load_split
from tasks.finetune.finetune import GlueOptions, finetune
from tasks.finetune.kinds import Classification, Regression
from tasks.finetune.own import OwnTask, build_task
from tasks.finetune.predict import predict_test


class Percent(Regression):
    """A score written as a percentage ("73%"): regression on the fraction, predictions written back as percent."""

    name = "percent"

    def target(self, value, labels):
        text = str(value)
        if not text.endswith("%"):
            raise ValueError(f"expected a percentage such as 73%, got {shown(value)}")
        return super().target(text[:-1], labels) / 100

    def text(self, prediction, labels, bounds):
        return f"{100 * float(prediction):.1f}%"


def _rows(n, seed):
    """Texts of k 'x' words among 'o' words; the score is k in 8, as a percentage."""
    rng = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        k = int(torch.randint(0, 9, (1,), generator=rng))
        rows.append({"id": f"p{i}", "text": " ".join(["x"] * k + ["o"] * (8 - k)), "score": f"{100 * k / 8:g}%"})
    return rows


def test_the_built_in_kinds_own_labels_losses_predictions_and_metrics():
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0]])
    classes = Classification()
    assert classes.target("b", ("a", "b")) == 1.0 and classes.target(1.0, ("0", "1")) == 1.0
    assert classes.predictions(logits).tolist() == [1.0, 0.0]
    assert [classes.text(p, ("neg", "pos"), None) for p in (1.0, 0.0)] == ["pos", "neg"]
    assert classes.default_metrics(("a", "b")) == ("accuracy", "f1") and classes.num_outputs(("a", "b", "c")) == 3
    scores = Regression()
    assert scores.predictions(logits).tolist() == pytest.approx([0.1, 3.0]) and scores.num_outputs(()) == 1
    assert scores.text(7.25, (), (0.0, 5.0)) == "5.000" and scores.default_metrics(()) == ("pearson", "spearman")
    assert float(scores.loss(logits, torch.tensor([0.1, 1.0]))) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="the target 'inf' is not finite"):
        scores.target("inf", ())


def test_a_new_kind_is_one_class_that_trains_evaluates_and_predicts(tmp_path, monkeypatch):
    monkeypatch.setattr(kinds, "KINDS", (*kinds.KINDS, Percent()))  # the recipe's one line of registration
    for name, rows in (("train", _rows(300, 0)), ("dev", _rows(60, 1)), ("test", _rows(8, 2))):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    declared = dict(train_file="train.jsonl", validation_file="dev.jsonl", test_file="test.jsonl", name="share")
    (tmp_path / "tasks.json").write_text(
        json.dumps({"task": [{**declared, "label_column": "score", "id_column": "id", "type": "percent"}]})
    )
    own = OwnTask(str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl"), label_column="score", type="percent")
    task = build_task(own)
    assert task.kind.name == "percent" and task.metrics == ("pearson", "spearman") and task.num_outputs == 1
    targets = load_split(task, "train", None, 64).labels
    assert targets[:3] == [float(r["score"][:-1]) / 100 for r in _rows(3, 0)]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x o", "score": "high"}) + "\n")
    with pytest.raises(PerceiverLMError, match=r"bad\.jsonl: row 1, column 'score': expected a percentage such"):
        load_split(build_task(OwnTask(str(tmp_path / "bad.jsonl"), str(tmp_path / "bad.jsonl"), label_column="score",
                                      type="percent")), "train", None, 64)  # fmt: skip

    options = GlueOptions(
        task_file=str(tmp_path / "tasks.json"), preset="tiny", max_steps=120, eval_every=60, batch_size=16, lr=1e-3,
        head_hidden=32, output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    result = finetune(options)
    assert result.best["share"]["scores"]["dev"]["pearson"] > 0.8, result.best
    model = PerceiverClassifier.from_pretrained(result.best_model)
    assert model.tasks.tasks[0].about["type"] == "percent"  # the model remembers its kind
    (written,) = predict_test(result.best_model, None, tmp_path / "pred")
    lines = written.read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 9
    assert all(line.split("\t")[1].endswith("%") for line in lines[1:])
