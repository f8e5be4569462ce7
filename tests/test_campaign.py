"""Hostile-input campaign: every command, every option type, every file the tools read and every path
they write, fed something wrong. Each case must end with exit status 2, exactly one ``error:`` line on
stderr naming what was wrong, no traceback, and every file that existed before exactly as it was.

All cases run in this process through the typer app (one pretrained tiny run and a few folders are
built once), so the table costs seconds, not a process start per case.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from glue.glue_files import write_task
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli.main import app
from conftest import letter_lines_corpus
from perceiver_lm import PRESETS, PerceiverLM, PerceiverLMError
from perceiver_lm.config import MultiTaskConfig, TaskSpec
from perceiver_lm.interop import export_to_transformers
from perceiver_lm.model import PerceiverClassifier
from perceiver_lm.training import TrainingOptions, pretrain

TINY = PRESETS["tiny"]
# The shape transformers can hold (no locality prior, untied queries, its fixed decoder), kept small.
EXPORTABLE = TINY.replace(
    locality_bias=False,
    locality_tiling=False,
    tie_decoder_queries=False,
    decoder_heads=8,
    decoder_qk_channels=256,
    decoder_v_channels=64,
)
runner = CliRunner()
# What `evaluate`, `fill-mask`, `info` and `attention` say of a transformers checkpoint folder.
TRANSFORMERS = (
    "a transformers checkpoint (PerceiverForMaskedLM), not a perceiver-lm one; convert it first: "
    "perceiver-lm convert OUT --from-transformers "
)


def _copy_checkpoint(source: Path, target: Path, **replace_files: bytes) -> Path:
    shutil.copytree(source, target)
    for name, content in replace_files.items():
        path = target / name.replace("__", ".")
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
    return target


def _config_with(source: Path, **changes) -> bytes:
    config = json.loads((source / "config.json").read_text())
    return json.dumps({**config, **changes}).encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Everything the cases point at: a real pretraining run, a fine-tuned model, a transformers
    export, GLUE files, config files, and broken copies of each metadata file."""
    root = tmp_path_factory.mktemp("world")
    w: dict[str, Path] = {"root": root}
    w["corpus"] = root / "corpus.txt"
    w["corpus"].write_text(letter_lines_corpus(lines=300))
    w["small"] = root / "small.txt"
    w["small"].write_text("too short for a window")
    w["few"] = root / "few.txt"  # 8 training windows of 128 bytes: fewer than a batch of 16
    w["few"].write_text(letter_lines_corpus(lines=60)[:2100])
    w["empty"] = root / "empty.txt"
    w["empty"].write_bytes(b"")
    w["binary"] = root / "binary.bin"
    w["binary"].write_bytes(bytes(range(256)) * 4)
    w["afile"] = root / "afile.txt"
    w["afile"].write_text("a user's file\n")
    w["emptydir"] = root / "emptydir"
    w["emptydir"].mkdir()
    w["userdir"] = root / "userdir"
    w["userdir"].mkdir()
    (w["userdir"] / "notes.txt").write_text("notes the user keeps here\n")
    (w["userdir"] / "tensorboard").mkdir()
    (w["userdir"] / "tensorboard" / "events").write_bytes(b"\x00events")
    w["blank"] = root / "blank.txt"  # whitespace only: no word to mask, nothing to score
    w["blank"].write_text(" \n\t  \n\n" * 100)

    w["run"] = root / "run"
    pretrain(
        TrainingOptions(
            data=[str(w["corpus"])],
            output_dir=str(w["run"]),
            batch_size=4,
            max_steps=2,
            eval_every=2,
            save_every=2,
            eval_windows=2,
            report_to="none",
        ),
        TINY,
    )
    w["ckpt"] = w["run"] / "checkpoint-0000002"
    ck = w["ckpt"]
    variants = {
        "cfg_binary": {"config__json": b"\x89PNG\r\n\x1a\n\xff\xfe"},
        "cfg_null": {"config__json": b"null"},
        "cfg_list": {"config__json": b"[1, 2, 3]"},
        "cfg_string_int": {"config__json": _config_with(ck, d_model="64")},
        "cfg_string_bool": {"config__json": _config_with(ck, locality_bias="false")},
        "cfg_string_float": {"config__json": _config_with(ck, layer_norm_eps="1e-5")},
        "cfg_huge": {"config__json": _config_with(ck, d_model=60000, d_latents=60000, v_channels=60000)},
        "cfg_shape": {"config__json": _config_with(ck, num_latents=32)},
        "cfg_missing": {"config__json": None},
        "cfg_unknown": {"config__json": _config_with(ck, colour="blue")},
        "weights_garbage": {"model__safetensors": b"\x00" * 64},
        "weights_pickle": {"model__safetensors": b"\x80\x04\x95cos\nsystem\n."},
        "weights_missing": {"model__safetensors": None},
        "state_no_step": {"trainer_state__json": json.dumps({"eval": {}}).encode()},
        "state_list": {"trainer_state__json": b"[]"},
        "state_eval_strings": {
            "trainer_state__json": json.dumps({"step": 2, "eval": {"bits_per_byte": "low"}}).encode()
        },
        "state_binary": {"trainer_state__json": b"\xff\xfe\x00"},
    }
    for name, files in variants.items():
        w[name] = _copy_checkpoint(ck, root / "broken" / name, **files)

    tasks = MultiTaskConfig((TaskSpec("sst2", 2),), head_hidden=16)
    w["clf"] = PerceiverClassifier(TINY, tasks).save_pretrained(root / "clf")
    w["clf_tasks_list"] = _copy_checkpoint(w["clf"], root / "broken" / "clf_tasks_list", tasks__json=b"[]")
    w["clf_tasks_str"] = _copy_checkpoint(
        w["clf"],
        root / "broken" / "clf_tasks_str",
        tasks__json=json.dumps({"tasks": [{"name": "sst2", "num_outputs": "2"}]}).encode(),
    )
    w["clf_tasks_huge"] = _copy_checkpoint(
        w["clf"],
        root / "broken" / "clf_tasks_huge",
        tasks__json=json.dumps({"tasks": [{"name": "sst2", "num_outputs": 10**9}]}).encode(),
    )

    w["hf"] = export_to_transformers(PerceiverLM(EXPORTABLE), root / "hf")
    hf_config = json.loads((w["hf"] / "config.json").read_text())
    for name, content in {
        "hf_cfg_binary": b"\xff\xd8\xff\xe0",
        "hf_cfg_list": b"[]",
        "hf_cfg_string": json.dumps({**hf_config, "d_model": "64"}).encode(),
        "hf_cfg_blocks": json.dumps({**hf_config, "num_blocks": 2}).encode(),
    }.items():
        w[name] = _copy_checkpoint(w["hf"], root / "broken" / name, config__json=content)
    w["hf_arch_only"] = _copy_checkpoint(  # named by its architectures alone, no model_type
        w["hf"],
        root / "broken" / "hf_arch_only",
        config__json=json.dumps({k: v for k, v in hf_config.items() if k != "model_type"}).encode(),
    )
    w["hf_no_weights"] = _copy_checkpoint(w["hf"], root / "broken" / "hf_no_weights", model__safetensors=None)
    w["hf_bad_bin"] = _copy_checkpoint(w["hf"], root / "broken" / "hf_bad_bin", model__safetensors=None)
    (w["hf_bad_bin"] / "pytorch_model.bin").write_bytes(
        b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."
    )
    w["hf_missing_tensor"] = root / "broken" / "hf_missing_tensor"
    w["hf_missing_tensor"].mkdir()
    (w["hf_missing_tensor"] / "config.json").write_text(json.dumps(hf_config))
    save_file({"embedding_decoder.bias": torch.zeros(262)}, str(w["hf_missing_tensor"] / "model.safetensors"))

    w["glue"] = root / "glue"
    rows = [("a good film", "", "1"), ("a bad film", "", "0")] * 4
    write_task(w["glue"], "SST-2", {"train": rows, "dev": rows}, {"test": [(a, b) for a, b, _ in rows]})
    w["glue_empty_dev"] = root / "glue_empty_dev"  # a dev file with its header and no row
    write_task(w["glue_empty_dev"], "SST-2", {"train": rows, "dev": []}, {})
    w["glue_bad"] = root / "glue_bad"
    write_task(w["glue_bad"], "SST-2", {"train": [("fine", "", "maybe")], "dev": rows}, {})
    w["glue_run"] = root / "glue_run"
    shutil.copytree(w["clf"], w["glue_run"] / "best")
    (w["glue_run"] / "dev_metrics.json").write_text('{"best": {}}\n')
    w["predictions"] = root / "predictions"
    w["predictions"].mkdir()
    (w["predictions"] / "SST-2.tsv").write_text("index\tprediction\n0\t1\n")

    w["plot_garbage"] = root / "plot_garbage"
    w["plot_garbage"].mkdir()
    (w["plot_garbage"] / "metrics.jsonl").write_text('{"step": 1}\n{not json\n')
    w["plot_binary"] = root / "plot_binary"
    w["plot_binary"].mkdir()
    (w["plot_binary"] / "metrics.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    w["plot_partial"] = root / "plot_partial"
    w["plot_partial"].mkdir()
    (w["plot_partial"] / "metrics.jsonl").write_text('{"step": 2, "eval_bits_per_byte": 4.0}\n')
    w["plot_no_eval"] = root / "plot_no_eval"
    w["plot_no_eval"].mkdir()
    (w["plot_no_eval"] / "metrics.jsonl").write_text('{"step": 1, "train_loss": 5.0}\n')

    configs = {
        "c_binary.json": b"\xff\xfe{\x00",
        "c_invalid.json": b'{"batch_size": 4,,}',
        "c_invalid.toml": b"batch_size = = 4",
        "c_list.json": b"[1, 2]",
        "c_data_string.toml": b'data = "corpus.txt"',
        "c_data_root.toml": b'data = "/"',
        "c_data_ints.json": b'{"data": [1, 2]}',
        "c_batch_string.toml": b'batch_size = "4"',
        "c_batch_float.json": b'{"batch_size": 4.5}',
        "c_batch_bool.json": b'{"batch_size": true}',
        "c_cpu_string.toml": b'cpu = "false"',
        "c_lr_string.json": b'{"lr": "nan"}',
        "c_lr_nan.json": b'{"lr": NaN}',
        "c_lr_inf.json": b'{"lr": Infinity}',
        "c_unknown.toml": b"max_step = 3",
        "c_model_string.toml": b'model = "big"',
        "c_model_dmodel.toml": b'[model]\nd_model = "768"',
        "c_model_unknown.toml": b"[model]\ncolour = 1",
        "c_model_huge.toml": b"[model]\nd_model = 65536\nd_latents = 65536\nv_channels = 65536",
        "c_model_layers.toml": b"[model]\nnum_self_layers = 100000",
        "c_model_dropout.toml": b"[model]\nattention_dropout = 1.5",
        "c_preset_int.toml": b"preset = 3",
        "c_optimizer.toml": b'optimizer = "sgd"',
        "c_glue_tasks.toml": b"tasks = 3",
        "c_glue_epochs.json": b'{"epochs": "ten"}',
    }
    for name, content in configs.items():
        (root / name).write_bytes(content)
        w[name.replace(".", "_")] = root / name
    w["configdir"] = root / "configdir.toml"
    w["configdir"].mkdir()
    # Second campaign: special files (kept outside root: `snapshot` would read a FIFO or /dev/zero forever), files
    # larger than their use, integers too long to read, non-finite weights, GLUE rows over the row limit.
    specials = tmp_path_factory.mktemp("specials")
    for suffix in ("toml", "txt", "csv"):
        w[f"fifo_{suffix}"] = specials / f"pipe.{suffix}"
        os.mkfifo(w[f"fifo_{suffix}"])
    w["glue_dev_zero"] = specials / "glue_dev_zero"
    (w["glue_dev_zero"] / "SST-2").mkdir(parents=True)
    (w["glue_dev_zero"] / "SST-2" / "train.tsv").symlink_to("/dev/zero")
    long_int = "1" * 5000
    second = {
        "c_big.toml": b"# " + b"x" * (5 << 20) + b"\n",
        "c_long_int.json": f'{{"max_steps": {long_int}}}'.encode(),
        "c_long_int.toml": f"preset = 'tiny'\n[model]\nd_model = {long_int}\n".encode(),
        "c_hex_steps.toml": b"max_steps = 0x" + b"f" * 5000,
        "c_steps_2_70.json": json.dumps({"max_steps": 2**70}).encode(),
        "c_glue_steps_2_70.toml": f"max_steps = {2**70}".encode(),
        "task_long_int.toml": (
            f"[[task]]\ntrain_file = 'a.csv'\nvalidation_file = 'b.csv'\nname = {long_int}\n".encode()
        ),
    }
    for name, content in second.items():
        (root / name).write_bytes(content)
        w[name.replace(".", "_")] = root / name
    config = json.loads((ck / "config.json").read_text())
    w["cfg_long_int"] = _copy_checkpoint(
        ck,
        root / "broken" / "cfg_long_int",
        config__json=json.dumps({**config, "d_model": "LONG"}).replace('"LONG"', long_int).encode(),
    )
    w["weights_nan"] = _copy_checkpoint(ck, root / "broken" / "weights_nan")
    weights = load_file(str(ck / "model.safetensors"))
    save_file(
        {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
        str(w["weights_nan"] / "model.safetensors"),
    )
    w["plot_long_int"] = root / "plot_long_int"
    w["plot_long_int"].mkdir()
    (w["plot_long_int"] / "metrics.jsonl").write_text(f'{{"step": {long_int}}}\n')
    w["glue_long_row"] = root / "glue_long_row"  # a 140,000-byte field: over the csv module's 131,072 too
    long_rows = [("a long film " * 12_000, "", "1"), *rows]
    write_task(w["glue_long_row"], "SST-2", {"train": long_rows, "dev": long_rows}, {})
    tagged = [{"tokens": ["EU", "rejects", "it"], "tags": ["B-ORG", "O", "O"]}] * 4
    for name, content in {  # tagging files
        "tag_good.jsonl": "".join(json.dumps(r) + "\n" for r in tagged).encode(),
        "tag_binary.conll": b"\xff\xfe\x00EU B-ORG\n",
        "tag_one_field.conll": b"EU B-ORG\nrejects\n",
        "tag_words_number.jsonl": b'{"tokens": 3, "tags": ["O"]}\n',
        "tag_mismatch.jsonl": b'{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O", "O"]}\n',
        "tag_unseen.jsonl": b'{"tokens": ["EU"], "tags": ["B-LOC"]}\n',
        "tag_span_cut.jsonl": b'{"text": "EU rejects", "tags": [{"start": 0, "end": 1, "label": "ORG"}]}\n',
        "tag_text_tag_list.jsonl": b'{"text": "EU rejects", "tags": ["B-ORG", "O"]}\n',
    }.items():
        w[name.replace(".", "_")] = root / name
        (root / name).write_bytes(content)
    w["tag_device_conll"] = specials / "device.conll"  # outside root, as every special file
    w["tag_device_conll"].symlink_to("/dev/zero")
    w["tag_fifo_conll"] = specials / "pipe.conll"
    os.mkfifo(w["tag_fifo_conll"])
    return w


TAG_TRAIN = ["finetune", "train", "--task-type", "token-classification", "--preset", "tiny", "--output-dir", "{root}/t"]


def _pretrain(*extra: str) -> list[str]:
    return ["pretrain", "--preset", "tiny", "--report-to", "none", "--eval-windows", "2", *extra]


# (case id, arguments with {world} names, text the error line must hold)
CASES = [
    # Second campaign: scores from nothing, mask rate, evaluate outputs
    (
        "evaluate-whitespace-only",
        ["evaluate", "{run}", "--data", "{blank}"],
        "blank.txt: no byte to score: the text has no maskable word (whitespace only?)",
    ),
    (
        "evaluate-whitespace-only-json",
        ["evaluate", "{run}", "--data", "{blank}", "--json", "{root}/score.json"],
        "blank.txt: no byte to score",
    ),
    (
        "evaluate-noise-drops-every-byte",
        ["evaluate", "{run}", "--data", "{corpus}", "--noise", "drop:1"],
        "corpus.txt: no byte to score: the text after --noise drop:1 has no maskable word",
    ),
    (
        "evaluate-noise-drops-every-byte-of-a-line",
        ["evaluate", "{run}", "--data", "{small}", "--noise", "drop:1"],
        "small.txt: no byte to score: --noise drop:1 leaves no text",
    ),
    (
        "evaluate-noise-drops-every-byte-then-more",
        ["evaluate", "{run}", "--data", "{corpus}", "--noise", "drop:1", "--noise", "uppercase:1"],
        "no byte to score: the text after --noise drop:1 uppercase:1 has no maskable word",
    ),
    (
        "evaluate-json-missing-folder",
        ["evaluate", "{run}", "--data", "{corpus}", "--json", "{root}/out/dir/missing/x.json"],
        "/out/dir/missing/x.json: folder ",
    ),
    (
        "evaluate-json-missing-folder-overwrite",
        ["evaluate", "{run}", "--data", "{corpus}", "--json", "{root}/nothing/x.json", "--overwrite"],
        "/nothing/x.json: folder ",
    ),
    (
        "evaluate-json-under-a-file",
        ["evaluate", "{run}", "--data", "{corpus}", "--json", "{afile}/x.json"],
        "is a file",
    ),
    ("evaluate-json-is-a-folder", ["evaluate", "{run}", "--data", "{corpus}", "--json", "{emptydir}"], "is a folder"),
    ("evaluate-transformers-folder", ["evaluate", "{hf}", "--data", "{corpus}"], TRANSFORMERS),
    ("evaluate-transformers-by-architectures", ["evaluate", "{hf_arch_only}", "--data", "{corpus}"], TRANSFORMERS),
    ("fill-transformers-folder", ["fill-mask", "{hf}", "a [MASK]"], TRANSFORMERS),
    ("info-transformers-folder", ["info", "{hf}"], TRANSFORMERS),
    ("attention-transformers-folder", ["attention", "{hf}", "hello"], TRANSFORMERS),
    (
        "glue-eval-empty-dev",
        ["glue", "eval", "{clf}", "--glue-dir", "{glue_empty_dev}"],
        "dev.tsv: no examples",
    ),
    # pretrain: every option type and range, from the command line
    ("batch-not-int", _pretrain("--batch-size", "abc"), "'--batch-size'"),
    ("batch-zero", _pretrain("--batch-size", "0"), "--batch-size must be positive"),
    ("batch-negative", _pretrain("--batch-size", "-3"), "--batch-size must be positive"),
    ("lr-nan", _pretrain("--lr", "nan"), "--lr must be a finite number"),
    ("lr-inf", _pretrain("--lr", "inf"), "--lr must be a finite number"),
    ("lr-negative", _pretrain("--lr", "-1"), "--lr must be positive"),
    ("lr-word", _pretrain("--lr", "fast"), "'--lr'"),
    ("weight-decay-negative", _pretrain("--weight-decay", "-0.1"), "--weight-decay must be 0 or more"),
    ("warmup-negative", _pretrain("--warmup-steps", "-1"), "--warmup-steps must be 0 or more"),
    ("min-lr-negative", _pretrain("--min-lr-ratio", "-0.5"), "--min-lr-ratio must be in [0, 1]"),
    ("min-lr-above-one", _pretrain("--min-lr-ratio", "2"), "--min-lr-ratio must be in [0, 1]"),
    ("clip-negative", _pretrain("--clip-norm", "-1"), "--clip-norm must be 0 or more"),
    ("mask-rate-zero", _pretrain("--mask-rate", "0"), "--mask-rate must be in (0, 1)"),
    ("mask-rate-big", _pretrain("--mask-rate", "1.5"), "--mask-rate must be in (0, 1)"),
    ("mask-rate-nan", _pretrain("--mask-rate", "nan"), "--mask-rate must be a finite number"),
    ("val-fraction-one", _pretrain("--val-fraction", "1"), "--val-fraction must be in [0, 1)"),
    ("seed-negative", _pretrain("--seed", "-1"), "--seed must be in [0,"),
    ("seed-huge", _pretrain("--seed", str(2**40)), "--seed must be in [0,"),
    ("workers-negative", _pretrain("--num-workers", "-1"), "--num-workers must be in [0,"),
    ("workers-huge", _pretrain("--num-workers", "100000"), "--num-workers must be in [0,"),
    ("window-one", _pretrain("--window", "1"), "--window must be at least 2"),
    ("window-word", _pretrain("--window", "wide"), "'--window'"),
    (
        "window-too-long",
        _pretrain("--data", "{corpus}", "--window", "100000", "--output-dir", "{root}/o1"),
        "longer than the model's max_seq_len",
    ),
    ("max-minutes-negative", _pretrain("--max-minutes", "-1"), "--max-minutes must be 0 or more"),
    ("eval-windows-zero", _pretrain("--eval-windows", "0"), "--eval-windows must be positive"),
    ("keep-zero", _pretrain("--keep-checkpoints", "0"), "--keep-checkpoints must be positive"),
    ("optimizer-choice", _pretrain("--optimizer", "sgd"), "--optimizer must be one of adamw, lamb"),
    ("precision-choice", _pretrain("--mixed-precision", "fp8"), "--mixed-precision must be one of"),
    ("report-choice", _pretrain("--report-to", "wandb"), "--report-to must be one of"),
    ("mask-unit-choice", _pretrain("--mask-unit", "sentence"), "--mask-unit must be one of"),
    ("preset-unknown", ["pretrain", "--preset", "huge"], "unknown preset 'huge'"),
    ("resume-and-overwrite", _pretrain("--resume", "--overwrite"), "--resume"),
    ("unknown-option", _pretrain("--nope"), "No such option: --nope"),
    (
        "fp16-on-cpu",
        _pretrain("--data", "{corpus}", "--mixed-precision", "fp16", "--cpu", "--output-dir", "{root}/o2"),
        "fp16",
    ),
    ("streaming-without-dataset", _pretrain("--streaming"), "--streaming applies to --dataset"),
    ("data-and-dataset", _pretrain("--data", "{corpus}", "--dataset", "wikitext"), "give either --data or --dataset"),
    # pretrain: the files and folders it reads
    ("data-missing", _pretrain("--data", "{root}/nope.txt", "--output-dir", "{root}/o3"), "no such file or folder"),
    ("data-root", _pretrain("--data", "/", "--output-dir", "{root}/o3"), "the filesystem root is not a corpus"),
    ("data-empty-folder", _pretrain("--data", "{emptydir}", "--output-dir", "{root}/o3"), "folder holds no files"),
    (
        "data-glob-nothing",
        _pretrain("--data", "{root}/*.nothing", "--output-dir", "{root}/o3"),
        "pattern matches no files",
    ),
    ("data-empty-file", _pretrain("--data", "{empty}", "--output-dir", "{root}/o3"), "corpus is empty"),
    ("data-too-small", _pretrain("--data", "{small}", "--output-dir", "{root}/o3"), "fewer than two 128-byte windows"),
    (
        "data-fewer-windows-than-batch",
        _pretrain("--data", "{few}", "--batch-size", "16", "--output-dir", "{root}/new/o3"),
        "fewer than one batch",
    ),
    (
        "val-data-missing",
        _pretrain("--data", "{corpus}", "--val-data", "{root}/nope.txt", "--output-dir", "{root}/o3"),
        "no such file or folder",
    ),
    (
        "dataset-offline",
        _pretrain("--dataset", "someone/some-corpus", "--output-dir", "{root}/o3"),
        "--dataset someone/some-corpus: cannot load",
    ),
    # pretrain: the folder it writes
    ("output-is-a-file", _pretrain("--data", "{corpus}", "--output-dir", "{afile}"), "exists and is not a folder"),
    ("output-under-a-file", _pretrain("--data", "{corpus}", "--output-dir", "{afile}/run"), "is a file"),
    (
        "output-user-folder",
        _pretrain("--data", "{corpus}", "--output-dir", "{userdir}"),
        "folder is not empty (holds notes.txt, tensorboard)",
    ),
    (
        "output-holds-run",
        _pretrain("--data", "{corpus}", "--output-dir", "{run}"),
        "already holds checkpoints; pass --resume",
    ),
    (
        "resume-other-batch",
        _pretrain("--data", "{corpus}", "--output-dir", "{run}", "--resume", "--batch-size", "8"),
        "--batch-size 4 -> 8",
    ),
    (
        "resume-other-data",
        _pretrain("--data", "{few}", "--output-dir", "{run}", "--resume", "--batch-size", "4"),
        "--data",
    ),
    (
        "resume-other-model",
        [
            "pretrain",
            "--preset",
            "small",
            "--data",
            "{corpus}",
            "--output-dir",
            "{run}",
            "--resume",
            "--batch-size",
            "4",
            "--report-to",
            "none",
        ],
        "different model config",
    ),
    # pretrain: config files
    ("config-missing", _pretrain("--config", "{root}/nope.toml"), "no such file or folder"),
    ("config-folder", _pretrain("--config", "{configdir}"), "is a folder"),
    ("config-binary", _pretrain("--config", "{c_binary_json}"), "not UTF-8 text"),
    ("config-invalid-json", _pretrain("--config", "{c_invalid_json}"), "not valid JSON"),
    ("config-invalid-toml", _pretrain("--config", "{c_invalid_toml}"), "not valid TOML"),
    ("config-list", _pretrain("--config", "{c_list_json}"), "expected a JSON table of options, got list"),
    (
        "config-data-string",
        _pretrain("--config", "{c_data_string_toml}"),
        "data must be a list of strings, got 'corpus.txt'",
    ),
    ("config-data-root", _pretrain("--config", "{c_data_root_toml}"), "data must be a list of strings, got '/'"),
    ("config-data-ints", _pretrain("--config", "{c_data_ints_json}"), "data must be a list of strings"),
    ("config-batch-string", _pretrain("--config", "{c_batch_string_toml}"), "batch_size must be an integer, got '4'"),
    ("config-batch-float", _pretrain("--config", "{c_batch_float_json}"), "batch_size must be an integer, got 4.5"),
    ("config-batch-bool", _pretrain("--config", "{c_batch_bool_json}"), "batch_size must be an integer, got True"),
    ("config-cpu-string", _pretrain("--config", "{c_cpu_string_toml}"), "cpu must be true or false, got 'false'"),
    ("config-lr-string", _pretrain("--config", "{c_lr_string_json}"), "lr must be a finite number, got 'nan'"),
    ("config-lr-nan", _pretrain("--config", "{c_lr_nan_json}"), "lr must be a finite number, got nan"),
    ("config-lr-inf", _pretrain("--config", "{c_lr_inf_json}"), "lr must be a finite number, got inf"),
    ("config-unknown-key", _pretrain("--config", "{c_unknown_toml}"), "unknown training option(s): max_step"),
    (
        "config-model-not-table",
        _pretrain("--config", "{c_model_string_toml}"),
        "model must be a table or null, got 'big'",
    ),
    ("config-model-string", _pretrain("--config", "{c_model_dmodel_toml}"), "d_model must be an integer, got '768'"),
    ("config-model-unknown", _pretrain("--config", "{c_model_unknown_toml}"), "unknown model config field(s): colour"),
    ("config-model-huge", _pretrain("--config", "{c_model_huge_toml}"), "more than this toolkit builds"),
    (
        "config-model-layers",
        _pretrain("--config", "{c_model_layers_toml}"),
        "num_self_layers must be a positive integer of at most 1,024",
    ),
    ("config-model-dropout", _pretrain("--config", "{c_model_dropout_toml}"), "attention_dropout must be in [0, 1)"),
    ("config-preset-int", ["pretrain", "--config", "{c_preset_int_toml}"], "preset must be a string or null, got 3"),
    (
        "config-optimizer",
        _pretrain("--config", "{c_optimizer_toml}"),
        "optimizer must be one of adamw, lamb, got 'sgd'",
    ),
    # fill-mask: text, options, and every checkpoint file
    ("fill-missing", ["fill-mask", "{root}/nope", "a [MASK]"], "no such checkpoint or run directory"),
    ("fill-file-as-checkpoint", ["fill-mask", "{afile}", "a [MASK]"], "not a checkpoint"),
    ("fill-empty-folder", ["fill-mask", "{emptydir}", "a [MASK]"], "holds no checkpoint-N directories"),
    ("fill-no-marks", ["fill-mask", "{run}", "no marks"], "no [MASK] or [MASK*N] marks"),
    ("fill-huge-mask", ["fill-mask", "{run}", "a [MASK*100000000] b"], "longer than the model's window (128)"),
    ("fill-astronomic-mask", ["fill-mask", "{run}", "[MASK*" + "9" * 40 + "]"], "longer than the model's window"),
    ("fill-zero-mask", ["fill-mask", "{run}", "a [MASK*0]"], "must cover at least one byte"),
    ("fill-long-text", ["fill-mask", "{run}", "x" * 300 + "[MASK]"], "longer than the model's window"),
    ("fill-top-k-negative", ["fill-mask", "{run}", "a [MASK]", "--top-k", "-1"], "--top-k must be 0 or more"),
    ("fill-top-k-huge", ["fill-mask", "{run}", "a [MASK]", "--top-k", "1000"], "--top-k must be in 1..256"),
    ("fill-top-k-word", ["fill-mask", "{run}", "a [MASK]", "--top-k", "many"], "'--top-k'"),
    ("fill-config-binary", ["fill-mask", "{cfg_binary}", "a [MASK]"], "not a model config file (not UTF-8 text"),
    ("fill-config-null", ["fill-mask", "{cfg_null}", "a [MASK]"], "expected a table of model config fields"),
    ("fill-config-list", ["fill-mask", "{cfg_list}", "a [MASK]"], "expected a table of model config fields"),
    ("fill-config-string-int", ["fill-mask", "{cfg_string_int}", "a [MASK]"], "d_model must be an integer, got '64'"),
    (
        "fill-config-string-bool",
        ["fill-mask", "{cfg_string_bool}", "a [MASK]"],
        "locality_bias must be true or false, got 'false'",
    ),
    (
        "fill-config-string-float",
        ["fill-mask", "{cfg_string_float}", "a [MASK]"],
        "layer_norm_eps must be a finite number",
    ),
    ("fill-config-huge", ["fill-mask", "{cfg_huge}", "a [MASK]"], "more than this toolkit builds"),
    ("fill-config-other-shape", ["fill-mask", "{cfg_shape}", "a [MASK]"], "weights do not match the model config"),
    ("fill-config-missing", ["fill-mask", "{cfg_missing}", "a [MASK]"], "holds no checkpoint-N directories"),
    ("fill-config-unknown", ["fill-mask", "{cfg_unknown}", "a [MASK]"], "unknown model config field(s): colour"),
    ("fill-weights-garbage", ["fill-mask", "{weights_garbage}", "a [MASK]"], "unreadable safetensors file"),
    ("fill-weights-pickle", ["fill-mask", "{weights_pickle}", "a [MASK]"], "unreadable safetensors file"),
    ("fill-weights-missing", ["fill-mask", "{weights_missing}", "a [MASK]"], "model.safetensors is missing"),
    ("fill-task-model", ["fill-mask", "{clf}", "a [MASK]"], "a fine-tuned task model, not a masked LM"),
    # info
    ("info-missing", ["info", "{root}/nope"], "no such checkpoint or run directory"),
    ("info-empty-folder", ["info", "{emptydir}"], "holds no checkpoint-N directories"),
    ("info-config-binary", ["info", "{cfg_binary}"], "not UTF-8 text"),
    ("info-config-null", ["info", "{cfg_null}"], "expected a table of model config fields"),
    ("info-weights-garbage", ["info", "{weights_garbage}"], "unreadable safetensors file"),
    ("info-state-no-step", ["info", "{state_no_step}"], "not a trainer state"),
    ("info-state-list", ["info", "{state_list}"], "not a trainer state"),
    ("info-state-eval-strings", ["info", "{state_eval_strings}"], "eval must be an object of finite numbers"),
    ("info-state-binary", ["info", "{state_binary}"], "not a trainer state file (not UTF-8 text"),
    # convert: what it reads and where it writes
    ("convert-no-direction", ["convert", "{root}/c1"], "give exactly one of"),
    (
        "convert-both-directions",
        ["convert", "{root}/c1", "--from-transformers", "{hf}", "--to-transformers", "{run}"],
        "give exactly one of",
    ),
    (
        "convert-into-user-folder",
        ["convert", "{userdir}", "--from-transformers", "{hf}"],
        "folder is not empty (holds notes.txt",
    ),
    (
        "convert-overwrite-user-folder",
        ["convert", "{userdir}", "--from-transformers", "{hf}", "--overwrite"],
        "holds files that are not ours",
    ),
    ("convert-onto-a-file", ["convert", "{afile}", "--from-transformers", "{hf}"], "exists and is not a folder"),
    ("convert-under-a-file", ["convert", "{afile}/out", "--from-transformers", "{hf}"], "is a file"),
    ("export-over-its-run", ["convert", "{run}", "--to-transformers", "{run}"], "is (or holds) the source"),
    (
        "export-over-its-run-overwrite",
        ["convert", "{run}", "--to-transformers", "{run}", "--overwrite"],
        "is (or holds) the source",
    ),
    (
        "export-over-its-checkpoint",
        ["convert", "{ckpt}", "--to-transformers", "{run}", "--overwrite"],
        "is (or holds) the source",
    ),
    (
        "export-into-run-parent",
        ["convert", "{root}", "--to-transformers", "{run}", "--overwrite"],
        "is (or holds) the source",
    ),
    ("export-unexportable", ["convert", "{root}/c2", "--to-transformers", "{run}"], "cannot export to transformers"),
    ("export-missing", ["convert", "{root}/c2", "--to-transformers", "{root}/nope"], "no such checkpoint"),
    (
        "import-config-binary",
        ["convert", "{root}/c3", "--from-transformers", "{hf_cfg_binary}"],
        "not a transformers config file",
    ),
    (
        "import-config-list",
        ["convert", "{root}/c3", "--from-transformers", "{hf_cfg_list}"],
        "not a transformers config",
    ),
    (
        "import-config-string",
        ["convert", "{root}/c3", "--from-transformers", "{hf_cfg_string}"],
        "d_model must be an integer, got '64'",
    ),
    (
        "import-config-blocks",
        ["convert", "{root}/c3", "--from-transformers", "{hf_cfg_blocks}"],
        "num_blocks=2, expected 1",
    ),
    (
        "import-no-weights",
        ["convert", "{root}/c3", "--from-transformers", "{hf_no_weights}"],
        "no model.safetensors or pytorch_model.bin",
    ),
    (
        "import-pickle-bin",
        ["convert", "{root}/c3", "--from-transformers", "{hf_bad_bin}"],
        "not a weights-only PyTorch state dict",
    ),
    (
        "import-missing-tensors",
        ["convert", "{root}/c3", "--from-transformers", "{hf_missing_tensor}"],
        "weights missing",
    ),
    (
        "import-not-a-folder",
        ["convert", "{root}/c3", "--from-transformers", "{root}/a/b/c"],
        "not a folder with a transformers checkpoint",
    ),
    (
        "import-hub-offline",
        ["convert", "{root}/c3", "--from-transformers", "nobody/nothing"],
        "cannot download from the Hub",
    ),
    # plot
    ("plot-missing-run", ["plot", "{root}/nope", "--out", "{root}/p.png"], "no metrics file"),
    ("plot-garbage-line", ["plot", "{plot_garbage}", "--out", "{root}/p.png"], "metrics.jsonl:2: not a JSON record"),
    ("plot-binary-metrics", ["plot", "{plot_binary}", "--out", "{root}/p.png"], "metrics.jsonl:1: not a JSON record"),
    ("plot-partial-record", ["plot", "{plot_partial}", "--out", "{root}/p.png"], "an evaluation record lacks a number"),
    ("plot-no-evals", ["plot", "{plot_no_eval}", "--out", "{root}/p.png"], "no evaluations recorded yet"),
    ("plot-x-axis", ["plot", "{run}", "--x", "hours", "--out", "{root}/p.png"], "--x 'hours'"),
    ("plot-label-count", ["plot", "{run}", "--label", "a", "--label", "b"], "--label given 2 times for 1 run"),
    ("plot-out-folder", ["plot", "{run}", "--out", "{emptydir}"], "is a folder"),
    ("plot-out-under-file", ["plot", "{run}", "--out", "{afile}/p.png"], "is a file"),
    # attention
    ("attention-no-text", ["attention", "{run}"], "give the text as an argument or with --file"),
    ("attention-text-and-file", ["attention", "{run}", "abc", "--file", "{corpus}"], "not both"),
    ("attention-file-missing", ["attention", "{run}", "--file", "{root}/nope.txt"], "no such file or folder"),
    ("attention-file-binary", ["attention", "{run}", "--file", "{binary}"], "not valid UTF-8"),
    ("attention-file-folder", ["attention", "{run}", "--file", "{emptydir}"], "is a folder"),
    ("attention-head", ["attention", "{run}", "hello there", "--head", "99"], "--head 99: the model has heads 0..3"),
    (
        "attention-query-position",
        ["attention", "{run}", "hello", "--query", "999"],
        "--query 999: position outside the text",
    ),
    ("attention-query-task", ["attention", "{run}", "hello", "--query", "sst2"], "a masked LM takes a byte position"),
    ("attention-task-query", ["attention", "{clf}", "hello", "--query", "cola"], "this model has no task 'cola'"),
    ("attention-span", ["attention", "{run}", "hello", "--png", "{root}/a.png", "--span", "x:y"], "expected FIRST:END"),
    (
        "attention-span-outside",
        ["attention", "{run}", "hello", "--png", "{root}/a.png", "--span", "5:2"],
        "outside the text",
    ),
    ("attention-long-text", ["attention", "{run}", "x" * 300], "longer than the model's window"),
    ("attention-empty-text", ["attention", "{run}", ""], "empty text"),
    ("attention-top-negative", ["attention", "{run}", "hello", "--top", "-1"], "--top must be 0 or more"),
    ("attention-png-folder", ["attention", "{run}", "hello", "--png", "{emptydir}"], "is a folder"),
    ("attention-json-under-file", ["attention", "{run}", "hello", "--json", "{afile}/x.json"], "is a file"),
    ("attention-config-binary", ["attention", "{cfg_binary}", "hello"], "not UTF-8 text"),
    ("attention-tasks-list", ["attention", "{clf_tasks_list}", "hello"], "not a task config"),
    # glue train / eval / predict
    ("glue-task-unknown", ["glue", "train", "--tasks", "nope", "--output-dir", "{root}/g1"], "unknown GLUE task"),
    (
        "glue-into-existing-run",
        ["glue", "train", "--tasks", "sst2", "--glue-dir", "{glue}", "--preset", "tiny", "--output-dir", "{glue_run}"],
        "folder is not empty (holds best, dev_metrics.json)",
    ),
    (
        "glue-into-user-folder",
        ["glue", "train", "--glue-dir", "{glue}", "--preset", "tiny", "--output-dir", "{userdir}"],
        "folder is not empty",
    ),
    (
        "glue-output-file",
        ["glue", "train", "--glue-dir", "{glue}", "--preset", "tiny", "--output-dir", "{afile}"],
        "exists and is not a folder",
    ),
    ("glue-lr-nan", ["glue", "train", "--lr", "nan"], "--lr must be a finite number"),
    ("glue-epochs-zero", ["glue", "train", "--epochs", "0"], "--epochs must be positive"),
    ("glue-batch-zero", ["glue", "train", "--batch-size", "0"], "--batch-size must be positive"),
    ("glue-weight-decay", ["glue", "train", "--weight-decay", "-1"], "--weight-decay must be 0 or more"),
    ("glue-min-lr", ["glue", "train", "--min-lr-ratio", "3"], "--min-lr-ratio must be in [0, 1]"),
    ("glue-max-length", ["glue", "train", "--max-length", "2"], "--max-length must be at least 4"),
    ("glue-precision", ["glue", "train", "--mixed-precision", "fp8"], "--mixed-precision must be one of"),
    (
        "glue-config-tasks",
        ["glue", "train", "--config", "{c_glue_tasks_toml}"],
        "tasks must be a string or null, got 3",
    ),
    (
        "glue-config-epochs",
        ["glue", "train", "--config", "{c_glue_epochs_json}"],
        "epochs must be a finite number, got 'ten'",
    ),
    (
        "glue-sweep-grid",
        ["glue", "train", "--sweep", "--sweep-lrs", "fast", "--output-dir", "{root}/g2"],
        "expected comma-separated numbers",
    ),
    (
        "glue-checkpoint-missing",
        ["glue", "train", "--checkpoint", "{root}/nope", "--glue-dir", "{glue}", "--output-dir", "{root}/g3"],
        "no such checkpoint or run directory",
    ),
    (
        "glue-checkpoint-fine-tuned",
        ["glue", "train", "--checkpoint", "{clf}", "--glue-dir", "{glue}", "--output-dir", "{root}/g3"],
        "already fine-tuned",
    ),
    (
        "glue-checkpoint-broken",
        ["glue", "train", "--checkpoint", "{cfg_null}", "--glue-dir", "{glue}", "--output-dir", "{root}/g3"],
        "expected a table of model config fields",
    ),
    (
        "glue-dir-missing",
        ["glue", "train", "--glue-dir", "{root}/nope", "--preset", "tiny", "--output-dir", "{root}/g3"],
        "no such file or folder",
    ),
    (
        "glue-bad-row",
        ["glue", "train", "--glue-dir", "{glue_bad}", "--preset", "tiny", "--output-dir", "{root}/g3"],
        "label 'maybe' is not one of",
    ),
    *(
        (f"tag-{name}", [*TAG_TRAIN, "--train-file", train, "--validation-file", dev, *extra], expected)
        for name, train, dev, extra, expected in (
            ("binary-conll", "{tag_binary_conll}", "{tag_good_jsonl}", (), "tag_binary.conll: not UTF-8 text"),
            ("one-field", "{tag_one_field_conll}", "{tag_good_jsonl}", (), "line 2: expected a word and its tag"),
            ("words-a-number", "{tag_good_jsonl}", "{tag_words_number_jsonl}", (), "expected a list of words"),
            ("more-tags-than-words", "{tag_good_jsonl}", "{tag_mismatch_jsonl}", (), "2 words but 3 tags"),
            ("unseen-tag", "{tag_good_jsonl}", "{tag_unseen_jsonl}", (), "'B-LOC' is not one of the training tags"),
            ("device", "{tag_device_conll}", "{tag_good_jsonl}", (), "device.conll: is a character device"),
            ("fifo", "{tag_good_jsonl}", "{tag_fifo_conll}", (), "pipe.conll: is a FIFO"),
            (
                "text-with-tag-lists",
                "{tag_text_tag_list_jsonl}",
                "{tag_text_tag_list_jsonl}",
                ("--text-column", "text"),
                "tags need a list of words in the text column",
            ),
            (
                "span-cuts-a-word",
                "{tag_span_cut_jsonl}",
                "{tag_span_cut_jsonl}",
                ("--text-column", "text"),
                "span 0-1 ORG ('E') starts or ends inside a word",
            ),
        )  # fmt: skip
    ),
    (
        "glue-eval-mlm",
        ["glue", "eval", "{run}", "--glue-dir", "{glue}"],
        "this is a masked LM, not a fine-tuned task model",
    ),
    ("glue-eval-tasks-list", ["glue", "eval", "{clf_tasks_list}", "--glue-dir", "{glue}"], "not a task config"),
    ("glue-eval-tasks-string", ["glue", "eval", "{clf_tasks_str}", "--glue-dir", "{glue}"], "num_outputs an integer"),
    (
        "glue-eval-tasks-huge",
        ["glue", "eval", "{clf_tasks_huge}", "--glue-dir", "{glue}"],
        "num_outputs an integer in 1..1024",
    ),
    (
        "glue-eval-other-task",
        ["glue", "eval", "{clf}", "--glue-dir", "{glue}", "--tasks", "cola"],
        "this model has no task 'cola'",
    ),
    ("glue-eval-no-glue-dir", ["glue", "eval", "{clf}", "--glue-dir", "{root}/nope"], "no such file or folder"),
    (
        "glue-eval-max-examples",
        ["glue", "eval", "{clf}", "--glue-dir", "{glue}", "--max-eval-examples", "-1"],
        "--max-eval-examples must be positive",
    ),
    (
        "glue-sweep-lr-nan",
        [
            "glue",
            "train",
            "--sweep",
            "--sweep-lrs",
            "nan",
            "--preset",
            "tiny",
            "--glue-dir",
            "{glue}",
            "--output-dir",
            "{root}/g5",
        ],
        "--lr must be a finite number",
    ),
    ("glue-eval-out-folder", ["glue", "eval", "{clf}", "--glue-dir", "{glue}", "--out", "{emptydir}"], "is a folder"),
    (
        "glue-predict-existing",
        ["glue", "predict", "{clf}", "--glue-dir", "{glue}", "--out", "{predictions}"],
        "already holds SST-2.tsv",
    ),
    (
        "glue-predict-out-file",
        ["glue", "predict", "{clf}", "--glue-dir", "{glue}", "--out", "{afile}"],
        "exists and is not a folder",
    ),
    (
        "glue-predict-mlm",
        ["glue", "predict", "{run}", "--glue-dir", "{glue}", "--out", "{root}/g4"],
        "not a fine-tuned task model",
    ),
    # Second campaign: unbounded reads, tracebacks, option bounds
    (
        "attention-file-dev-zero",
        ["attention", "{run}", "--file", "/dev/zero"],
        "--file /dev/zero: is a character device, not a regular file",
    ),
    (
        "attention-file-fifo",
        ["attention", "{run}", "--file", "{fifo_txt}"],
        "is a FIFO (named pipe), not a regular file",
    ),
    (
        "attention-file-longer-than-window",
        ["attention", "{run}", "--file", "{corpus}"],
        "longer than the model's window",
    ),
    (
        "config-dev-zero",
        _pretrain("--config", "/dev/zero"),
        "--config /dev/zero: is a character device, not a regular file",
    ),
    ("config-fifo", _pretrain("--config", "{fifo_toml}"), "pipe.toml: is a FIFO (named pipe), not a regular file"),
    ("config-too-large", _pretrain("--config", "{c_big_toml}"), "more than a TOML file of options may hold"),
    ("glue-config-dev-zero", ["glue", "train", "--config", "/dev/zero"], "--config /dev/zero: is a character device"),
    (
        "glue-task-file-dev-zero",
        ["glue", "train", "--task-file", "/dev/zero", "--preset", "tiny", "--output-dir", "{root}/g7"],
        "--task-file /dev/zero: is a character device, not a regular file",
    ),
    (
        "glue-train-file-fifo",
        [
            "glue",
            "train",
            "--train-file",
            "{fifo_csv}",
            "--validation-file",
            "{fifo_csv}",
            "--preset",
            "tiny",
            "--output-dir",
            "{root}/g7",
        ],
        "pipe.csv: is a FIFO (named pipe), not a regular file",
    ),
    (
        "glue-tsv-dev-zero",
        ["glue", "train", "--glue-dir", "{glue_dev_zero}", "--preset", "tiny", "--output-dir", "{root}/g7"],
        "train.tsv: is a character device, not a regular file",
    ),
    (
        "glue-tsv-long-row",
        ["glue", "train", "--glue-dir", "{glue_long_row}", "--preset", "tiny", "--output-dir", "{root}/g7"],
        "train.tsv: line 2: a row of more than 65,536 characters",
    ),
    (
        "glue-eval-tsv-long-row",
        ["glue", "eval", "{clf}", "--glue-dir", "{glue_long_row}"],
        "dev.tsv: line 2: a row of more than 65,536 characters",
    ),
    (
        "config-long-int-json",
        _pretrain("--config", "{c_long_int_json}"),
        "c_long_int.json: line 1: max_steps: an integer of 5,000 digits",
    ),
    (
        "config-long-int-toml",
        ["pretrain", "--config", "{c_long_int_toml}"],
        "c_long_int.toml: line 3: d_model: an integer of 5,000 digits",
    ),
    (
        "glue-config-long-int",
        ["glue", "train", "--config", "{c_long_int_json}"],
        "line 1: max_steps: an integer of 5,000 digits",
    ),
    (
        "glue-task-file-long-int",
        ["glue", "train", "--task-file", "{task_long_int_toml}", "--preset", "tiny", "--output-dir", "{root}/g7"],
        "task_long_int.toml: line 4: name: an integer of 5,000 digits",
    ),
    ("info-config-long-int", ["info", "{cfg_long_int}"], "config.json: line 1: d_model: an integer of 5,000 digits"),
    ("fill-config-long-int", ["fill-mask", "{cfg_long_int}", "a [MASK]"], "d_model: an integer of 5,000 digits"),
    (
        "plot-long-int",
        ["plot", "{plot_long_int}", "--out", "{root}/p.png"],
        "metrics.jsonl:1: line 1: step: an integer of 5,000 digits",
    ),
    (
        "fill-mask-count-5000-digits",
        ["fill-mask", "{run}", "a [MASK*" + "9" * 5000 + "]"],
        "longer than the model's window",
    ),
    (
        "attention-query-superscript",
        ["attention", "{run}", "hello", "--query", "\u00b2"],
        "--query '\u00b2': expected a byte position (ASCII digits 0-9), a task name or TASK:WORD",
    ),
    (
        "attention-query-full-width",
        ["attention", "{clf}", "hello", "--query", "\uff11\uff10"],
        "expected a byte position (ASCII digits 0-9)",
    ),
    (
        "attention-query-5000-digits",
        ["attention", "{run}", "hello", "--query", "9" * 5000],
        "--query: expected an integer of at most 18 digits",
    ),
    (
        "attention-span-superscript",
        ["attention", "{run}", "hello", "--png", "{root}/a.png", "--span", "0:\u00b2"],
        "expected FIRST:END byte positions",
    ),
    ("attention-head-huge", ["attention", "{run}", "hello", "--head", str(2**70)], "--head must be in [-1,"),
    ("fill-nan-weights", ["fill-mask", "{weights_nan}", "a [MASK]"], "weights_nan: weight "),
    ("attention-nan-weights", ["attention", "{weights_nan}", "hello"], "holds NaN or infinite values"),
    ("max-steps-2-70", _pretrain("--max-steps", str(2**70)), "--max-steps must be at most 1,000,000,000"),
    (
        "config-max-steps-2-70",
        _pretrain("--config", "{c_steps_2_70_json}"),
        "--max-steps must be at most 1,000,000,000",
    ),
    (
        "config-max-steps-hex",
        _pretrain("--config", "{c_hex_steps_toml}"),
        "--max-steps must be at most 1,000,000,000, got an integer of 6,021 digits",
    ),
    ("batch-2-40", _pretrain("--batch-size", str(2**40)), "--batch-size must be at most"),
    ("warmup-2-70", _pretrain("--warmup-steps", str(2**70)), "--warmup-steps must be at most"),
    ("evaluate-batch-2-40", ["evaluate", "{run}", "--batch-size", str(2**40)], "--batch-size must be at most"),
    (
        "glue-config-max-steps-2-70",
        ["glue", "train", "--config", "{c_glue_steps_2_70_toml}"],
        "--max-steps must be at most 1,000,000,000",
    ),
    ("glue-epochs-huge", ["glue", "train", "--epochs", "1e300"], "--epochs must be at most 1,000,000"),
    ("glue-max-length-huge", ["glue", "train", "--max-length", str(2**40)], "--max-length must be at most"),
    (
        "glue-eval-noise-seed-negative",
        ["glue", "eval", "{clf}", "--glue-dir", "{glue}", "--noise-seed", "-5"],
        "--noise-seed must be in [0, 4294967295], got -5",
    ),
    (
        "glue-eval-noise-full-width",
        ["glue", "eval", "{clf}", "--glue-dir", "{glue}", "--noise", "drop:\uff10.\uff15"],
        "is not a number in ASCII digits 0-9",
    ),
    (
        "glue-sweep-full-width",
        ["glue", "train", "--sweep", "--sweep-batch-sizes", "\uff11\uff16", "--output-dir", "{root}/g2"],
        "expected comma-separated numbers (ASCII digits 0-9)",
    ),
    (
        "long-optimizer-value",
        _pretrain("--optimizer", "x" * 100_000),
        "…(100,002 characters)",
    ),
    ("long-preset-value", ["pretrain", "--preset", "p" * 100_000], "…(100,002 characters)"),
    ("long-noise-value", ["glue", "eval", "{clf}", "--noise", "drop:" + "9" * 100_000], "…(100,005 characters)"),
    ("long-tasks-value", ["glue", "train", "--tasks", "sst2,cola " * 10_000], "characters)"),
]


def snapshot(root: Path) -> dict[str, str]:
    """Content hash of every file (and a marker for every folder) under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_campaign_has_a_hundred_cases_over_every_command():
    assert len(CASES) >= 100 and len({c[0] for c in CASES}) == len(CASES)
    commands = {tuple(args[:2]) if args[0] in ("glue", "finetune") else args[0] for _, args, _ in CASES}
    assert commands >= {
        "pretrain",
        "fill-mask",
        "info",
        "convert",
        "plot",
        "attention",
        ("glue", "train"),
        ("glue", "eval"),
        ("glue", "predict"),
    }


@pytest.mark.parametrize("case, args, expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_changes_nothing(world, case, args, expected, monkeypatch):
    monkeypatch.delenv("PERCEIVER_LM_DEBUG", raising=False)
    names = {k: str(v) for k, v in world.items()}
    argv = [a.format(**names) for a in args]
    before = snapshot(world["root"])
    result = runner.invoke(app, argv)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:], result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert expected in lines[0], lines[0]
    after = snapshot(world["root"])
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"changed or removed: {changed}"
    assert set(after) == set(before), f"left behind: {sorted(set(after) - set(before))}"  # nor adds anything


def test_debug_variable_shows_the_traceback(world, monkeypatch):
    monkeypatch.setenv("PERCEIVER_LM_DEBUG", "1")
    result = runner.invoke(app, ["info", str(world["cfg_binary"])])
    assert result.exit_code != 0 and type(result.exception).__name__ == "PerceiverLMError"


@pytest.mark.parametrize(
    "split, expected",
    [
        ({"ids": [], "labels": []}, "GLUE sst2 dev: dev.tsv: no example to score (the split is empty)"),
        (
            {"ids": [np.array([4, 70, 5])], "labels": []},
            "GLUE sst2 dev: dev.tsv: no example to score: the split has no labels",
        ),
    ],
    ids=["empty", "unlabelled"],
)
def test_glue_dev_split_with_nothing_to_score_is_refused(split, expected):
    """A dev split without an example, or without labels (the Hub's test splits carry -1), would be scored from
    nothing or from NaN labels; `glue eval` and `glue train` refuse it before any model work."""
    from tasks.finetune.data import GlueSplit
    from tasks.finetune.predict import check_scorable
    from tasks.glue.tasks import TASKS

    with pytest.raises(PerceiverLMError, match="^" + re.escape(expected)):
        check_scorable({("sst2", "dev"): GlueSplit(TASKS["sst2"], "dev", "dev.tsv", **split)})
    check_scorable({("sst2", "dev"): GlueSplit(TASKS["sst2"], "dev", "dev.tsv", [np.array([4, 70, 5])], [1.0])})
