"""`perceiver-lm glue train/eval/predict` end to end, in subprocesses, on a tiny synthetic GLUE directory."""

import json
import subprocess
import sys

import numpy as np
import pytest
from glue_files import pair_and_regression_tasks

from conftest import REPO
from perceiver_lm import PRESETS, PerceiverLM
from tasks.finetune.predict import primary_score
from tasks.glue.tasks import TASKS


@pytest.fixture(scope="module")
def synthetic_glue(tmp_path_factory):
    return pair_and_regression_tasks(tmp_path_factory.mktemp("glue"))


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


def _best_model_scores(history):
    """The scores of the evaluation that wrote best/: the first with the highest mean primary score."""
    best, best_mean = None, None
    for entry in history:
        mean = float(np.mean([primary_score(TASKS[n], s) for n, s in entry["scores"].items()]))
        if best_mean is None or mean > best_mean:
            best, best_mean = entry, mean
    return best["scores"]


def test_cli_train_eval_predict(synthetic_glue, tmp_path):
    PerceiverLM(PRESETS["tiny"]).save_pretrained(tmp_path / "lm")
    run = tmp_path / "run"
    done = _cli(
        "glue",
        "train",
        "--tasks",
        "mrpc,stsb",
        "--checkpoint",
        str(tmp_path / "lm"),
        "--glue-dir",
        str(synthetic_glue),
        "--output-dir",
        str(run),
        "--max-steps",
        "12",
        "--batch-size",
        "8",
        "--head-hidden",
        "16",
        "--eval-every",
        "6",
        "--mixed-precision",
        "no",  # as `glue eval` scores: fp32 (auto is bf16 on CPUs with AMX), so the numbers compare below
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "paper multi-task" in done.stdout and "87.24" in done.stdout  # the paper's MRPC score beside ours
    saved = json.loads((run / "dev_metrics.json").read_text())
    # No --lr/--warmup-steps given: the tiny shape's fine-tuning defaults were used, and said so.
    assert (saved["options"]["lr"], saved["options"]["warmup_steps"]) == (5e-4, 60)
    assert "fine-tuning defaults of the tiny shape" in done.stderr
    done = _cli(
        "glue",
        "eval",
        str(run / "best"),
        "--glue-dir",
        str(synthetic_glue),
        "--batch-size",
        "16",
        "--out",
        str(tmp_path / "eval.json"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert set(scores) == {"mrpc", "stsb"} and set(scores["stsb"]["dev"]) == {"pearson", "spearman"}
    # best/ (here from one of two evaluations) scores on its own as it scored in training, in other batches
    assert len(saved["history"]) == 2
    expected = _best_model_scores(saved["history"])
    for name, splits in expected.items():
        for split, metrics in splits.items():
            assert scores[name][split] == pytest.approx(metrics, abs=1e-5), (name, split)
    noisy = []
    for _ in range(2):
        args = ["--glue-dir", str(synthetic_glue), "--noise", "mutate:0.5", "--noise", "drop:0.2", "--out"]
        done = _cli("glue", "eval", str(run / "best"), *args, str(tmp_path / "noisy.json"), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        noisy.append(json.loads((tmp_path / "noisy.json").read_text()))
    assert noisy[0] == noisy[1] and noisy[0] != scores  # deterministic, and not the clean inputs
    done = _cli(
        "glue", "eval", str(run / "best"), "--glue-dir", str(synthetic_glue), "--noise", "blur:0.1", cwd=tmp_path
    )
    assert done.returncode == 2 and "--noise blur:0.1: unknown noise kind" in done.stderr.strip().splitlines()[-1]
    done = _cli(
        "glue",
        "predict",
        str(run / "best"),
        "--glue-dir",
        str(synthetic_glue),
        "--batch-size",
        "7",
        "--out",
        str(tmp_path / "sub"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    mrpc = (tmp_path / "sub" / "MRPC.tsv").read_text().splitlines()
    stsb = (tmp_path / "sub" / "STS-B.tsv").read_text().splitlines()
    assert mrpc[0] == stsb[0] == "index\tprediction" and len(mrpc) == len(stsb) == 21
    assert all(line.split("\t")[1] in ("0", "1") for line in mrpc[1:])
    assert all(0.0 <= float(line.split("\t")[1]) <= 5.0 for line in stsb[1:])
    assert [line.split("\t")[0] for line in mrpc[1:]] == [str(i) for i in range(20)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "ckpt", "--batch-size", "0"], "--batch-size must be positive, got 0"),
        (["eval", "ckpt", "--noise-seed", "-1"], "--noise-seed must be in [0, 4294967295], got -1"),
        (["predict", "ckpt", "--batch-size", "-2"], "--batch-size must be positive, got -2"),
    ],
)
def test_eval_and_predict_options_are_checked_before_any_work(tmp_path, args, message):
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["glue", *args])
    assert result.exit_code == 2 and message in result.stderr.strip(), result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "squad"], "unknown GLUE task(s) squad"),
        (["--tasks", "rte", "--glue-dir", "nowhere"], "--glue-dir nowhere: no such file or folder"),
        (["--tasks", "rte", "--batch-size", "0"], "--batch-size must be positive"),
        (["--tasks", "rte", "--checkpoint", "missing"], "missing: no such checkpoint"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    done = _cli("glue", "train", "--preset", "tiny", "--output-dir", str(tmp_path / "r"), *args, cwd=tmp_path)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and last.startswith("error: ") and message in last and "Traceback" not in done.stderr, (
        done.stderr
    )
