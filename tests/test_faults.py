"""Faults while a run writes: a full disk, a read-only folder, a kill in the middle of checkpointing,
two runs on one folder, a diverging loss. No user file is lost, no half-written checkpoint looks
complete, every failure is one ``error:`` line, and a resumed run continues where the last
checkpoint left off without repeating steps in its metrics."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from conftest import newest_weights, sigterm_at
from perceiver_lm import PerceiverLM
from perceiver_lm import checkpoint as ckpt
from perceiver_lm.run_dir import LOCK_FILE, FolderLock

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        str(corpus),
        "--output-dir",
        str(out),
        "--batch-size",
        "4",
        "--eval-windows",
        "2",
        "--report-to",
        "none",
        "--log-every",
        "1",
        *extra,
    ]


def _last_error(result) -> str:
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    return lines[-1]


def _strict_records(path: Path) -> list[dict]:
    """metrics.jsonl as strict JSON: NaN or Infinity (which only Python reads) fail the test."""

    def refuse(constant):
        raise AssertionError(f"{path}: bare {constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _assert_steps_once(records: list[dict]) -> None:
    for kind in ("train_loss", "eval_loss"):
        steps = [r["step"] for r in records if kind in r]
        assert steps == sorted(set(steps)), (kind, steps)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False):
    """Mount a small tmpfs at ``path`` (yields True) where this process may, else yields False."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = (
        os.geteuid() == 0
        and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], capture_output=True)


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(letters_file, tmp_path, monkeypatch):
    with _tmpfs(tmp_path / "disk", "3m") as mounted:
        if not mounted:  # no tmpfs here: the second checkpoint's first write meets a full disk instead
            real, calls = ckpt.save_file, []

            def save_file(*args, **kwargs):
                calls.append(1)
                if len(calls) > 2:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(*args, **kwargs)

            monkeypatch.setattr(ckpt, "save_file", save_file)
        out = tmp_path / "disk" / "run"
        result = runner.invoke(
            app,
            _args(
                letters_file,
                out,
                "--max-steps",
                "20",
                "--save-every",
                "2",
                "--eval-every",
                "100",
                "--keep-checkpoints",
                "10",
            ),
        )
        line = _last_error(result)
        assert "disk full" in line or "quota" in line, line
        done = ckpt.list_checkpoints(out)
        assert done and done[-1].name != "checkpoint-0000020"
        for path in done:  # every checkpoint that looks complete is complete
            PerceiverLM.from_pretrained(path)
            ckpt.read_training_files(path)
        assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
        _strict_records(out / "metrics.jsonl")


def test_read_only_output_folder_is_one_line(letters_file, tmp_path):
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only tmpfs here, and root ignores folder permissions")
            (tmp_path / "ro").chmod(0o555)
        result = runner.invoke(app, _args(letters_file, tmp_path / "ro" / "run", "--max-steps", "2"))
        line = _last_error(result)
        assert len(result.stderr.splitlines()) == 1
        assert "read-only file system" in line or "permission denied" in line, line


