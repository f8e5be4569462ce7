import pytest
import torch

from perceiver_lm import PRESETS, PerceiverConfig, PerceiverLM, PerceiverLMError, get_preset
from perceiver_lm.config import BYTE_ENCODERS, MAX_PARAMETERS, MultiTaskConfig, TaskSpec
from perceiver_lm.model import PerceiverClassifier, count_parameters

TASKS = MultiTaskConfig((TaskSpec("a", 2), TaskSpec("b", 1)), head_hidden=24)
# `tiny` with every optional part off or changed, so that each term of the count is exercised.
PLAIN_TINY = PRESETS["tiny"].replace(
    locality_bias=False, locality_tiling=False, tie_decoder_queries=False, vocab_size=300, max_seq_len=96
)
WIDE_TINY = PRESETS["tiny"].replace(
    cross_widening=2, self_widening=3, byte_encoder_layers=3, byte_encoder_kernel=7, ngram_buckets=500
)


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
    # 201,108,230 parameters, counted from the public deepmind/language-perceiver shape (docs/design.md);
    # counted on the meta device, which test_parameter_count_is_the_built_models pins to real builds.
    assert count_parameters(base) == 201_108_230


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


@pytest.mark.parametrize("encoder", BYTE_ENCODERS)
@pytest.mark.parametrize("shape", [PRESETS["tiny"], PLAIN_TINY, WIDE_TINY], ids=["tiny", "plain", "wide"])
def test_parameter_count_is_the_built_models(shape, encoder):
    config = shape.replace(byte_encoder=encoder)
    assert count_parameters(config) == PerceiverLM(config).num_parameters()
    assert count_parameters(config, TASKS) == PerceiverClassifier(config, TASKS).num_parameters()


def test_parameter_count_of_the_presets():
    assert count_parameters(PRESETS["small"]) == PerceiverLM(PRESETS["small"]).num_parameters()
    state = torch.get_rng_state()
    for config in PRESETS.values():  # meta device: nothing allocated, no random number drawn
        assert count_parameters(config) > 0
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("encoder", BYTE_ENCODERS)
@pytest.mark.parametrize("shape", [*PRESETS.values(), PLAIN_TINY, WIDE_TINY], ids=[*PRESETS, "plain-tiny", "wide-tiny"])
def test_parameter_bound_bounds_the_count_closely(shape, encoder):
    config = shape.replace(byte_encoder=encoder)
    count = count_parameters(config)  # meta device: `base` costs nothing
    # A guard, not the count: never under it, and close enough that the MAX_PARAMETERS guard refuses
    # nothing near the size of a model one would build.
    assert count <= config.parameter_bound() <= 1.25 * count


@pytest.mark.parametrize(
    "changes",
    [dict(d_model=4096, self_widening=4), dict(d_model=2048, self_widening=4), dict(d_latents=512, cross_widening=4)],
)
def test_parameter_bound_stays_close_on_shapes_far_from_the_presets(changes):
    # Each block is bounded at its own widths: a wide byte side with narrow latents is not counted as wide everywhere.
    config = PRESETS["base"].replace(**changes)
    assert count_parameters(config) <= config.parameter_bound() <= 1.25 * count_parameters(config)


def test_absurd_sizes_are_refused_before_anything_is_built():
    with pytest.raises(
        PerceiverLMError, match=r"^model config: up to [\d,]+ parameters .* more than this toolkit builds"
    ):
        PerceiverConfig(d_model=65536, d_latents=65536, v_channels=65536)
    with pytest.raises(PerceiverLMError, match="more than this toolkit builds"):
        PRESETS["tiny"].replace(byte_encoder="ngram", ngram_buckets=1 << 24, d_model=4096)
    assert PRESETS["base"].parameter_bound() < MAX_PARAMETERS / 10
