import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from glue_files import pair_and_regression_tasks, write_task
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli.main import app
from conftest import REPO, host_syncs, newest_weights, sigterm_at, two_cpu_processes
from perceiver_lm import PRESETS, PerceiverLM
from perceiver_lm.config import MultiTaskConfig, TaskSpec
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.model import PerceiverClassifier, load_any
from tasks.finetune.data import eval_loader, load_split
from tasks.finetune.finetune import (
    FINETUNE_DEFAULTS,
    GlueOptions,
    finetune,
    finetune_defaults,
    with_defaults,
)
from tasks.finetune.predict import predict_split
from tasks.glue.tasks import TASKS

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic_glue(tmp_path_factory):
    return pair_and_regression_tasks(tmp_path_factory.mktemp("glue"))


def test_tiny_learns_a_pair_task_and_a_regression_task_together(synthetic_glue, tmp_path):
    # Pair labels need both texts (chance 50 %); scores are 5 x the share of "xxx" words over both texts.
    options = GlueOptions(
        tasks="mrpc,stsb",
        preset="tiny",
        glue_dir=str(synthetic_glue),
        output_dir=str(tmp_path / "run"),
        max_steps=300,
        batch_size=16,
        lr=1e-3,
        warmup_steps=20,
        eval_every=100,
        head_hidden=64,
    )
    result = finetune(options)
    mrpc, stsb = result.best["mrpc"]["scores"]["dev"], result.best["stsb"]["scores"]["dev"]
    assert mrpc["accuracy"] > 85.0, mrpc
    assert stsb["pearson"] > 95.0 and stsb["spearman"] > 90.0, stsb
    saved = json.loads((tmp_path / "run" / "dev_metrics.json").read_text())
    assert [h["step"] for h in saved["history"]] == [100, 200, 300]
    # Multi-task batches follow the task sizes (equal here): both tasks were trained at every evaluation.
    assert all(h["train_loss"]["mrpc"] > 0 and h["train_loss"]["stsb"] > 0 for h in saved["history"])
    model = PerceiverClassifier.from_pretrained(result.best_model)
    assert [t.name for t in model.tasks.tasks] == ["mrpc", "stsb"]


def test_from_lm_keeps_the_pretrained_encoder_and_checkpoints_know_their_kind(tmp_path):
    lm = PerceiverLM(PRESETS["tiny"])
    tasks = MultiTaskConfig((TaskSpec("rte", 2), TaskSpec("stsb", 1)), head_hidden=32)
    model = PerceiverClassifier.from_lm(lm, tasks).eval()
    for key, value in lm.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value, rtol=0, atol=0)
    ids = torch.randint(6, 262, (3, 50))
    out = model(ids, task=1, return_attentions=True)
    assert out.logits.shape == (3, 1) and out.decoder_attention.shape == (
        3,
        PRESETS["tiny"].decoder_heads,
        1,
        PRESETS["tiny"].num_latents,
    )
    torch.testing.assert_close(out.logits, model(ids, task=1).logits, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "ft")
    again = load_any(tmp_path / "ft")
    assert isinstance(again, PerceiverClassifier) and again.tasks == tasks
    torch.testing.assert_close(again(ids, task=0).logits, model(ids, task=0).logits, rtol=0, atol=0)
    with pytest.raises(PerceiverLMError, match="fine-tuned task model, not a masked LM"):
        PerceiverLM.from_pretrained(tmp_path / "ft")
    with pytest.raises(PerceiverLMError, match="already fine-tuned"):
        finetune(GlueOptions(tasks="rte", checkpoint=str(tmp_path / "ft"), glue_dir=str(tmp_path)))


