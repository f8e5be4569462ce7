import dataclasses
import json

import pytest
import torch

from perceiver_lm import PRESETS, PerceiverLM, PerceiverLMError
from perceiver_lm.interop import convert_from_transformers, export_to_transformers, load_from_transformers
from perceiver_lm.tokenizer import encode_batch

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install -e '.[test]')")

# A small language-shaped config with unequal query/key and value heads, like the 201M checkpoint.
HF_SMALL = dict(
    num_latents=16,
    d_latents=96,
    d_model=64,
    num_blocks=1,
    num_self_attends_per_block=3,
    num_self_attention_heads=4,
    num_cross_attention_heads=4,
    qk_channels=32,
    v_channels=96,
    cross_attention_widening_factor=1,
    self_attention_widening_factor=2,
    max_position_embeddings=128,
    vocab_size=262,
)


def _hf_model(tmp_path, **changes):
    torch.manual_seed(0)
    model = transformers.PerceiverForMaskedLM(transformers.PerceiverConfig(**{**HF_SMALL, **changes})).eval()
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", model


@pytest.fixture
def hf_folder(tmp_path):
    return _hf_model(tmp_path)


def _inputs():
    enc = encode_batch(["Perceiver IO reads bytes.", "Grüße 🧠", "x"])
    return torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)


# 8 vs 24 channels per head (math path), and 16 vs 24 (q/k zero-padded to 24 for the fused CPU kernel).
@pytest.mark.parametrize("qk_channels", [32, 64], ids=["unequal-heads", "padded-heads"])
def test_converted_model_matches_transformers_logits_and_maps(tmp_path, qk_channels):
    folder, reference = _hf_model(tmp_path, qk_channels=qk_channels)
    ids, mask = _inputs()
    convert_from_transformers(folder, tmp_path / "ours")
    ours = PerceiverLM.from_pretrained(tmp_path / "ours")
    assert (
        ours.config.qk_channels // ours.config.num_cross_heads == qk_channels // 4
        and ours.config.v_channels // ours.config.num_cross_heads == 24
    )
    real = mask.bool()
    with torch.no_grad():
        theirs = reference(inputs=ids, attention_mask=mask, output_attentions=True)
        for explicit in (False, True):
            mine = ours(ids, mask, return_attentions=explicit)
            diff = (theirs.logits[:, : ids.shape[1]] - mine.logits)[real].abs().max().item()
            assert diff <= 1e-4, (explicit, diff)
    torch.testing.assert_close(mine.encoder_attention, theirs.cross_attentions[0], atol=1e-5, rtol=1e-4)


def test_export_loads_in_transformers_and_round_trips_exactly(hf_folder, tmp_path):
    folder, _ = hf_folder
    ours = load_from_transformers(folder)
    export_to_transformers(ours, tmp_path / "exported")
    reloaded = transformers.PerceiverForMaskedLM.from_pretrained(tmp_path / "exported").eval()
    ids, mask = _inputs()
    with torch.no_grad():
        diff = (
            (reloaded(inputs=ids, attention_mask=mask).logits[:, : ids.shape[1]] - ours(ids, mask).logits)[mask.bool()]
            .abs()
            .max()
        )
    assert diff <= 1e-4
    again = load_from_transformers(tmp_path / "exported")
    assert again.config == ours.config
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values(), strict=True))


def test_unconvertible_configs_are_refused_by_field(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**HF_SMALL, "num_blocks": 2}))
    with pytest.raises(PerceiverLMError, match="num_blocks=2, expected 1"):
        load_from_transformers(bad)
    with pytest.raises(PerceiverLMError, match="cannot export to transformers: locality_bias"):
        export_to_transformers(PerceiverLM(PRESETS["tiny"]), tmp_path / "x")


def test_cli_convert_both_ways(hf_folder, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    folder, _ = hf_folder
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(tmp_path / "ours"), "--from-transformers", str(folder)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["convert", str(tmp_path / "back"), "--to-transformers", str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "back" / "model.safetensors").is_file()
    result = runner.invoke(app, ["convert", str(tmp_path / "x")])
    assert result.exit_code == 2 and "give exactly one of" in result.output


def test_public_language_perceiver_config_maps_to_base():
    from perceiver_lm.interop import config_from_transformers, config_to_transformers

    # The fields of deepmind/language-perceiver's config.json that decide the shape.
    public = dict(
        d_latents=1280,
        d_model=768,
        num_latents=256,
        qk_channels=256,
        v_channels=1280,
        num_blocks=1,
        num_self_attends_per_block=26,
        num_self_attention_heads=8,
        num_cross_attention_heads=8,
        cross_attention_widening_factor=1,
        self_attention_widening_factor=1,
        max_position_embeddings=2048,
        vocab_size=262,
        attention_probs_dropout_prob=0.1,
        hidden_act="gelu",
        use_query_residual=True,
    )
    assert config_from_transformers(public, "public") == PRESETS["base"]
    exported = config_to_transformers(PRESETS["base"])
    assert {k: exported[k] for k in public} == public


def test_pretraining_continues_from_a_transformers_checkpoint(hf_folder, tmp_path, letters_file):
    from perceiver_lm.interop import config_from_transformers
    from perceiver_lm.training import TrainingOptions, pretrain

    folder, hf = hf_folder
    options = TrainingOptions(
        data=[str(letters_file)],
        init_from=str(folder),
        output_dir=str(tmp_path / "continued"),
        batch_size=8,
        max_steps=40,
        eval_every=40,
        save_every=40,
        warmup_steps=5,
        lr=3e-3,
        log_every=5,
        report_to="none",
    )
    result = pretrain(options)
    saved = PerceiverLM.from_pretrained(result.checkpoint)
    assert saved.config == config_from_transformers(hf.config.to_dict(), "hf")
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses[-1] < losses[0] - 1.0, losses  # it trains: the letters task is learnable
    # The weights it started from are the transformers model's: one step at a negligible lr keeps them.
    still = pretrain(
        dataclasses.replace(options, output_dir=str(tmp_path / "still"), max_steps=1, lr=1e-12, warmup_steps=0)
    )
    ids, mask = _inputs()
    with torch.no_grad():
        ours = PerceiverLM.from_pretrained(still.checkpoint)(ids, mask).logits
        theirs = hf(inputs=ids, attention_mask=mask).logits[:, : ids.shape[1]]
    real = mask.bool()
    assert (ours - theirs)[real].abs().max().item() <= 2e-4
