"""Byte encoders (what gives each byte its neighbourhood) and trimmed latents for short inputs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perceiver_lm import PRESETS, PerceiverLM
from perceiver_lm.config import BYTE_ENCODER_PARTS, BYTE_ENCODERS, MultiTaskConfig, TaskSpec, parse_byte_encoder
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.model import BYTE_ENCODER_MODULES, PerceiverClassifier
from perceiver_lm.tokenizer import encode_batch

TINY = PRESETS["tiny"]
TEXTS = ["hello byte world", "a much longer second sentence to pad against, with enough text to span latents", "x"]


def _batch(texts=TEXTS):
    enc = encode_batch(texts)
    return torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)


@pytest.mark.parametrize("trim", [False, True], ids=["all-latents", "trimmed"])
@pytest.mark.parametrize("encoder", BYTE_ENCODERS)
def test_every_variant_is_padding_invariant_and_matches_the_explicit_path(encoder, trim):
    torch.manual_seed(0)
    config = TINY.replace(byte_encoder=encoder, trim_latents=trim)
    model = PerceiverLM(config).eval()
    ids, mask = _batch()
    padded = model(ids, mask)
    explicit = model(ids, mask, return_attentions=True)
    torch.testing.assert_close(explicit.logits, padded.logits, atol=1e-5, rtol=1e-5)
    b, length = ids.shape
    latents = math.ceil(length * config.num_latents / config.max_seq_len) if trim else config.num_latents
    assert padded.logits.shape == (b, length, 262)
    assert explicit.encoder_attention.shape == (b, config.num_cross_heads, latents, length)
    for row in range(b):
        n = int(mask[row].sum())
        alone = model(ids[row : row + 1, :n], mask[row : row + 1, :n]).logits
        torch.testing.assert_close(padded.logits[row : row + 1, :n], alone, atol=2e-5, rtol=2e-5)
    classifier = PerceiverClassifier(config, MultiTaskConfig((TaskSpec("t", 2),))).eval()
    together = classifier(ids, mask).logits
    for row in range(b):
        n = int(mask[row].sum())
        torch.testing.assert_close(
            together[row : row + 1],
            classifier(ids[row : row + 1, :n], mask[row : row + 1, :n]).logits,
            atol=2e-5,
            rtol=2e-5,
        )


@pytest.mark.parametrize("encoder", BYTE_ENCODERS)
def test_every_parameter_gets_a_gradient(encoder):
    torch.manual_seed(0)
    model = PerceiverLM(TINY.replace(byte_encoder=encoder, trim_latents=True, zero_init_residual=False))
    ids, mask = _batch()
    model(ids, mask).logits.logsumexp(-1).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_trimmed_latents_follow_the_input_length():
    model = PerceiverLM(TINY.replace(trim_latents=True))
    stride = TINY.max_seq_len // TINY.num_latents  # 8 bytes per latent
    assert [model.encoder.active_latents(n) for n in (1, stride, stride + 1, TINY.max_seq_len)] == [
        1,
        1,
        2,
        TINY.num_latents,
    ]
    full = PerceiverLM(TINY)
    assert full.encoder.active_latents(3) == TINY.num_latents


def test_ngram_features_depend_only_on_the_last_eight_bytes():
    torch.manual_seed(0)
    model = PerceiverLM(TINY.replace(byte_encoder="ngram"))
    a = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])
    b = torch.tensor([[90, 91, 92, 13, 14, 15, 16, 17, 18, 19, 20]])  # same 8 bytes ending at position 10
    fa, fb = model.encoder.ngrams.features(a), model.encoder.ngrams.features(b)
    torch.testing.assert_close(fa[0, 10], fb[0, 10])
    assert not torch.allclose(fa[0, 9], fb[0, 9])  # the 8-gram ending at 9 reaches position 2


def test_config_refuses_bad_byte_encoder_settings():
    with pytest.raises(PerceiverLMError, match="byte_encoder must be one of"):
        TINY.replace(byte_encoder="cnn")
    for spelling in ("conv_ngram", "ngram_ngram", "none_conv", "", "ngram_", "NGRAM"):  # one spelling per set of parts
        with pytest.raises(PerceiverLMError, match="byte_encoder must be one of none, ngram, conv, ngram_conv"):
            TINY.replace(byte_encoder=spelling)
    with pytest.raises(PerceiverLMError, match="byte_encoder_kernel must be odd"):
        TINY.replace(byte_encoder="conv", byte_encoder_kernel=4)
    with pytest.raises(PerceiverLMError, match="byte_encoder_kernel must be odd"):
        TINY.replace(byte_encoder="ngram_conv", byte_encoder_kernel=4)
    TINY.replace(byte_encoder="ngram", byte_encoder_kernel=4)  # a part's checks apply only when it is on
    with pytest.raises(PerceiverLMError, match="trim_latents needs locality_bias"):
        TINY.replace(trim_latents=True, locality_bias=False, locality_tiling=False)


def test_byte_encoder_values_name_independent_parts():
    # Checkpoints' config.json hold these four values (they must keep loading); each names its parts in table order.
    assert {"none", "conv", "ngram", "ngram_conv"} <= set(BYTE_ENCODERS)
    assert [parse_byte_encoder(v) for v in ("none", "ngram", "conv", "ngram_conv")] == [
        (),
        ("ngram",),
        ("conv",),
        ("ngram", "conv"),
    ]
    assert TINY.replace(byte_encoder="ngram_conv").byte_encoder_parts == ("ngram", "conv")
    assert not any("_" in name or name == "none" for name in BYTE_ENCODER_PARTS)  # names are joined by "_"
    assert list(BYTE_ENCODER_MODULES) == list(BYTE_ENCODER_PARTS)  # every part has its module, nothing else


@pytest.mark.parametrize("encoder", BYTE_ENCODERS)
def test_byte_encoder_weights_keep_their_checkpoint_names_and_order(encoder):
    # Saved weights and optimizer state are keyed by these names; the build order fixes the weights a seed gives.
    model = PerceiverLM(TINY.replace(byte_encoder=encoder))
    layers = range(TINY.byte_encoder_layers)
    names = {
        "ngram": ["encoder.ngrams.table.weight"],
        "conv": [f"encoder.convs.norms.{i}.{w}" for i in layers for w in ("weight", "bias")]
        + [f"encoder.convs.convs.{i}.{w}" for i in layers for w in ("weight", "bias")],
    }
    parts = parse_byte_encoder(encoder)
    saved = [n for n in model.state_dict() if n.startswith(("encoder.ngrams.", "encoder.convs."))]
    assert saved == [n for part in parts if part in names for n in names[part]]
    children = [name for name, _ in model.encoder.named_children()]
    attributes = [BYTE_ENCODER_MODULES[part][0] for part in parts]
    assert children[: 2 + len(parts)] == ["token_embedding", "position_embedding", *attributes]
    assert (model.encoder.ngrams is None) == ("ngram" not in parts)  # an absent part reads None, as before
    assert (model.encoder.convs is None) == ("conv" not in parts)


def _order_task(rng: np.random.Generator, n: int) -> tuple[list[str], np.ndarray]:
    """Random letters with "ab" or "ba" inside; the label says which. Both hold the same bytes."""
    letters = np.array(list("cdefghijklmnopqrstuvwxyz"))
    texts, labels = [], rng.integers(0, 2, n)
    for label in labels:
        filler = "".join(rng.choice(letters, 22))
        cut = rng.integers(0, 23)
        texts.append(filler[:cut] + ("ab" if label else "ba") + filler[cut:])
    return texts, labels


def _order_accuracy(encoder: str, steps: int = 300) -> float:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = TINY.replace(byte_encoder=encoder, trim_latents=True, zero_init_positions=True)
    model = PerceiverClassifier(config, MultiTaskConfig((TaskSpec("order", 2),), head_hidden=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        texts, labels = _order_task(rng, 32)
        ids, mask = _batch(texts)
        loss = F.cross_entropy(model(ids, mask).logits, torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    texts, labels = _order_task(np.random.default_rng(1), 512)
    ids, mask = _batch(texts)
    with torch.no_grad():
        predicted = model.eval()(ids, mask).logits.argmax(-1).numpy()
    return float((predicted == labels).mean())


@pytest.mark.slow
def test_byte_order_inside_a_latent_is_learned_with_convolutions_not_with_plain_embeddings():
    # Measured: conv 1.00, plain 0.51 (chance) after 300 steps of 32.
    conv, plain = _order_accuracy("conv"), _order_accuracy("none")
    assert conv > 0.95, conv
    assert plain < 0.75, plain


def test_the_recipe_for_a_new_byte_encoder_part_works_as_docs_design_md_writes_it(monkeypatch, tmp_path):
    # docs/design.md, "A byte-encoder part": an entry in config.BYTE_ENCODER_PARTS, a module with
    # forward(x, input_ids, keep) -> x, and its row in model.BYTE_ENCODER_MODULES. Nothing else.
    import perceiver_lm.config as config_module
    import perceiver_lm.model as model_module
    from perceiver_lm.model import count_parameters

    class ChannelGate(torch.nn.Module):
        def __init__(self, d_model: int) -> None:
            super().__init__()
            self.gate = torch.nn.Parameter(torch.ones(d_model))

        def forward(self, x, input_ids, keep):
            return x * self.gate

    part = config_module.ByteEncoderPart("a learned per-channel gain", max_parameters=lambda c: c.d_model)
    monkeypatch.setitem(config_module.BYTE_ENCODER_PARTS, "gate", part)
    monkeypatch.setitem(model_module.BYTE_ENCODER_MODULES, "gate", ("gate", lambda c: ChannelGate(c.d_model)))
    config = TINY.replace(byte_encoder="ngram_gate")
    assert config.byte_encoder_parts == ("ngram", "gate")
    torch.manual_seed(0)
    model = PerceiverLM(config)
    plain = PerceiverLM(TINY.replace(byte_encoder="ngram"))
    assert count_parameters(config) == model.num_parameters() == plain.num_parameters() + TINY.d_model
    ids = torch.randint(6, 262, (2, 40))
    positions = torch.tensor([[3, 9], [1, 30]])
    loss = model(ids, query_positions=positions).logits.square().mean()
    loss.backward()
    assert model.encoder.gate.gate.grad is not None and model.encoder.gate.gate.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "m")
    again = PerceiverLM.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(
        again(ids, query_positions=positions).logits, model.eval()(ids, query_positions=positions).logits
    )


def test_the_compiled_convolution_is_the_convolution_and_compiles_once_for_many_lengths():
    """Compiled, the conv part runs as shifted matmuls (inductor's convolution backward would fix the input
    length): the same values and gradients, and a few compiles serve every length."""
    from perceiver_lm.model import _conv_as_matmuls

    torch.manual_seed(0)
    for kernel in (1, 3, 5):
        conv = torch.nn.Conv1d(8, 8, kernel, padding=kernel // 2)
        h = torch.randn(2, 13, 8, requires_grad=True)
        reference = conv(h.transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(_conv_as_matmuls(conv, h), reference, atol=1e-6, rtol=1e-6)
        (g_conv,) = torch.autograd.grad(reference.square().sum(), conv.weight)
        (g_matmuls,) = torch.autograd.grad(_conv_as_matmuls(conv, h).square().sum(), conv.weight)
        torch.testing.assert_close(g_matmuls, g_conv, atol=1e-5, rtol=1e-5)

    torch._dynamo.reset()
    module = BYTE_ENCODER_MODULES["conv"][1](TINY.replace(byte_encoder="conv"))
    compiled = torch.compile(module)
    frames = torch._dynamo.utils.counters["frames"]
    before = frames["ok"]
    for length in (40, 57, 90, 71):
        x = torch.randn(2, length, TINY.d_model, requires_grad=True)
        keep = torch.ones(2, length, dtype=torch.bool)
        keep[0, length // 2 :] = False
        out = compiled(x, None, keep)
        torch.autograd.grad(out.square().sum(), x)  # backward compiles too (where the conv fixed the length)
        torch.testing.assert_close(out, module(x, None, keep), atol=1e-5, rtol=1e-5)
    assert frames["ok"] - before <= 2  # the first length, then one graph for any length
