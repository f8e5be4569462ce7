"""The recipe of docs/design.md ("A task from another dataset"), followed as written: one `GlueTask`
entry whose data is not GLUE's (here a local folder of JSON Lines files, read by `datasets`) trains,
evaluates and predicts like any GLUE task."""

import json

import numpy as np
import pytest

from perceiver_lm.model import PerceiverClassifier
from tasks.finetune.finetune import GlueOptions, finetune
from tasks.finetune.predict import evaluate_checkpoint
from tasks.glue.tasks import TASKS, Columns, GlueTask


def _reviews(n: int, seed: int) -> list[dict]:
    """Short "reviews" whose label is which of two words they hold, among random filler words."""
    rng = np.random.default_rng(seed)
    filler = ["the", "film", "was", "a", "plot", "and", "actor", "scene", "very", "it"]
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(filler, 6)) + ["great" if label else "awful"]
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "stars": ["bad", "good"][label], "review_id": f"r{len(rows)}"})
    return rows


@pytest.fixture
def reviews_task(tmp_path, monkeypatch):
    folder = tmp_path / "reviews"
    folder.mkdir()
    for split, rows in (("train", _reviews(400, 0)), ("validation", _reviews(100, 1))):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = GlueTask(
        "reviews",
        "reviews",
        None,  # a dataset without configurations
        ("review",),
        labeled=Columns("review", None, "stars"),
        test=Columns("review", None, None),
        labels=("bad", "good"),
        metrics=("accuracy", "f1"),
        hub_dataset=str(folder),  # a local folder; a Hub name works the same way
        hub_label="stars",
        hub_index="review_id",
    )
    monkeypatch.setitem(TASKS, "reviews", task)
    return task


def test_a_task_from_another_dataset_is_one_entry_and_fine_tunes_evaluates_like_glue(reviews_task, tmp_path):
    options = GlueOptions(
        tasks="reviews",
        preset="tiny",
        output_dir=str(tmp_path / "run"),
        max_steps=120,
        batch_size=16,
        lr=1e-3,
        warmup_steps=10,
        eval_every=60,
        head_hidden=32,
    )
    result = finetune(options)
    best = result.best["reviews"]["scores"]["dev"]
    assert set(best) == {"accuracy", "f1"}
    assert best["accuracy"] > 90.0, best  # one word decides the label; chance is ~50 %
    model = PerceiverClassifier.from_pretrained(result.best_model)
    assert [t.name for t in model.tasks.tasks] == ["reviews"]
    again = evaluate_checkpoint(result.best_model, None)
    assert again["reviews"]["dev"] == pytest.approx(best)
    card = (result.best_model / "README.md").read_text()
    assert f"Fine-tuned on tasks (data): reviews ({reviews_task.hub_dataset})" in card
