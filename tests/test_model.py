import pytest
import torch

from perceiver_lm import PRESETS, PerceiverLM
from perceiver_lm.tokenizer import encode_batch

# Unequal qk/v head sizes like the public checkpoint (32 vs 160 there); no priors, as in `base`.
PLAIN = PRESETS["tiny"].replace(
    qk_channels=32, v_channels=96, locality_bias=False, locality_tiling=False, tie_decoder_queries=False
)
# qk heads 2/3 of the value heads: the fused path zero-pads q/k heads on CPU (as in `small`).
PADDED = PLAIN.replace(qk_channels=64)


def _batch():
    enc = encode_batch(["hello byte world", "a much longer second sentence to pad against", "x"])
    return torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)


@pytest.mark.parametrize("config", [PLAIN, PADDED, PRESETS["tiny"]], ids=["plain", "padded-heads", "priors"])
def test_explicit_attention_path_matches_fused(config):
    model = PerceiverLM(config).eval()
    ids, mask = _batch()
    fused = model(ids, mask)
    explicit = model(ids, mask, return_attentions=True)
    assert fused.encoder_attention is None
    torch.testing.assert_close(explicit.logits, fused.logits, atol=1e-5, rtol=1e-5)
    b, length = ids.shape
    enc = explicit.encoder_attention
    assert enc.shape == (b, config.num_cross_heads, config.num_latents, length)
    assert explicit.decoder_attention.shape == (b, config.decoder_heads, length, config.num_latents)
    # Each latent's weights sum to 1 over the real bytes and are 0 on padding.
    torch.testing.assert_close(enc.sum(-1), torch.ones_like(enc.sum(-1)))
    assert (enc * (1 - mask[:, None, None, :].float())).abs().max() == 0


@pytest.mark.parametrize("bias", [True, False], ids=["locality-bias", "padding-mask"])
def test_bf16_training_attention_is_explicit_and_matches_sdpa(monkeypatch, bias):
    """Under bf16 autocast on CPU, attention that trains runs as explicit matmuls + softmax (faster there than
    SDPA's backward, and the only fused path for the learned locality bias); outputs and gradients agree with
    SDPA to bf16 precision. Inference keeps SDPA."""
    import perceiver_lm.model as model_module

    def run():
        torch.manual_seed(0)
        model = PerceiverLM(PRESETS["tiny"].replace(locality_bias=bias, locality_tiling=bias)).train()
        ids, mask = _batch()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids, mask).logits.float()
        logits.logsumexp(-1).mean().backward()
        watched = [model.encoder.cross.attention.query.weight, model.encoder.cross.attention.key.weight]
        watched += [p for m in model.modules() if isinstance(m, model_module.LocalityBias) for p in m.parameters()]
        return logits, [p.grad for p in watched]

    bf16 = torch.zeros(1, dtype=torch.bfloat16)
    assert model_module._explicit_is_faster(bf16.requires_grad_(), None)
    assert model_module._explicit_is_faster(torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1, requires_grad=True))
    assert not model_module._explicit_is_faster(torch.zeros(1, dtype=torch.bfloat16), None)  # inference
    assert not model_module._explicit_is_faster(torch.zeros(1, requires_grad=True), None)  # fp32
    explicit_logits, explicit_grads = run()
    monkeypatch.setattr(model_module, "_explicit_is_faster", lambda q, mask: False)
    sdpa_logits, sdpa_grads = run()
    torch.testing.assert_close(explicit_logits, sdpa_logits, atol=0.05, rtol=0.02)
    assert len(explicit_grads) == (4 if bias else 2) and all(g.abs().sum() > 0 for g in explicit_grads)
    for a, b in zip(explicit_grads, sdpa_grads, strict=True):
        torch.testing.assert_close(a, b, atol=0.02 * b.abs().max().item(), rtol=0.05)


