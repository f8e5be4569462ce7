import dataclasses
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app, finetune_app, glue_app
from perceiver_lm import PRESETS, PerceiverLM
from perceiver_lm.config import model_config
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.options import (
    PRECISION_HELP,
    AttentionOptions,
    ConvertOptions,
    EvalOptions,
    PlotOptions,
    PretrainModelOptions,
)
from perceiver_lm.training import TrainingOptions
from tasks.finetune.options import GlueOptions, GluePredictOptions

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _train(tmp_path, letters_file, *extra):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "pretrain",
            "--preset",
            "tiny",
            "--data",
            str(letters_file),
            "--output-dir",
            str(out),
            "--max-steps",
            "12",
            "--eval-every",
            "6",
            "--eval-windows",
            "4",
            "--save-every",
            "6",
            "--report-to",
            "none",
            *extra,
        ],
    )
    return out, result


def test_every_training_option_is_a_cli_option():
    help_text = runner.invoke(app, ["pretrain", "--help"], terminal_width=200).output
    for field in dataclasses.fields(TrainingOptions):
        assert f"--{field.name.replace('_', '-')}" in help_text, field.name


def test_every_command_is_generated_from_options_dataclasses():
    commands = (
        [(c.name, c.callback) for c in app.registered_commands]
        + [(f"glue {c.name}", c.callback) for c in glue_app.registered_commands]
        + [(f"finetune {c.name}", c.callback) for c in finetune_app.registered_commands]
    )
    assert len(commands) == 13
    for name, callback in commands:
        classes = callback.options_classes
        help_text = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "250"}).output
        for options_class in classes:
            for field in dataclasses.fields(options_class):
                if not field.metadata.get("cli", True):
                    continue
                assert field.metadata["help"], (name, field.name)
                shown = field.name if field.metadata.get("argument") else f"--{field.name.replace('_', '-')}"
                assert shown in help_text, (name, field.name)


def test_finetune_is_the_general_command_and_glue_its_alias_whose_help_comes_after_yours():
    assert [c.name for c in finetune_app.registered_commands] == [c.name for c in glue_app.registered_commands]
    for one, other in zip(finetune_app.registered_commands, glue_app.registered_commands, strict=True):
        assert one.callback.options_classes == other.callback.options_classes
    help_text = runner.invoke(app, ["finetune", "train", "--help"], env={"COLUMNS": "250"}).output
    assert "GLUE" not in help_text.split("Usage:")[1].split("--train-file")[0]  # the command's own help
    options = [line.split()[1] for line in help_text.splitlines() if line.startswith("│ --")]
    assert options[0] == "--train-file" and options.index("--tasks") > options.index("--task-file")
    before_tasks = help_text.split("│ --tasks")[0]
    assert "GLUE" not in before_tasks.split("--train-file", 1)[1]  # a CSV user reads no GLUE before --tasks


def test_options_dataclasses_check_their_fields_in_code_too(tmp_path):
    assert AttentionOptions(tmp_path, "hi", png=str(tmp_path / "a.png")).png == tmp_path / "a.png"  # str or Path
    assert AttentionOptions(tmp_path, "hi", span="2:9").zoom == (2, 9)
    for kwargs, message in [
        ({"span": "2-9"}, "--span '2-9': expected FIRST:END"),
        ({"top": -1}, "--top must be 0 or more, got -1"),
        ({"file": tmp_path}, "give the text as an argument or with --file, not both"),
        ({"png": 3}, "--png must be a path, got 3"),
    ]:
        with pytest.raises(PerceiverLMError, match=re.escape(message)):
            AttentionOptions(tmp_path, "hi", **kwargs)
    with pytest.raises(PerceiverLMError, match="--label given 2 times for 1 run"):
        PlotOptions([tmp_path], label=["a", "b"])
    with pytest.raises(PerceiverLMError, match="give exactly one of --from-transformers"):
        ConvertOptions(tmp_path)
    with pytest.raises(PerceiverLMError, match="--batch-size must be positive"):
        GluePredictOptions(tmp_path, batch_size=0)


def test_mixed_precision_is_declared_once():
    hints = [typing.get_type_hints(c)["mixed_precision"] for c in (TrainingOptions, EvalOptions, GlueOptions)]
    assert hints[0] == hints[1] == hints[2] and typing.get_args(hints[0]) == ("auto", "no", "bf16", "fp16")
    helps = [f.metadata["help"] for c in (TrainingOptions, EvalOptions, GlueOptions) for f in dataclasses.fields(c)]
    assert sum(PRECISION_HELP in h for h in helps) == 3
    # Scoring stays fp32 unless asked, so that its numbers compare across machines.
    assert (TrainingOptions().mixed_precision, EvalOptions().mixed_precision) == ("auto", "no")


