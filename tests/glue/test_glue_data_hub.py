"""Loading from the Hub (no --glue-dir): where a task's data lives and which columns it reads are the task's own.

``datasets.load_dataset`` is replaced by a fake data source holding small in-memory ``datasets.Dataset``s.
"""

import datasets
import numpy as np
import pytest

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.tokenizer import encode, encode_pair
from tasks.finetune.data import load_split
from tasks.glue.tasks import GLUE_HUB_SPLITS, TASKS, Columns, GlueTask

# A sentiment task of another Hub dataset, declared as one value: columns text/label, no id column, no
# configuration, and no validation split (its "test" split serves as dev).
SENTIMENT = GlueTask(
    "sentiment",
    "SENTIMENT",
    None,
    ("text",),
    labeled=Columns("text", None, "label"),
    test=Columns("text", None, None),
    labels=("neg", "pos"),
    metrics=("accuracy", "f1"),
    hub_dataset="someone/movie-sentiment",
    hub_index=None,
    hub_splits=(("train", "train"), ("dev", "test")),
)


@pytest.fixture
def hub(monkeypatch):
    """A fake Hub: ``hub[(path, config, split)] = {column: values}``; ``hub.calls`` lists the loads."""

    class FakeHub(dict):
        calls: list

    tables = FakeHub()
    tables.calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        tables.calls.append((path, name, split))
        return datasets.Dataset.from_dict(tables[(path, name, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables


def test_a_task_of_another_hub_dataset_loads_with_its_own_columns_and_splits(hub):
    texts = ["a dull film", "a fine film", "great", "awful"]
    hub[("someone/movie-sentiment", None, "train")] = {"text": texts, "label": [0, 1, 1, 0]}
    hub[("someone/movie-sentiment", None, "test")] = {"text": texts[:2], "label": [1, 0], "extra": [7, 8]}

    train = load_split(SENTIMENT, "train", None, 64)
    assert hub.calls == [("someone/movie-sentiment", None, "train")]
    assert [ids.tolist() for ids in train.ids] == [encode(t).tolist() for t in texts]
    assert train.labels == [0.0, 1.0, 1.0, 0.0] and train.labeled
    assert train.index == ["0", "1", "2", "3"]  # no id column: the row numbers
    assert train.source == "someone/movie-sentiment:train"

    dev = load_split(SENTIMENT, "dev", None, 64)
    assert hub.calls[-1] == ("someone/movie-sentiment", None, "test")
    assert dev.labels == [1.0, 0.0] and dev.index == ["0", "1"] and dev.name == "dev"
    assert dev.source == "someone/movie-sentiment:test"


def test_label_strings_on_the_hub_map_through_the_tasks_labels(hub):
    hub[("someone/movie-sentiment", None, "train")] = {"text": ["x", "y"], "label": ["pos", "neg"]}
    assert load_split(SENTIMENT, "train", None, 64).labels == [1.0, 0.0]
    hub[("someone/movie-sentiment", None, "train")] = {"text": ["x"], "label": ["meh"]}
    with pytest.raises(PerceiverLMError, match="someone/movie-sentiment:train row 0: label 'meh' is not one of"):
        load_split(SENTIMENT, "train", None, 64)


def test_a_missing_hub_column_is_a_one_line_error_naming_the_columns_found(hub):
    hub[("someone/movie-sentiment", None, "train")] = {"sentence": ["x"], "label": [0]}
    with pytest.raises(PerceiverLMError, match="has no column 'text' \\(found: sentence, label\\)") as caught:
        load_split(SENTIMENT, "train", None, 64)
    assert "\n" not in str(caught.value)
    with_ids = GlueTask(**{**SENTIMENT.__dict__, "hub_index": "id"})
    hub[("someone/movie-sentiment", None, "train")] = {"text": ["x"], "label": [0]}
    with pytest.raises(PerceiverLMError, match="has no column 'id'"):
        load_split(with_ids, "train", None, 64)


def test_glue_tasks_keep_nyu_mll_glue_and_its_columns_and_split_names():
    for task in TASKS.values():
        assert (task.hub_dataset, task.hub_label, task.hub_index) == ("nyu-mll/glue", "label", "idx")
        assert task.hub_config == task.name and task.hub_splits == GLUE_HUB_SPLITS
    mnli = TASKS["mnli"]
    assert [mnli.hub_split(s) for s in ("train", "matched", "mismatched", "test_matched")] == [
        "train",
        "validation_matched",
        "validation_mismatched",
        "test_matched",
    ]
    assert TASKS["sst2"].hub_split("dev") == "validation" and TASKS["sst2"].hub_split("test") == "test"


@pytest.mark.parametrize("name", list(TASKS))
def test_every_glue_task_loads_from_the_hub_as_before(hub, name):
    task = TASKS[name]
    pair = len(task.hub_text) == 2
    texts = [f"first {i} é" for i in range(3)]

    def table(labels):
        columns = {task.hub_text[0]: texts, "label": labels, "idx": [10, 11, 12]}
        return columns | ({task.hub_text[1]: ["second"] * 3} if pair else {})

    labels = [0.5, 2.5, 5.0] if task.is_regression else [float(i % len(task.labels)) for i in range(3)]
    for split_name in ["train", *(s for s, _ in task.dev)]:
        hub_split = {"train": "train", "dev": "validation"}.get(split_name, f"validation_{split_name}")
        hub[("nyu-mll/glue", task.hub_config, hub_split)] = table(labels)
        split = load_split(task, split_name, None, 2048)
        assert hub.calls[-1] == ("nyu-mll/glue", task.hub_config, hub_split)
        assert split.source == f"nyu-mll/glue/{task.hub_config}:{hub_split}"
        assert split.labels == pytest.approx(labels) and split.index == ["10", "11", "12"]
        for ids, text in zip(split.ids, texts, strict=True):
            np.testing.assert_array_equal(ids, encode_pair(text, "second") if pair else encode(text))
    for stem, _ in task.test_files:
        hub[("nyu-mll/glue", task.hub_config, stem)] = table([-1, -1, -1])  # the Hub's test splits: label -1
        split = load_split(task, stem, None, 2048)
        assert hub.calls[-1] == ("nyu-mll/glue", task.hub_config, stem)
        assert split.labels == [] and not split.labeled and split.index == ["10", "11", "12"]


def test_a_split_labelled_in_part_is_refused_and_a_test_split_needs_no_label_column(hub):
    hub[("someone/movie-sentiment", None, "train")] = {"text": ["a", "b", "c"], "label": [0, -1, 1]}
    with pytest.raises(PerceiverLMError, match=r"1 of 3 rows have no label in column 'label'"):
        load_split(SENTIMENT, "train", None, 64)
    unlabeled = GlueTask(**{**SENTIMENT.__dict__, "test_files": (("test", "test"),), "hub_splits": (("dev", "dev"),)})
    hub[("someone/movie-sentiment", None, "test")] = {"text": ["x", "y"]}
    split = load_split(unlabeled, "test", None, 64)
    assert len(split) == 2 and not split.labels and not split.labeled