def test_decodes_only_asked_positions_and_matches_full_decode():
    model = PerceiverLM(PRESETS["tiny"]).eval()
    ids, mask = _batch()
    full = model(ids, mask).logits
    assert full.shape == (3, ids.shape[1], 262)
    positions = torch.tensor([[1, 5, 7], [0, 2, 30], [1, 1, 2]])
    some = model(ids, mask, query_positions=positions).logits
    assert some.shape == (3, 3, 262)
    torch.testing.assert_close(
        some, torch.gather(full, 1, positions[..., None].expand(-1, -1, 262)), atol=1e-5, rtol=1e-5
    )


def test_padding_does_not_change_real_positions():
    model = PerceiverLM(PLAIN).eval()
    ids, mask = _batch()
    alone = model(ids[2:, :3], mask[2:, :3]).logits  # "x" = [CLS] x [SEP], no padding
    padded = model(ids, mask).logits[2:, :3]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_tied_queries_share_the_input_position_table_and_output_is_tied():
    model = PerceiverLM(PRESETS["tiny"])
    names = set(model.state_dict())
    assert not any(n.startswith("decoder.queries") for n in names)
    untied = PerceiverLM(PLAIN)
    assert "decoder.queries.embedding.weight" in untied.state_dict()
    # Output logits use the token embedding: changing it changes logits.
    ids, mask = _batch()
    before = model.eval()(ids, mask).logits
    with torch.no_grad():
        model.encoder.token_embedding.weight[10] += 1.0
    after = model(ids, mask).logits
    assert not torch.allclose(before[..., 10], after[..., 10])


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = _batch()
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = PerceiverLM(PRESETS["tiny"]).train()
        model.gradient_checkpointing_enable(enabled)
        model(ids, mask).logits.sum().backward()
        grads.append(model.encoder.latents.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_too_long_input_is_refused():
    model = PerceiverLM(PRESETS["tiny"])
    with pytest.raises(ValueError, match="more than max_seq_len=128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_locality_heads_read_their_latents_stretch_at_init():
    config = PRESETS["tiny"]  # 4 heads: 2 tiled (sub-cells of each latent's 8 bytes), 2 context heads
    model = PerceiverLM(config).eval()
    with torch.no_grad():  # constant keys: the attention is the prior alone
        model.encoder.cross.attention.key.weight.zero_()
    maps = model(torch.full((1, 128), 50), return_attentions=True).encoder_attention[0]  # [H, N, L]
    stride = config.max_seq_len / config.num_latents
    centres = (torch.arange(config.num_latents) + 0.5) * stride
    peaks = maps.argmax(-1).float()  # [H, N]
    assert (peaks[0] - (centres - stride / 4)).abs().max() <= 1  # first 4-byte sub-cell
    assert (peaks[1] - (centres + stride / 4)).abs().max() <= 1  # second sub-cell
    assert (peaks[2] - centres).abs().max() <= 1  # context head centred on the latent
    # Sharper heads concentrate more: the tiled head puts more weight on its peak than the widest head.
    assert maps[0].max(-1).values.mean() > maps[3].max(-1).values.mean()


def test_task_query_heads_are_checked_against_the_encoder():
    from perceiver_lm import PerceiverLMError
    from perceiver_lm.config import MultiTaskConfig, TaskSpec
    from perceiver_lm.model import PerceiverClassifier

    # the MLM decoder's heads validate against its own channels, but not the encoder's the task query uses
    config = PRESETS["tiny"].replace(decoder_heads=3, decoder_qk_channels=33, decoder_v_channels=66)
    with pytest.raises(PerceiverLMError, match="3 heads do not divide the encoder's qk_channels.*set query_heads"):
        PerceiverClassifier(config, MultiTaskConfig((TaskSpec("sst2", 2),)))
    tasks = MultiTaskConfig((TaskSpec("sst2", 2),), query_heads=4)
    ids, mask = _batch()
    out = PerceiverClassifier(config, tasks).eval()(ids, mask, return_attentions=True)
    assert out.logits.shape == (3, 2) and out.decoder_attention.shape[1] == 4
    assert MultiTaskConfig.from_dict(tasks.to_dict()) == tasks
    assert "query_heads" not in MultiTaskConfig((TaskSpec("sst2", 2),)).to_dict()  # old tasks.json unchanged
    with pytest.raises(PerceiverLMError, match="query_heads must be an integer"):
        MultiTaskConfig((TaskSpec("sst2", 2),), query_heads=0)


def test_every_mask_sdpa_receives_has_stride_one_along_the_keys(monkeypatch):
    # CUDA's fused SDPA kernels need it; a transposed bias would silently send every step to the math kernel.
    from perceiver_lm.config import MultiTaskConfig, TaskSpec
    from perceiver_lm.model import PerceiverClassifier

    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append(None if attn_mask is None else (tuple(attn_mask.shape), attn_mask.stride(-1)))
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    config = PRESETS["small"].replace(num_self_layers=1, max_seq_len=256, num_latents=16)
    assert config.locality_bias and config.trim_latents
    batch = encode_batch(["a short one", "a longer text " * 12])
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    lm = PerceiverLM(config).eval()
    lm(ids, mask, query_positions=torch.tensor([[1, 2], [3, 40]]))
    lm(ids)
    heads = MultiTaskConfig((TaskSpec("sst2", 2),), 16)
    PerceiverClassifier(config, heads).eval()(ids, mask, task=0)
    masks = [m for m in seen if m is not None]
    assert len(masks) >= 5  # encoder cross (bias + padding), processor (trimmed latents), decoders
    assert all(stride == 1 for _, stride in masks), masks


def test_locality_geometry_stays_fp32_when_the_model_is_cast_to_bf16():
    from perceiver_lm.model import LocalityBias

    # `base`'s geometry: latents own 8 bytes, centres 4, 12, ..., 2044; bf16 would hold 2044 as 2048.
    bias = LocalityBias(8, 256, 2048, "encoder", tiled=True)
    centres, offsets = bias.centres.clone(), bias.offsets.clone()
    assert not torch.equal(centres.bfloat16().float(), centres)
    positions = torch.arange(2048)
    expected = bias(positions)
    bias.to(torch.bfloat16)
    assert bias.slopes.dtype == torch.bfloat16  # the learned slopes follow the model's dtype ...
    assert bias.centres.dtype == bias.offsets.dtype == torch.float32  # ... the geometry does not
    assert torch.equal(bias.centres, centres) and torch.equal(bias.offsets, offsets)
    torch.testing.assert_close(bias(positions).float(), expected, rtol=1e-2, atol=0)  # only the slopes rounded


def test_attention_maps_under_bf16_autocast_are_fp32_and_agree_with_the_fused_path():
    from perceiver_lm.model import Attention

    torch.manual_seed(0)
    attention = Attention(q_dim=64, kv_dim=32, qk_channels=32, v_channels=64, heads=4, cross=True).eval()
    x, kv = torch.randn(2, 8, 64), torch.randn(2, 300, 32)
    bias = torch.randn(1, 4, 8, 300) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = attention(x, kv, bias).hidden
        mapped = attention(x, kv, bias, return_weights=True)
    assert mapped.weights.dtype == torch.float32
    torch.testing.assert_close(mapped.weights.sum(-1), torch.ones(2, 4, 8))
    # Both paths now differ only by where the bf16 output projection rounds.
    torch.testing.assert_close(mapped.hidden.float(), fused.float(), rtol=0, atol=2e-2)


def test_outputs_show_their_tensors_to_code_that_walks_module_outputs():
    # FSDP2 finds a block's output tensors this way to hook the backward that gathers its sharded weights again;
    # hidden in an opaque dataclass, the backward of a resharded block reads freed storage (seen on an H200).
    import torch.utils._pytree as pytree

    from perceiver_lm.model import Block

    model = PerceiverLM(PRESETS["tiny"])
    ids = torch.randint(6, 262, (2, 32))
    leaves = pytree.tree_leaves(model(ids, return_attentions=True))
    assert len(leaves) == 3 and all(isinstance(t, torch.Tensor) for t in leaves)
    block = model.encoder.layers[0]
    assert isinstance(block, Block)
    hidden = torch.randn(2, PRESETS["tiny"].num_latents, PRESETS["tiny"].d_latents)
    out_leaves = pytree.tree_leaves(block(hidden, None))
    assert len(out_leaves) == 1 and out_leaves[0].shape == hidden.shape


def test_both_models_return_the_same_output_type():
    import torch.utils._pytree as pytree

    from perceiver_lm import PerceiverLMOutput
    from perceiver_lm.config import MultiTaskConfig, TaskSpec
    from perceiver_lm.model import ClassifierOutput, PerceiverClassifier

    assert ClassifierOutput is PerceiverLMOutput  # the old name still imports
    config = PRESETS["tiny"]
    ids, mask = _batch()
    out = PerceiverClassifier(config, MultiTaskConfig((TaskSpec("sst2", 2),))).eval()(ids, mask, return_attentions=True)
    assert type(out) is PerceiverLMOutput
    assert out.logits.shape == (3, 2)
    assert out.encoder_attention.shape == (3, config.num_cross_heads, config.num_latents, ids.shape[1])
    assert out.decoder_attention.shape == (3, config.num_cross_heads, 1, config.num_latents)
    assert len(pytree.tree_leaves(out)) == 3  # a pytree node for FSDP2, like the masked LM's


def test_the_classifier_reads_inputs_longer_than_its_window_and_the_masked_lm_still_refuses_them():
    from perceiver_lm.config import MultiTaskConfig, TaskSpec
    from perceiver_lm.model import PerceiverClassifier

    config = PRESETS["tiny"]
    torch.manual_seed(0)
    model = PerceiverClassifier(config, MultiTaskConfig((TaskSpec("sst2", 2),))).eval()
    ids = torch.randint(6, 262, (2, 3 * config.max_seq_len + 5))  # 4 windows
    out = model(ids, torch.ones_like(ids), return_attentions=True)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
    assert out.encoder_attention.shape == (2, 4, config.num_cross_heads, config.num_latents, config.max_seq_len)
    assert out.decoder_attention.shape == (2, config.decoder_heads, 1, 4 * config.num_latents)
    with pytest.raises(ValueError, match="more than max_seq_len=128"):
        model.encoder(ids)  # the encoder itself still reads one window
    with pytest.raises(ValueError, match="more than max_seq_len=128"):
        PerceiverLM(config)(ids)
    assert model.num_parameters() == 274_214  # reading windows adds no weights (the count before it did)


def test_span_queries_know_where_inside_a_masked_run_they_sit():
    from perceiver_lm.tokenizer import MASK_ID

    model = PerceiverLM(PRESETS["tiny"].replace(span_queries=True)).eval()
    queries = model.decoder.queries
    with torch.no_grad():
        model.encoder.position_embedding.weight.zero_()
        for table, channel in ((queries.from_start, 0), (queries.from_end, 1)):
            table.weight.zero_()
            table.weight[:, channel] = torch.arange(table.num_embeddings, dtype=torch.float)
    m = MASK_ID
    ids = torch.tensor([[10, m, m, m, 11, m, 12, m, m], [m, m, 10, 11, 12, 13, 14, 15, m]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    q = queries(positions, ids)
    # Row 0: unmasked; 1 + k: k bytes after the run's start (channel 0) and before its end (channel 1).
    assert q[0, :, 0].tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2]
    assert q[0, :, 1].tolist() == [0, 3, 2, 1, 0, 1, 0, 2, 1]
    assert q[1, :, 0].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 1]
    assert q[1, :, 1].tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 1]
    long = torch.full((1, 100), m)
    assert queries(torch.tensor([[0, 50, 99]]), long)[0, :, 0].tolist() == [1, 33, 33]  # capped at 32 bytes
    # Without span queries the same positions get the same queries whatever the input holds.
    plain = PerceiverLM(PRESETS["tiny"]).decoder.queries
    assert torch.equal(plain(positions, ids), plain(positions, torch.full_like(ids, 10)))