def test_model_config_merges_a_preset_with_overrides():
    assert model_config("tiny", {"num_self_layers": 1}) == PRESETS["tiny"].replace(num_self_layers=1)
    assert model_config() == PRESETS["small"]
    with pytest.raises(PerceiverLMError, match=r"^run.toml: unknown model config field\(s\): colour$"):
        model_config("tiny", {"colour": 1}, "run.toml")
    with pytest.raises(PerceiverLMError, match="run.toml: `model` must be a table"):
        model_config("tiny", "layers", "run.toml")
    with pytest.raises(PerceiverLMError, match="--init-from ck: the model's shape is the checkpoint's"):
        PretrainModelOptions(preset="tiny").config_for(TrainingOptions(init_from="ck"))
    assert PretrainModelOptions().config_for(TrainingOptions(init_from="ck")) is None


def test_flags_on_by_default_can_be_turned_off():
    result = runner.invoke(app, ["glue", "train", "--no-length-buckets", "--tasks", "squad"])
    assert result.exit_code == 2 and "unknown GLUE task(s) squad" in result.output  # parsed, then refused


def test_pretrain_fill_mask_info_round_trip(tmp_path, letters_file):
    out, result = _train(tmp_path, letters_file)
    assert result.exit_code == 0, result.output
    assert "step 12: validation" in result.output
    model = PerceiverLM.from_pretrained(out)
    assert model.config.num_latents == 16
    filled = runner.invoke(app, ["fill-mask", str(out), "aaa aa [MASK*3] a", "--top-k", "2"])
    assert filled.exit_code == 0, filled.output
    lines = filled.output.splitlines()
    # 12 steps teach little: the three filled bytes need not be valid UTF-8 on their own.
    assert lines[0].startswith("aaa aa ") and lines[0].endswith(" a")
    assert len(lines) == 4 and [line.split(":")[0] for line in lines[1:]] == ["  byte 7", "  byte 8", "  byte 9"]
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0
    assert "training step: 12" in info.output and "parameters: 178,638" in info.output


def test_config_file_sets_options_and_model_overrides(tmp_path, letters_file):
    config = tmp_path / "run.toml"
    config.write_text('preset = "tiny"\nmax_steps = 3\nbatch_size = 2\n[model]\nnum_self_layers = 1\n')
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "pretrain",
            "--config",
            str(config),
            "--data",
            str(letters_file),
            "--output-dir",
            str(out),
            "--eval-windows",
            "2",
            "--report-to",
            "none",
            "--max-steps",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "checkpoint-0000004" / "config.json").read_text())
    assert saved["num_self_layers"] == 1
    state = json.loads((out / "checkpoint-0000004" / "trainer_state.json").read_text())
    assert state["options"]["batch_size"] == 2 and state["step"] == 4  # file value kept, CLI value won


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "--preset", "huge"], "error: unknown preset 'huge'; choose one of: tiny, small, base"),
        (
            ["pretrain", "--preset", "tiny", "--data", "/no/such/corpus.txt"],
            "error: --data /no/such/corpus.txt: no such file or folder",
        ),
        (
            ["pretrain", "--preset", "tiny", "--optimizer", "sgd"],
            "error: --optimizer must be one of adamw, lamb; got 'sgd'",
        ),
        (["fill-mask", "/no/such/ckpt", "a [MASK]"], "error: /no/such/ckpt: no such checkpoint or run directory"),
        (["info", "/no/such/ckpt"], "error: /no/such/ckpt: no such checkpoint or run directory"),
    ],
)
def test_errors_are_one_line(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip() == message


def test_small_corpus_and_bad_config_file(tmp_path):
    tiny_text = tmp_path / "t.txt"
    tiny_text.write_text("too short")
    result = runner.invoke(
        app, ["pretrain", "--preset", "tiny", "--data", str(tiny_text), "--output-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"error: {tiny_text}: corpus has 10 bytes, fewer than two 128-byte windows")
    bad = tmp_path / "bad.json"
    bad.write_text('{"max_step": 3}')
    result = runner.invoke(app, ["pretrain", "--config", str(bad)])
    assert result.output.strip() == f"error: --config {bad}: unknown training option(s): max_step"


def test_fill_mask_without_marks(tmp_path, letters_file):
    out, _ = _train(tmp_path, letters_file)
    result = runner.invoke(app, ["fill-mask", str(out), "no marks here"])
    assert result.exit_code == 2 and result.output.strip() == "error: text has no [MASK] or [MASK*N] marks to fill"


def test_console_script_runs_as_module():
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--help"], capture_output=True, text=True, cwd=REPO, env={**os.environ}
    )
    assert done.returncode == 0 and "pretrain" in done.stdout
