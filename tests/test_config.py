import pytest

from perceiver_lm import PRESETS, PerceiverConfig, PerceiverLM, PerceiverLMError, get_preset


def test_preset_sizes():
    assert PerceiverLM(PRESETS["tiny"]).num_parameters() < 1_000_000
    assert 10_000_000 <= PerceiverLM(PRESETS["small"]).num_parameters() <= 30_000_000
    assert PRESETS["small"].max_seq_len == 2048


def test_base_is_the_public_language_perceiver_shape():
    base = PRESETS["base"]
    assert (base.d_model, base.num_latents, base.d_latents, base.num_self_layers) == (768, 256, 1280, 26)
    assert (base.qk_channels // base.num_cross_heads, base.v_channels // base.num_cross_heads) == (32, 160)
    assert (base.decoder_qk_channels, base.decoder_v_channels, base.max_seq_len) == (256, 768, 2048)
    assert not base.locality_bias and not base.tie_decoder_queries
    # 201,108,230 parameters, counted from the public deepmind/language-perceiver shape (docs/design.md).
    assert PerceiverLM(base).num_parameters() == 201_108_230


def test_validation_errors():
    with pytest.raises(PerceiverLMError, match="qk_channels=30 is not divisible"):
        PerceiverConfig(qk_channels=30)
    with pytest.raises(PerceiverLMError, match="num_latents must be a positive integer"):
        PerceiverConfig(num_latents=0)
    with pytest.raises(PerceiverLMError, match="attention_dropout"):
        PerceiverConfig(attention_dropout=1.5)
    with pytest.raises(PerceiverLMError, match="unknown preset 'huge'; choose one of: tiny, small, base"):
        get_preset("huge")
    with pytest.raises(PerceiverLMError, match="unknown model config field\\(s\\): colour"):
        PerceiverConfig.from_dict({"colour": 1})


def test_json_round_trip(tmp_path):
    config = PRESETS["tiny"].replace(num_self_layers=3)
    config.save(tmp_path / "c.json")
    assert PerceiverConfig.load(tmp_path / "c.json") == config
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(PerceiverLMError, match="bad.json: not valid JSON"):
        PerceiverConfig.load(tmp_path / "bad.json")