@pytest.mark.parametrize("bucketed", [False, True], ids=["longest", "bucketed"])
def test_predictions_through_length_sorted_batches_come_back_in_file_order(tmp_path, bucketed):
    """Also padded to a few lengths (as a compiled run pads): the same predictions."""
    from accelerate import Accelerator

    from perceiver_lm.tokenizer import bucket_length

    torch.manual_seed(0)
    texts = [("word " * n).strip() for n in (9, 1, 30, 4, 17, 2, 25)]
    write_task(tmp_path, "STS-B", {"dev": [(t, "other", f"{i * 0.5:.1f}") for i, t in enumerate(texts)]}, {})
    split = load_split(TASKS["stsb"], "dev", tmp_path, 256)
    config = PRESETS["tiny"].replace(max_seq_len=256, trim_latents=True, locality_bias=True)
    model = PerceiverClassifier(config, MultiTaskConfig((TaskSpec("stsb", 1),), head_hidden=16)).eval()
    accelerator = Accelerator(cpu=True)
    loader = eval_loader(split, 0, batch_size=3, bucketed=bucketed)
    lengths = [b["input_ids"].shape[1] for b in loader]
    longest = [max(b["attention_mask"].sum(1)).item() for b in loader]
    assert lengths == ([bucket_length(n) for n in longest] if bucketed else longest)
    assert lengths != longest or not bucketed
    preds, labels = predict_split(model, accelerator.prepare(loader), 0, TASKS["stsb"], accelerator)
    with torch.no_grad():
        one_by_one = torch.tensor([model(torch.from_numpy(ids)[None], task=0).logits[0, 0].item() for ids in split.ids])
    assert labels.tolist() == [i * 0.5 for i in range(7)]
    assert one_by_one.std() > 1e-3  # distinct scores, so a wrong order would show
    torch.testing.assert_close(torch.from_numpy(preds), one_by_one, atol=1e-4, rtol=1e-4)


def test_finetune_defaults_follow_the_model_shape():
    assert finetune_defaults(PRESETS["small"]) == ("small", FINETUNE_DEFAULTS["small"])
    assert finetune_defaults(PRESETS["base"]) == ("base", {"lr": 5e-5, "warmup_steps": 200})  # the paper's
    assert finetune_defaults(PRESETS["tiny"].replace(num_self_layers=3))[0] == "base"  # any other shape
    # A field only the masked-LM decoder reads leaves the fine-tuned body, and so its defaults, the preset's.
    flipped = not PRESETS["small"].span_queries
    assert finetune_defaults(PRESETS["small"].replace(span_queries=flipped))[0] == "small"
    options, note = with_defaults(GlueOptions(), PRESETS["small"])
    assert (options.lr, options.warmup_steps) == (
        3e-4,
        60,
    ) and "small shape from a random start: lr 0.0003, warmup-steps 60" in note
    options, note = with_defaults(GlueOptions(lr=1e-5), PRESETS["small"])  # what the user gives wins
    assert (options.lr, options.warmup_steps) == (1e-5, 60) and ": lr" not in note and "warmup-steps 60" in note
    options, note = with_defaults(
        GlueOptions(lr=1e-5, warmup_steps=0, body_lr_scale=1.0, freeze_body_steps=0), PRESETS["small"]
    )
    assert (options.lr, options.warmup_steps, note) == (1e-5, 0, "")


@pytest.mark.slow
def test_two_cpu_processes_fine_tune_two_tasks_in_a_sweep(synthetic_glue, tmp_path):
    # Batches of different tasks on the two ranks leave some heads without gradient on each rank.
    import os

    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    cmd = two_cpu_processes(
        29541,
        "-m",
        "cli",
        "glue",
        "train",
        "--tasks",
        "mrpc,stsb",
        "--preset",
        "tiny",
        "--glue-dir",
        str(synthetic_glue),
        "--output-dir",
        str(tmp_path / "run"),
        "--max-steps",
        "8",
        "--batch-size",
        "4",
        "--head-hidden",
        "16",
        "--max-eval-examples",
        "30",
        # Two grid points in one launch: the second run needs the process group the first one used.
        "--sweep",
        "--sweep-batch-sizes",
        "4",
        "--sweep-lrs",
        "1e-3,5e-4",
    )
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for point in ("bs4_lr0.001", "bs4_lr0.0005"):
        metrics = json.loads((tmp_path / "run" / point / "dev_metrics.json").read_text())
        assert metrics["num_processes"] == 2 and set(metrics["best"]) == {"mrpc", "stsb"}
        assert PerceiverClassifier.from_pretrained(tmp_path / "run" / point / "best").tasks.tasks[1].name == "stsb"
    assert set(json.loads((tmp_path / "run" / "sweep.json").read_text())["best"]) == {"mrpc", "stsb"}