# Runs `perceiver-lm` and SIGKILLs itself at one point of checkpointing: after a checkpoint's files
# are written but before its folder is renamed into place, or half-way through deleting an old one.
KILLER = """
import os, shutil, signal, sys
from pathlib import Path
import perceiver_lm.checkpoint as ckpt
point = sys.argv[1]
calls = []
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "before-rename":
    real_fsync = ckpt._fsync_tree
    def fsync_then_die(directory):
        real_fsync(directory)
        calls.append(directory)
        if len(calls) == 2:
            die()
    ckpt._fsync_tree = fsync_then_die
else:
    real_rmtree = shutil.rmtree
    def rmtree(path, *args, **kwargs):
        if ".deleting-" in str(path):
            sorted(Path(path).iterdir())[0].unlink()
            die()
        return real_rmtree(path, *args, **kwargs)
    shutil.rmtree = rmtree
from cli.main import main
sys.argv = ["perceiver-lm", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize(
    "point, stale", [("before-rename", ".checkpoint-0000004.tmp-"), ("mid-prune", ".checkpoint-0000002.deleting-")]
)
def test_sigkill_in_checkpointing_then_resume_cleans_up_and_repeats_no_step(letters_file, tmp_path, point, stale):
    out = tmp_path / "run"
    args = _args(
        letters_file, out, "--max-steps", "8", "--save-every", "2", "--eval-every", "4", "--keep-checkpoints", "1"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, point, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [p.name for p in out.iterdir() if p.name.startswith(stale)], sorted(p.name for p in out.iterdir())
    for path in ckpt.list_checkpoints(out):  # whatever looks like a checkpoint loads
        PerceiverLM.from_pretrained(path)
        ckpt.read_training_files(path)

    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    assert "removed " + stale in resumed.stderr and "resuming from" in resumed.stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "checkpoint-0000008", "metrics.jsonl"]
    records = _strict_records(out / "metrics.jsonl")
    _assert_steps_once(records)
    assert [r["step"] for r in records if "train_loss" in r] == list(range(1, 9))


def _wait_for(predicate, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_two_runs_on_one_folder_the_second_is_refused_naming_the_first(letters_file, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            *_args(letters_file, out, "--max-steps", "100000", "--save-every", "100000", "--eval-every", "100000"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / LOCK_FILE).read_text().strip() == str(first.pid))
        for extra in ([], ["--resume"], ["--overwrite"]):
            second = runner.invoke(app, [*_args(letters_file, out, "--max-steps", "2"), *extra])
            line = _last_error(second)
            assert (
                len(second.stderr.splitlines()) == 1 and f"another run (pid {first.pid}) is using this folder" in line
            ), line
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The OS released the killed run's lock: resuming works, and its metrics past the last checkpoint (none)
    # are dropped.
    resumed = runner.invoke(app, [*_args(letters_file, out, "--max-steps", "2"), "--resume"])
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in _strict_records(out / "metrics.jsonl") if "train_loss" in r] == [1, 2]


def test_a_lock_held_in_this_process_refuses_every_writing_command(letters_file, tmp_path):
    out = tmp_path / "held"
    with FolderLock(out):
        for args in (
            _args(letters_file, out, "--max-steps", "2"),
            ["glue", "train", "--preset", "tiny", "--glue-dir", str(tmp_path), "--output-dir", str(out)],
        ):
            result = runner.invoke(app, args)
            assert f"another run (pid {os.getpid()})" in _last_error(result)


# lr 1000 makes the weights overflow within a few steps: a checkpoint due then is refused, else the next loss
# stops the run.
@pytest.mark.parametrize(
    "save_every, message", [("1", "the weights are not finite; not saved"), ("100", "the training loss is not finite")]
)
def test_diverging_run_stops_without_saving_broken_weights(letters_file, tmp_path, save_every, message):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        _args(
            letters_file,
            out,
            "--max-steps",
            "30",
            "--save-every",
            save_every,
            "--eval-every",
            "100",
            "--lr",
            "1000",
            "--warmup-steps",
            "0",
        ),
    )
    line = _last_error(result)
    assert message in line, line
    for path in ckpt.list_checkpoints(out):
        state = ckpt.load_state_dict(path)
        assert all(torch.isfinite(t).all() for t in state.values()), path
    _strict_records(out / "metrics.jsonl")


def test_overwrite_replaces_the_earlier_run_and_keeps_the_users_files(letters_file, tmp_path):
    out = tmp_path / "run"
    assert (
        runner.invoke(
            app, _args(letters_file, out, "--max-steps", "4", "--save-every", "2", "--keep-checkpoints", "5")
        ).exit_code
        == 0
    )
    (out / "notes.txt").write_text("mine\n")
    again = runner.invoke(app, [*_args(letters_file, out, "--max-steps", "2", "--save-every", "2"), "--overwrite"])
    assert again.exit_code == 0, again.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "checkpoint-0000002", "metrics.jsonl", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine\n"
    assert max(r["step"] for r in _strict_records(out / "metrics.jsonl")) == 2


def test_convert_overwrite_replaces_only_an_earlier_conversion(tmp_path):
    from perceiver_lm import PRESETS
    from perceiver_lm.interop import export_to_transformers

    source = export_to_transformers(
        PerceiverLM(
            PRESETS["tiny"].replace(
                locality_bias=False,
                locality_tiling=False,
                tie_decoder_queries=False,
                decoder_heads=8,
                decoder_qk_channels=256,
                decoder_v_channels=64,
            )
        ),
        tmp_path / "hf",
    )
    out = tmp_path / "ours"
    assert runner.invoke(app, ["convert", str(out), "--from-transformers", str(source)]).exit_code == 0
    refused = runner.invoke(app, ["convert", str(out), "--from-transformers", str(source)])
    assert "pass --overwrite" in _last_error(refused)
    replaced = runner.invoke(app, ["convert", str(out), "--from-transformers", str(source), "--overwrite"])
    assert replaced.exit_code == 0, replaced.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_glue_overwrite_replaces_best_and_metrics_and_keeps_the_users_files(tmp_path):
    from glue.glue_files import write_task

    rows = [("a good film", "", "1"), ("a bad film", "", "0")] * 4
    write_task(tmp_path / "glue", "SST-2", {"train": rows, "dev": rows}, {})
    out = tmp_path / "glue_run"
    (out / "best").mkdir(parents=True)
    (out / "best" / "config.json").write_text("{}\n")  # an earlier run's best model, as far as names go
    (out / "dev_metrics.json").write_text('{"best": "earlier"}\n')
    (out / "notes.txt").write_text("mine\n")
    args = [
        "glue",
        "train",
        "--preset",
        "tiny",
        "--glue-dir",
        str(tmp_path / "glue"),
        "--output-dir",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--head-hidden",
        "8",
    ]
    assert "folder is not empty" in _last_error(runner.invoke(app, args))
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.stderr[-3000:]
    assert (out / "notes.txt").read_text() == "mine\n"
    assert json.loads((out / "dev_metrics.json").read_text())["best"] != "earlier"
    from perceiver_lm.model import PerceiverClassifier

    assert PerceiverClassifier.from_pretrained(out / "best").tasks.tasks[0].name == "sst2"


def test_sigterm_in_pretraining_checkpoints_exits_143_and_resumes_identically(letters_file, tmp_path, monkeypatch):
    # --save-every 100: without the SIGTERM checkpoint nothing would be saved before the end
    common = ("--max-steps", "10", "--save-every", "100", "--eval-every", "100", "--warmup-steps", "2")
    whole = runner.invoke(app, _args(letters_file, tmp_path / "whole", *common))
    assert whole.exit_code == 0, whole.stderr[-3000:]
    with monkeypatch.context() as patch:
        sigterm_at(patch, 4)  # during step 5
        stopped = runner.invoke(app, _args(letters_file, tmp_path / "cut", *common))
    assert stopped.exit_code == 143, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert (
        last
        == f"terminated (SIGTERM) after step 5: saved {tmp_path / 'cut' / 'checkpoint-0000005'}; continue with --resume"
    )
    assert "Traceback" not in stopped.stderr
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "cut")] == ["checkpoint-0000005"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lives only as long as the run
    resumed = runner.invoke(app, [*_args(letters_file, tmp_path / "cut", *common), "--resume"])
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    a, b = newest_weights(tmp_path / "whole"), newest_weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_paths_that_are_not_utf8_train_and_save_everything(letters_file, tmp_path):
    # A data file and an output folder whose names hold bytes that are not UTF-8 (any POSIX path may): the run
    # trains, its model card names them (escaped) and TensorBoard, which cannot write there, is left out.
    root = os.fsencode(tmp_path)
    corpus = os.fsdecode(root + b"/corpus\xff.txt")
    Path(corpus).write_bytes(letters_file.read_bytes())
    out = os.fsdecode(root + b"/run\xfe")
    args = [a for a in _args(Path(corpus), Path(out), "--max-steps", "2", "--eval-every", "2") if a != "none"]
    args[args.index("--report-to") : args.index("--report-to") + 1] = []  # the default: auto
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr[-3000:]
    card = (ckpt.list_checkpoints(Path(out))[-1] / "README.md").read_text()
    assert "corpus" in card and "xff.txt" in card, card  # named, escaped
    assert "TensorBoard" not in result.stderr  # no tracker failure, no traceback
    args[args.index("--max-steps") + 1] = "3"
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    assert ckpt.list_checkpoints(Path(out))[-1].name == "checkpoint-0000003" and newest_weights(Path(out))
