"""Held-out scoring (`perceiver-lm evaluate`): same masks every time, parity with the training loop's evaluation."""

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from conftest import letter_lines_corpus
from perceiver_lm import PRESETS, PerceiverLMError
from perceiver_lm.data import CorpusRange, MaskedWindows, MaskingOptions, corpus_from_texts
from perceiver_lm.evaluation import BYTE_CLASSES, LN2, require_scorable, score_text, summarize
from perceiver_lm.options import EvalOptions
from perceiver_lm.training import TrainingOptions, pretrain

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained 30 steps on letter lines, its run folder, and a held-out text it never saw."""
    root = tmp_path_factory.mktemp("scored")
    train, held_out = root / "train.txt", root / "held_out.txt"
    train.write_text(letter_lines_corpus(seed=0))
    held_out.write_text(letter_lines_corpus(seed=1, lines=120) + "Digits 0123 and, punctuation! café\n")
    options = TrainingOptions(
        data=[str(train)],
        val_data=[str(held_out)],
        output_dir=str(root / "run"),
        batch_size=8,
        max_steps=30,
        eval_every=30,
        eval_windows=1000,  # every validation window: the same windows `evaluate` scores with max_windows 0
        save_every=15,
        keep_checkpoints=2,
        warmup_steps=5,
        report_to="none",
        mixed_precision="no",
    )
    result = pretrain(options, PRESETS["tiny"])
    return result, held_out


def _score(checkpoint, text, **overrides):
    return score_text(checkpoint, EvalOptions(data=[str(text)], **overrides))


def test_scoring_agrees_with_the_training_loops_evaluation(trained):
    result, held_out = trained
    # The training loop masks validation windows with seed + 7919 and scores all of them here.
    report = _score(result.checkpoint, held_out, seed=7919, max_windows=0)
    assert report.windows == report.windows_total
    assert report.metrics["bits_per_byte"] == pytest.approx(result.eval_metrics["bits_per_byte"], rel=1e-5)
    assert report.metrics["accuracy"] == pytest.approx(result.eval_metrics["accuracy"], abs=1e-6)


def test_compiled_scoring_gives_the_eager_numbers(trained):
    result, held_out = trained
    eager = _score(result.checkpoint, held_out, max_windows=8)
    compiled = _score(result.checkpoint, held_out, max_windows=8, compile=True)
    assert compiled.metrics["bits_per_byte"] == pytest.approx(eager.metrics["bits_per_byte"], rel=1e-4)
    assert compiled.metrics["masked_bytes"] == eager.metrics["masked_bytes"]


def test_same_number_twice_other_number_for_another_checkpoint(trained):
    result, held_out = trained
    first, again = _score(result.checkpoint, held_out), _score(result.checkpoint, held_out)
    assert first.metrics == again.metrics
    earlier = _score(result.output_dir / "checkpoint-0000015", held_out)
    assert earlier.step == 15 and first.step == 30
    assert earlier.metrics["masked_bytes"] == first.metrics["masked_bytes"]  # the same masked bytes ...
    assert earlier.metrics["bits_per_byte"] != first.metrics["bits_per_byte"]  # ... scored differently


def test_per_class_breakdown_adds_up_and_masking_units_differ(trained):
    result, held_out = trained
    report = _score(result.checkpoint, held_out, max_windows=0)
    classes = report.metrics["classes"]
    assert set(classes) <= set(BYTE_CLASSES) and "letters" in classes
    assert sum(c["masked_bytes"] for c in classes.values()) == report.metrics["masked_bytes"]
    total_bits = sum(c["bits_per_byte"] * c["masked_bytes"] for c in classes.values())
    assert total_bits / report.metrics["masked_bytes"] == pytest.approx(report.metrics["bits_per_byte"], rel=1e-6)
    bytes_masked = _score(result.checkpoint, held_out, max_windows=0, mask_unit="byte")
    # Whole-word masking masks the bytes of words; single-byte masking any byte, spaces and newlines too.
    assert "whitespace" not in classes and "whitespace" in bytes_masked.metrics["classes"]
    # Letters inside a word are easier once the word's other letters are visible.
    assert bytes_masked.metrics["classes"]["letters"]["bits_per_byte"] < classes["letters"]["bits_per_byte"]


def test_noise_changes_the_text_deterministically(trained):
    result, held_out = trained
    clean = _score(result.checkpoint, held_out)
    noisy = _score(result.checkpoint, held_out, noise=["mutate:0.2"])
    again = _score(result.checkpoint, held_out, noise=["mutate:0.2"])
    assert noisy.metrics == again.metrics and noisy.noise == ["mutate:0.2"]
    assert noisy.metrics["bits_per_byte"] > clean.metrics["bits_per_byte"]  # random letters are harder to predict


def test_cli_prints_a_table_and_writes_json(trained, tmp_path):
    result, held_out = trained
    out = tmp_path / "score.json"
    done = runner.invoke(app, ["evaluate", str(result.output_dir), "--data", str(held_out), "--json", str(out)])
    assert done.exit_code == 0, done.output
    assert "bits/byte" in done.stdout and "letters" in done.stdout
    saved = json.loads(out.read_text())
    assert saved["step"] == 30 and saved["metrics"]["masked_bytes"] > 0
    piped = runner.invoke(app, ["evaluate", str(result.checkpoint), "--data", str(held_out), "--json", "-"])
    assert json.loads(piped.stdout)["metrics"] == saved["metrics"]
    # An existing file is the user's until they say otherwise.
    again = runner.invoke(app, ["evaluate", str(result.checkpoint), "--data", str(held_out), "--json", str(out)])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.stderr
    assert json.loads(out.read_text()) == saved
    args = ["evaluate", str(result.checkpoint), "--data", str(held_out), "--json", str(out), "--overwrite"]
    assert runner.invoke(app, args).exit_code == 0


def test_bad_requests_are_one_line_errors(trained, tmp_path):
    result, held_out = trained
    with pytest.raises(PerceiverLMError, match="give the text to score"):
        score_text(result.checkpoint, EvalOptions())
    with pytest.raises(PerceiverLMError, match="--noise"):
        _score(result.checkpoint, held_out, noise=["shout:0.1"])
    with pytest.raises(PerceiverLMError, match="longer than the model's max_seq_len"):
        _score(result.checkpoint, held_out, window=PRESETS["tiny"].max_seq_len + 1)
    done = runner.invoke(app, ["evaluate", str(tmp_path / "nothing"), "--data", str(held_out)])
    assert done.exit_code == 2 and "no such checkpoint" in done.stderr


def _maskable_in_scored_windows(text: bytes, window: int, whole_words: bool) -> int:
    """Maskable bytes of all windows `evaluate` scores with --max-windows 0, counted from the file itself:
    the stream is the file's bytes and one [SEP], cut into whole windows from the start."""
    windows = (len(text) + 1) // window
    covered = text[: windows * window]
    return sum(1 for b in covered if not whole_words or b not in b" \t\n\r\x0b\x0c")