def test_an_interrupted_fine_tuning_resumes_to_the_same_model_and_history(synthetic_glue, tmp_path):
    def options(out, **extra):
        return GlueOptions(
            tasks="mrpc,stsb",
            preset="tiny",
            glue_dir=str(synthetic_glue),
            output_dir=str(out),
            max_steps=8,
            batch_size=8,
            lr=1e-3,
            warmup_steps=2,
            eval_every=4,
            keep_checkpoints=2,
            head_hidden=32,
            max_train_examples=24,  # 3 + 3 batches an epoch: the run resumed at step 4 crosses into epoch 1
            max_eval_examples=32,
            mixed_precision="no",
            **extra,
        )

    whole = finetune(options(tmp_path / "whole"))
    # The run "stopped" after its first checkpoint: a folder holding only that one.
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-0000004", cut / "checkpoint-0000004")
    resumed = finetune(options(cut, resume=True))
    assert resumed.steps == whole.steps == 8
    a = load_file(str(tmp_path / "whole" / "checkpoint-0000008" / "model.safetensors"))
    b = load_file(str(cut / "checkpoint-0000008" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((cut / "dev_metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [4, 8]  # the first evaluation came with the checkpoint's state
    assert resumed.best == whole.best
    card = (cut / "best" / "README.md").read_text()
    glue = f"mrpc ({options(cut).glue_dir}), stsb ({options(cut).glue_dir})"
    assert f"Fine-tuned on tasks (data): {glue}" in card and "Last evaluation: mrpc/dev/accuracy" in card
    # Another batch size would change which examples each step sees: refused, naming the option.
    with pytest.raises(PerceiverLMError, match="--batch-size 8 -> 16"):
        finetune(dataclasses.replace(options(cut, resume=True), batch_size=16))


def test_fine_tuning_steps_between_logs_do_no_host_sync(monkeypatch, synthetic_glue, tmp_path):
    def run(steps, out):
        options = GlueOptions(
            tasks="mrpc,stsb",
            preset="tiny",
            glue_dir=str(synthetic_glue),
            output_dir=str(tmp_path / out),
            max_steps=steps,
            batch_size=8,
            eval_every=1000,
            log_every=1000,
            head_hidden=32,
            max_eval_examples=16,
            mixed_precision="no",
        )
        return lambda: finetune(options)

    short, long = host_syncs(monkeypatch, run(3, "a")), host_syncs(monkeypatch, run(9, "b"))
    assert short > 0 and long == short, (short, long)


def test_a_frozen_then_scaled_body_trains_only_the_task_decoder_first(synthetic_glue, tmp_path):
    lm = PerceiverLM(PRESETS["tiny"])
    lm.save_pretrained(tmp_path / "lm")
    options = GlueOptions(
        tasks="mrpc",
        checkpoint=str(tmp_path / "lm"),
        glue_dir=str(synthetic_glue),
        output_dir=str(tmp_path / "run"),
        max_steps=6,
        batch_size=8,
        lr=1e-3,
        warmup_steps=0,
        eval_every=3,
        keep_checkpoints=2,
        head_hidden=32,
        max_eval_examples=16,
        freeze_body_steps=3,
        body_lr_scale=0.5,
        mixed_precision="no",
    )
    finetune(options)
    start = {f"encoder.{k}": v for k, v in lm.encoder.state_dict().items()}
    frozen = load_file(str(tmp_path / "run" / "checkpoint-0000003" / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "checkpoint-0000006" / "model.safetensors"))
    assert all(torch.equal(frozen[k], v) for k, v in start.items())  # the body did not move in steps 1-3
    assert not torch.equal(frozen["decoder.queries.embedding.weight"], after["decoder.queries.embedding.weight"])
    moved = [k for k, v in start.items() if not torch.equal(after[k], v)]
    assert "encoder.latents" in moved and len(moved) > len(start) // 2  # and trained from step 4 on
    # The recipe fields fill in by start: a random start trains everything at --lr from step 1.
    filled, note = with_defaults(GlueOptions(preset="tiny"), PRESETS["tiny"])
    assert (filled.body_lr_scale, filled.freeze_body_steps) == (1.0, 0) and "random start" in note
    with pytest.raises(PerceiverLMError, match="--freeze-body-steps 3 -> 2"):
        finetune(dataclasses.replace(options, resume=True, freeze_body_steps=2, max_steps=8))


def test_parameter_groups_carry_the_body_schedule_and_the_loop_applies_it():
    from perceiver_lm.optim import parameter_groups
    from perceiver_lm.trainer import Schedule, _set_lr

    model = PerceiverClassifier(PRESETS["tiny"], MultiTaskConfig((TaskSpec("sst2", 2),), 32))
    groups = parameter_groups(model, 0.01, lambda n: (1.0, 0) if n.startswith("decoder.") else (0.25, 5))
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g["params"]) for g in groups) == len(names)
    for group in groups:
        body = {names[id(p)].startswith("encoder.") for p in group["params"]}
        assert body == {group["lr_scale"] == 0.25}
    run = type("R", (), {"schedule": Schedule(10, 1e-3, 0, 1.0, 0, 0, 1, 1, 1, 1), "optimizer": optimizer})
    _set_lr(run, 4)
    assert {(g["lr_scale"], g["lr"]) for g in groups} == {(1.0, 1e-3), (0.25, 0.0)}
    _set_lr(run, 5)
    assert {(g["lr_scale"], g["lr"]) for g in groups} == {(1.0, 1e-3), (0.25, 2.5e-4)}
    # Without a schedule function: the two groups (decayed matrices first) older checkpoints hold.
    plain = parameter_groups(model, 0.01)
    assert [g["weight_decay"] for g in plain] == [0.01, 0.0]


def test_sigterm_in_fine_tuning_checkpoints_exits_143_and_resumes_identically(synthetic_glue, tmp_path, monkeypatch):
    def args(out: Path, *extra: str) -> list[str]:
        return [
            "glue", "train", "--tasks", "mrpc,stsb", "--preset", "tiny", "--glue-dir", str(synthetic_glue),
            "--output-dir", str(out), "--max-steps", "8", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2",
            "--eval-every", "4", "--head-hidden", "32", "--max-train-examples", "24", "--max-eval-examples", "32",
            "--mixed-precision", "no", *extra,
        ]  # fmt: skip

    whole = runner.invoke(app, args(tmp_path / "whole"))
    assert whole.exit_code == 0, whole.stderr[-3000:]
    with monkeypatch.context() as patch:
        sigterm_at(patch, 5)  # during step 6, after the step-4 evaluation and checkpoint
        stopped = runner.invoke(app, args(tmp_path / "cut"))
    assert stopped.exit_code == 143, stopped.stderr[-3000:]
    assert "terminated (SIGTERM) after step 6: saved" in stopped.stderr.strip().splitlines()[-1]
    resumed = runner.invoke(app, args(tmp_path / "cut", "--resume"))
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    a, b = newest_weights(tmp_path / "whole"), newest_weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((tmp_path / "cut" / "dev_metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [4, 8]
