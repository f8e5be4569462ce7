"""Tasks of your own from CSV/TSV/JSON Lines/Parquet files: train, evaluate and predict like GLUE, with clear errors."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from perceiver_lm import PerceiverLMError
from perceiver_lm.model import PerceiverClassifier
from perceiver_lm.tokenizer import decode
from tasks.finetune.data import load_split
from tasks.finetune.finetune import GlueOptions, finetune
from tasks.finetune.own import OwnTask, build_task, job_tasks, read_task_file
from tasks.finetune.predict import evaluate_checkpoint, predict_test

FILLER = ["the", "film", "was", "a", "plot", "and", "actor", "scene", "very", "it"]


def _reviews(n, seed):
    """Short texts whose label is which of two words they hold; ids r0, r1, ..."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(2))
        words = [*rng.choice(FILLER, 6), "great" if label else "awful"]
        rng.shuffle(words)
        rows.append(
            {"id": f"r{i}", "review": " ".join(words) + ", really", "sentiment": ["negative", "positive"][label]}
        )
    return rows


def _pairs(n, seed):
    """Pairs with a score: 5 x the share of "xxx" words over both texts (regression), and a same-letter label."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        share = rng.random()
        words = ["xxx" if rng.random() < share else "ooo" for _ in range(8)]
        rows.append({"a": " ".join(words[:4]), "b": " ".join(words[4:]), "score": 5 * words.count("xxx") / 8})
    return rows


def _write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _options(tmp_path, **fields):
    base = dict(preset="tiny", max_steps=80, eval_every=40, batch_size=16, lr=1e-3, head_hidden=32)
    return GlueOptions(output_dir=str(tmp_path / "run"), **{**base, **fields})


def test_a_csv_task_trains_evaluates_and_predicts_label_names_from_the_cli(tmp_path):
    _write_csv(tmp_path / "reviews_train.csv", _reviews(400, 0))
    dev = _write_csv(tmp_path / "reviews_dev.csv", _reviews(100, 1))
    test = _write_csv(
        tmp_path / "reviews_test.csv", [{k: v for k, v in r.items() if k != "sentiment"} for r in _reviews(12, 2)]
    )
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}

    def cli(*args, cwd=tmp_path, rc=0):
        done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=cwd, env=env)
        assert done.returncode == rc, done.stderr[-2000:]
        return done.stdout if rc == 0 else done.stderr

    common = ("--preset", "tiny", "--max-steps", "80", "--eval-every", "40", "--batch-size", "16", "--lr", "1e-3")
    shown = cli(
        "glue", "train", "--train-file", "reviews_train.csv", "--validation-file", dev, "--test-file", test,
        "--text-column", "review", "--label-column", "sentiment", "--id-column", "id",
        "--head-hidden", "32", "--output-dir", str(tmp_path / "run"), *common,
    )  # fmt: skip
    assert "reviews " in shown and "accuracy/f1" in shown
    scores = json.loads((tmp_path / "run" / "dev_metrics.json").read_text())["best"]["reviews"]["scores"]["dev"]
    assert scores["accuracy"] > 90.0, scores
    # From another folder (the model keeps its files' absolute paths), repeating the columns it was trained on.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    best = str(tmp_path / "run" / "best")
    columns = ("--text-column", "review", "--label-column", "sentiment")
    assert "reviews" in cli("glue", "eval", best, *columns, cwd=elsewhere)
    refused = cli("glue", "eval", best, "--text-column", "text", rc=2)
    assert refused.strip().splitlines() == [
        "error: --text-column text: the model's task reviews reads column 'review' (declared when it was fine-tuned); "
        "give a file with that column, or leave the option out"
    ]
    cli("glue", "predict", str(tmp_path / "run" / "best"), "--out", str(tmp_path / "pred"))
    lines = (tmp_path / "pred" / "reviews.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 13
    truth = {r["id"]: r["sentiment"] for r in _reviews(12, 2)}
    got = dict(line.split("\t") for line in lines[1:])
    assert set(got) == set(truth) and set(got.values()) <= {"negative", "positive"}
    assert sum(got[k] == truth[k] for k in truth) >= 10  # the label names come back, mostly right


def test_a_pair_regression_task_and_a_classification_task_from_a_task_file_train_together(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _write_jsonl(folder / "sim_train.jsonl", _pairs(400, 0))
    _write_jsonl(folder / "sim_dev.jsonl", _pairs(100, 1))
    _write_jsonl(folder / "rev_train.jsonl", _reviews(400, 0))
    _write_jsonl(folder / "rev_dev.jsonl", _reviews(100, 1))
    task_file = folder / "tasks.toml"
    task_file.write_text(
        '[[task]]\nname = "similar"\ntrain_file = "sim_train.jsonl"\nvalidation_file = "sim_dev.jsonl"\n'
        'text_column = "a"\ntext_pair_column = "b"\nlabel_column = "score"\ntype = "regression"\n\n'
        '[[task]]\ntrain_file = "rev_train.jsonl"\nvalidation_file = "rev_dev.jsonl"\ntext_column = "review"\n'
        'label_column = "sentiment"\nmetrics = ["accuracy", "matthews"]\n'
    )
    result = finetune(_options(tmp_path, task_file=str(task_file), max_steps=240, eval_every=80))
    similar, rev = result.best["similar"]["scores"]["dev"], result.best["rev"]["scores"]["dev"]
    assert set(similar) == {"pearson", "spearman"} and similar["pearson"] > 80.0, similar
    assert set(rev) == {"accuracy", "matthews"} and rev["accuracy"] > 85.0, rev
    model = PerceiverClassifier.from_pretrained(result.best_model)
    assert [t.name for t in model.tasks.tasks] == ["similar", "rev"]
    assert model.tasks.tasks[1].about["labels"] == ["negative", "positive"]
    assert evaluate_checkpoint(result.best_model, None, "rev")["rev"]["dev"] == pytest.approx(rev)
    with pytest.raises(PerceiverLMError, match="this model has no task 'sst2'; it has: similar, rev"):
        evaluate_checkpoint(result.best_model, None, "sst2")
    with pytest.raises(PerceiverLMError, match="no test file to predict; pass --test-file"):
        predict_test(result.best_model, None, tmp_path / "pred")


def test_labels_come_from_the_training_file_sorted_numerically_when_they_are_numbers(tmp_path):
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 2, 2, 10, 1])]
    task = build_task(OwnTask(_write_jsonl(tmp_path / "n.jsonl", rows), _write_jsonl(tmp_path / "d.jsonl", rows)))
    assert task.labels == ("1", "2", "10") and task.metrics == ("accuracy",) and task.name == "n"
    split = load_split(task, "train", None, 64)
    assert split.labels == [2.0, 1.0, 1.0, 2.0, 0.0] and split.index == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    "train, dev, fields, message",
    [
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], [{"text": "c", "label": "z"}], {},
         r"d\.jsonl: row 1, column 'label': label 'z' is not one of the training labels \(x, y\)"),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], [{"words": "c", "label": "x"}], {},
         r"d\.jsonl: no column 'text' \(found: words, label\)"),
        ([{"text": "a", "label": 1.5}, {"text": "b", "label": "much"}], [{"text": "c", "label": 2}],
         {"type": "regression"}, r"t\.jsonl: row 2, column 'label': expected a number \(a regression target\)"),
        ([{"text": "a", "label": "x"}, {"text": None, "label": "y"}], [{"text": "c", "label": "x"}], {},
         r"t\.jsonl: row 2, column 'text': expected text"),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], [{"text": "c", "label": "x"}], {},
         r"t\.jsonl: column 'label' holds 1 distinct label\(s\)"),
    ],
)  # fmt: skip
def test_bad_files_are_one_line_naming_file_row_and_column(tmp_path, train, dev, fields, message):
    own = OwnTask(_write_jsonl(tmp_path / "t.jsonl", train), _write_jsonl(tmp_path / "d.jsonl", dev), **fields)
    with pytest.raises(PerceiverLMError, match=message):
        task = build_task(own)
        load_split(task, "train", None, 64)
        load_split(task, "dev", None, 64)


def test_an_empty_split_a_missing_file_and_a_bad_task_file_are_refused(tmp_path):
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    (tmp_path / "empty.csv").write_text("text,label\n")
    own = OwnTask(_write_jsonl(tmp_path / "t.jsonl", rows), str(tmp_path / "empty.csv"))
    with pytest.raises(PerceiverLMError, match=r"empty\.csv: no examples"):
        load_split(build_task(own), "dev", None, 64)
    with pytest.raises(PerceiverLMError, match=r"nope\.csv: no such file"):
        build_task(OwnTask(str(tmp_path / "nope.csv"), str(tmp_path / "nope.csv")))
    expected = r"t\.txt: expected a \.csv, \.tsv, \.json, \.jsonl, \.parquet, \.conll, \.conllu file"
    with pytest.raises(PerceiverLMError, match=expected):
        build_task(OwnTask(str(tmp_path / "t.txt"), str(tmp_path / "t.txt")))
    bad = tmp_path / "tasks.json"
    bad.write_text(json.dumps({"task": [{"train_file": "t.jsonl", "validation_file": "t.jsonl", "colour": "red"}]}))
    with pytest.raises(PerceiverLMError, match=r"--task-file .*tasks\.json: task 1: unknown key\(s\) colour"):
        read_task_file(str(bad))
    with pytest.raises(PerceiverLMError, match="needs both --train-file and --validation-file"):
        GlueOptions(train_file="t.csv")
    clash = GlueOptions(
        tasks="sst2", train_file=str(tmp_path / "t.jsonl"), validation_file=str(tmp_path / "t.jsonl"), task_name="sst2"
    )
    with pytest.raises(PerceiverLMError, match="task name.* sst2 taken twice"):
        job_tasks(clash)


def test_tsv_and_parquet_files_read_like_csv(tmp_path):
    import pandas as pd

    rows = _reviews(6, 0)
    tsv = tmp_path / "r.tsv"
    tsv.write_text("id\treview\tsentiment\n" + "".join(f"{r['id']}\t{r['review']}\t{r['sentiment']}\n" for r in rows))
    parquet = tmp_path / "r.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    for path in (tsv, parquet):
        task = build_task(OwnTask(str(path), str(path), text_column="review", label_column="sentiment", id_column="id"))
        split = load_split(task, "dev", None, 64)
        assert task.labels == ("negative", "positive") and split.index == [r["id"] for r in rows]
        assert split.labels == [float(r["sentiment"] == "positive") for r in rows]


def test_documents_longer_than_the_window_are_read_whole_and_the_model_remembers_the_length(tmp_path):
    # The word that decides the label sits past the first window of `tiny` (128 bytes): cut to the window, the
    # task is at chance; read whole (--max-length 400, four windows), it is learned.
    rng = np.random.default_rng(0)

    def rows(n):
        out = []
        for _ in range(n):
            label = int(rng.integers(2))
            filler = " ".join(rng.choice(FILLER, 55))[:300]
            out.append({"text": f"{filler} {'great' if label else 'awful'}", "label": label})
        return out

    train, dev = (
        _write_jsonl(tmp_path / "long_train.jsonl", rows(400)),
        _write_jsonl(tmp_path / "long_dev.jsonl", rows(100)),
    )
    result = finetune(
        _options(tmp_path, train_file=train, validation_file=dev, max_length=400, max_steps=160, eval_every=80)
    )
    accuracy = result.best["long"]["scores"]["dev"]["accuracy"]
    assert accuracy > 90.0, accuracy
    model = PerceiverClassifier.from_pretrained(result.best_model)
    assert model.config.max_seq_len == 128 and model.tasks.max_length == 400
    assert evaluate_checkpoint(result.best_model, None)["long"]["dev"]["accuracy"] == pytest.approx(accuracy)


def test_a_task_of_your_own_from_a_dataset_folder_with_class_names_trains_and_predicts(tmp_path):
    # --dataset: anything `datasets.load_dataset` reads (a Hub name, or as here a local folder of Parquet
    # splits whose label column is a ClassLabel: its names are the labels, its ids the stored values).
    import datasets

    folder = tmp_path / "moviereviews"
    (folder / "data").mkdir(parents=True)
    features = datasets.Features(
        {"review": datasets.Value("string"), "mood": datasets.ClassLabel(names=["sad", "glad"])}
    )
    for split, rows in (("train", _reviews(400, 0)), ("validation", _reviews(100, 1)), ("test", _reviews(10, 2))):
        table = {"review": [r["review"] for r in rows], "mood": [int(r["sentiment"] == "positive") for r in rows]}
        datasets.Dataset.from_dict(table, features=features).to_parquet(str(folder / "data" / f"{split}.parquet"))
    options = _options(tmp_path, dataset=str(folder), text_column="review", label_column="mood", max_steps=80)
    result = finetune(options)
    scores = result.best["moviereviews"]["scores"]["dev"]
    assert scores["accuracy"] > 90.0, scores
    model = PerceiverClassifier.from_pretrained(result.best_model)
    assert model.tasks.tasks[0].about["labels"] == ["sad", "glad"] and model.tasks.tasks[0].about["dataset"] == str(
        folder
    )
    assert evaluate_checkpoint(result.best_model, None)["moviereviews"]["dev"] == pytest.approx(scores)
    (written,) = predict_test(result.best_model, None, tmp_path / "pred")
    lines = written.read_text().splitlines()
    assert written.name == "moviereviews.tsv" and len(lines) == 11
    assert {line.split("\t")[1] for line in lines[1:]} <= {"sad", "glad"}


def test_window_and_model_fields_are_options_kept_in_the_model(tmp_path):
    rows = [{"text": f"{' '.join(['filler'] * 20)} {'great' if i % 2 else 'awful'}", "label": i % 2} for i in range(64)]
    train, dev = _write_jsonl(tmp_path / "t.jsonl", rows), _write_jsonl(tmp_path / "d.jsonl", rows[:16])
    fields = dict(train_file=train, validation_file=dev, max_length=300, max_steps=4, eval_every=4)
    result = finetune(_options(tmp_path, window=64, model={"num_self_layers": 1, "d_model": 32}, **fields))
    model = PerceiverClassifier.from_pretrained(result.best_model)
    assert (model.tasks.max_length, model.tasks.window) == (300, 64)
    assert (model.config.num_self_layers, model.config.d_model, model.config.num_latents) == (1, 32, 16)
    accuracy = result.best["t"]["scores"]["dev"]["accuracy"]
    assert evaluate_checkpoint(result.best_model, None)["t"]["dev"]["accuracy"] == pytest.approx(accuracy)
    with pytest.raises(PerceiverLMError, match=r"--window 256: longer than the model's window \(max_seq_len=128\)"):
        finetune(_options(tmp_path, train_file=train, validation_file=dev, window=256, overwrite=True))
    with pytest.raises(PerceiverLMError, match="--window"):
        _options(tmp_path, train_file=train, validation_file=dev, window=0)
    with pytest.raises(PerceiverLMError, match=r"shape is the checkpoint.s; leave out the \[model\] table"):
        _options(tmp_path, checkpoint=str(tmp_path), model={"d_model": 32})
    with pytest.raises(PerceiverLMError, match="d_modle"):
        finetune(_options(tmp_path, **fields, model={"d_modle": 32}, overwrite=True))


def test_the_shipped_imdb_recipe_is_a_valid_options_file(tmp_path):
    from perceiver_lm.options import read_options_file
    from perceiver_lm.validation import check_fields

    data = read_options_file(REPO / "configs" / "imdb_lra.toml")
    options = GlueOptions(**check_fields(GlueOptions, data, "configs/imdb_lra.toml", "GLUE option"))
    assert (options.max_length, options.window, options.model) == (4000, 512, {"d_model": 128, "num_self_layers": 4})


def test_own_tsv_and_csv_cells_are_read_as_the_text_they_hold(tmp_path):
    # Quoting is off in TSV: a text may start with a quote or hold an unclosed one, and every line is one row.
    tsv = tmp_path / "q.tsv"
    tsv.write_text(
        'id\ttext\tlabel\n007\t"quoted" start\t01\n008\tan "unclosed quote\t02\n009\tNA\t01\n'
        '010\tnull\t02\n011\tNone\t01\n012\t"\t02\n'
    )
    task = build_task(OwnTask(str(tsv), str(tsv), id_column="id"))
    split = load_split(task, "dev", None, 64)
    assert task.labels == ("01", "02")  # the label names as written, sorted by value
    assert split.index == ["007", "008", "009", "010", "011", "012"]
    assert split.labels == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert [decode(ids) for ids in split.ids] == ['"quoted" start', 'an "unclosed quote', "NA", "null", "None", '"']
    # CSV keeps its quoting rules (a quoted cell may hold commas and line breaks), and nothing is typed.
    csv_file = tmp_path / "q.csv"
    csv_file.write_text('id,text,label\n007,"a, b\nc",1.50\n008,NA,2\n')
    regression = build_task(OwnTask(str(csv_file), str(csv_file), id_column="id", type="regression"))
    split = load_split(regression, "dev", None, 64)
    assert split.index == ["007", "008"] and split.labels == [1.5, 2.0]
    assert [decode(ids) for ids in split.ids] == ["a, b\nc", "NA"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("w.tsv", "text\tlabel\na\tx\nb\ty\textra\n", r"w\.tsv: line 3: 3 field\(s\), the header has 2"),
        ("w.csv", 'text,label\n"a,x\nb,y\n', r"w\.csv: line \d+: unexpected end of data"),
        ("w.csv", "text,label\na,x\nb\n", r"w\.csv: line 3: 1 field\(s\), the header has 2"),
        ("w.csv", "text,text\na,x\n", r"w\.csv: line 1: column name\(s\) 'text' twice"),
        ("w.csv", "text,label\na,x\nb,\n", r"w\.csv: row 2, column 'label': no label"),
        ("w.tsv", "text\tlabel\na\tNaN\nb\t1\n", r"w\.tsv: row 1, column 'label': the target 'NaN' is not finite"),
    ],
)
def test_own_files_that_would_lose_or_merge_rows_are_one_line_naming_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    kind = "regression" if "NaN" in content else "classification"
    with pytest.raises(PerceiverLMError, match=message):
        load_split(build_task(OwnTask(str(path), str(path), type=kind)), "train", None, 64)


def test_a_regression_target_of_minus_one_is_a_target_and_nan_is_refused_on_the_dataset_path(tmp_path):
    import datasets

    folder = tmp_path / "scores"
    (folder / "data").mkdir(parents=True)
    for split, values in (("train", [-1.0, 0.5, 2.0]), ("validation", [-1.0, float("nan")])):
        table = {"text": [f"t{i}" for i in range(len(values))], "label": values}
        datasets.Dataset.from_dict(table).to_parquet(str(folder / "data" / f"{split}.parquet"))
    task = build_task(OwnTask(dataset=str(folder), type="regression"))
    assert load_split(task, "train", None, 64).labels == [-1.0, 0.5, 2.0]
    with pytest.raises(
        PerceiverLMError, match=r"task scores dev: .*row 1, column 'label': the target nan is not finite"
    ):
        load_split(task, "dev", None, 64)


def test_relative_paths_are_kept_absolute_and_a_metric_of_the_other_kind_is_refused_before_training(
    tmp_path, monkeypatch
):
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    _write_jsonl(tmp_path / "t.jsonl", rows)
    monkeypatch.chdir(tmp_path)
    task = build_task(OwnTask("t.jsonl", "./t.jsonl"))
    assert dict(task.files) == {"train": str(tmp_path / "t.jsonl"), "dev": str(tmp_path / "t.jsonl")}
    with pytest.raises(PerceiverLMError, match=r"^task t has no split 'matched' \(train, dev, test\)$"):
        load_split(task, "matched", None, 64)  # a task of your own is not spoken of as GLUE
    with pytest.raises(PerceiverLMError, match=r"task t: metric\(s\) pearson do not score classification"):
        build_task(OwnTask("t.jsonl", "t.jsonl", metrics=("accuracy", "pearson")))
    scores = [{"text": "a", "label": 0.5}, {"text": "b", "label": 2}]
    _write_jsonl(tmp_path / "s.jsonl", scores)
    with pytest.raises(PerceiverLMError, match=r"task s: metric\(s\) accuracy do not score regression \(choose from "):
        build_task(OwnTask("s.jsonl", "s.jsonl", type="regression", metrics=("accuracy",)))