@pytest.mark.parametrize("mask_unit", ["word", "byte"])
def test_effective_mask_rate_is_masked_over_maskable_bytes(trained, mask_unit):
    result, held_out = trained
    report = _score(result.checkpoint, held_out, max_windows=0, mask_unit=mask_unit)
    maskable = _maskable_in_scored_windows(held_out.read_bytes(), report.window, mask_unit == "word")
    assert report.maskable_bytes == maskable
    assert report.effective_mask_rate == report.metrics["masked_bytes"] / maskable
    assert 0.12 < report.effective_mask_rate < 0.18
    assert f"effective mask rate {report.effective_mask_rate:.4f}" in report.table()
    assert f"{report.metrics['masked_bytes']:,} masked of {maskable:,} maskable bytes" in report.table()


def test_unspaced_text_is_scored_near_the_asked_rate_and_says_so(trained, tmp_path):
    result, _ = trained
    text = tmp_path / "unspaced.txt"
    text.write_text("天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜" * 40)
    # Before long words were cut into pieces, each 128-byte window was one word: all of its bytes were masked.
    report = _score(result.checkpoint, text, max_windows=0, mask_rate=0.25)
    assert report.maskable_bytes == report.windows * report.window
    assert 0.2 <= report.effective_mask_rate <= 0.3
    out = tmp_path / "score.json"
    done = runner.invoke(app, ["evaluate", str(result.checkpoint), "--data", str(text), "--json", str(out)])
    assert done.exit_code == 0, done.output
    saved = json.loads(out.read_text())
    assert saved["effective_mask_rate"] == saved["metrics"]["masked_bytes"] / saved["maskable_bytes"] < 0.3
    assert f"effective mask rate {saved['effective_mask_rate']:.4f}" in done.stdout
    piped = runner.invoke(app, ["evaluate", str(result.checkpoint), "--data", str(text), "--json", "-"])
    assert json.loads(piped.stdout)["effective_mask_rate"] == saved["effective_mask_rate"]


@pytest.mark.parametrize(
    "content, extra, message",
    [
        (" \n\t\n" * 300, {}, "no byte to score: the text has no maskable word (whitespace only?)"),
        ("words and words\n" * 50, {"noise": ["drop:1"]}, "no byte to score: the text after --noise drop:1 has"),
        ("one line of words", {"noise": ["drop:1"]}, "no byte to score: --noise drop:1 leaves no text"),
    ],
)
def test_nothing_to_score_is_an_error_not_zero_bits(trained, tmp_path, content, extra, message):
    result, _ = trained
    text = tmp_path / "text.txt"
    text.write_text(content)
    with pytest.raises(PerceiverLMError, match="^" + re.escape(f"--data {text}: {message}")):
        _score(result.checkpoint, text, **extra)


def test_a_summary_of_zero_masked_bytes_is_refused():
    with pytest.raises(PerceiverLMError, match=r"--val-data.*no byte to score"):
        summarize(torch.zeros(len(BYTE_CLASSES), 3, dtype=torch.float64))
    totals = torch.zeros(len(BYTE_CLASSES), 3, dtype=torch.float64)
    totals[0] = torch.tensor([2 * LN2, 1.0, 2.0])
    assert summarize(totals)["bits_per_byte"] == pytest.approx(1.0) and summarize(totals)["masked_bytes"] == 2


def test_windows_without_a_maskable_byte_are_refused_before_any_work(tmp_path):
    corpus = corpus_from_texts([" \n " * 100], "blank")
    windows = MaskedWindows(CorpusRange(corpus, 0, len(corpus)), 64, MaskingOptions(), 0, shuffle=False)
    with pytest.raises(PerceiverLMError, match=r"^--val-data blank.txt: no byte to score"):
        require_scorable(windows, True, "--val-data blank.txt")
    assert require_scorable(windows, False, "--val-data blank.txt") == len(windows) * 64  # bytes: spaces count
    words = corpus_from_texts(["ab cd\n" * 50], "words")
    windows = MaskedWindows(CorpusRange(words, 0, len(words)), 60, MaskingOptions(), 0, shuffle=False)
    assert require_scorable(windows, True, "--data words.txt") == 5 * 40
