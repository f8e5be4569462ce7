"""The classifier reads inputs longer than its window: consecutive windows, one encoder pass each, one task query
over all their latents (issue 21)."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from perceiver_lm import PRESETS, PerceiverLMError
from perceiver_lm.config import MultiTaskConfig, TaskSpec
from perceiver_lm.model import PerceiverClassifier, split_windows
from perceiver_lm.tokenizer import PAD_ID, encode_batch

TASKS = MultiTaskConfig((TaskSpec("doc", 2), TaskSpec("score", 1)), head_hidden=32)
# `base`'s shape (no priors, no byte encoder, every latent read; converts from transformers) at a tiny size.
PLAIN = PRESETS["tiny"].replace(
    qk_channels=32, v_channels=96, locality_bias=False, locality_tiling=False, tie_decoder_queries=False
)
# `small`'s priors (locality, byte encoder, trimmed latents, zero positions) at a tiny size.
SMALL = PRESETS["small"].replace(
    max_seq_len=128,
    d_model=64,
    num_latents=16,
    d_latents=96,
    qk_channels=64,
    v_channels=96,
    num_self_layers=2,
    decoder_qk_channels=32,
    decoder_v_channels=64,
    ngram_buckets=512,
)
CONFIGS = [PLAIN, PRESETS["tiny"], SMALL]
IDS = ["base-shaped", "tiny", "small-shaped"]


def _classifier(config, seed=0):
    torch.manual_seed(seed)
    model = PerceiverClassifier(config, TASKS).eval()
    with torch.no_grad():  # zero-initialised residual branches and positions would hide mistakes: wake them up
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _ids(length, seed=0, batch=1):
    return torch.from_numpy(np.random.default_rng(seed).integers(6, 262, (batch, length)))


def _old_path(model, ids, mask, task=0, maps=False):
    """What `PerceiverClassifier.forward` computed before windows: one encoder pass, the task query over it."""
    encoded = model.encoder(ids, mask, maps)
    return model.decoder(encoded.hidden, task, encoded.latent_mask, maps)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_an_input_of_one_window_takes_the_single_window_path_exactly(config):
    model = _classifier(config)
    ids = _ids(config.max_seq_len, batch=2)
    mask = torch.ones_like(ids)
    mask[1, 50:] = 0
    with torch.no_grad():
        for task in (0, 1):
            expected, _ = _old_path(model, ids, mask, task)
            assert torch.equal(model(ids, mask, task=task).logits, expected)
            assert torch.equal(model(ids, mask, task=task, window=config.max_seq_len).logits, expected)
            assert torch.equal(model(ids[:, :40], None, task=task).logits, _old_path(model, ids[:, :40], None, task)[0])
        out = model(ids, mask, return_attentions=True)
        assert out.encoder_attention.shape == (2, config.num_cross_heads, config.num_latents, config.max_seq_len)
        assert out.decoder_attention.shape[-1] == config.num_latents


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_a_long_example_batched_with_a_short_one_gives_what_each_gives_alone(config):
    model = _classifier(config)
    w = config.max_seq_len
    long, short = _ids(3 * w - 30, seed=1), _ids(w // 2, seed=2)  # 3 windows (the last one partly padding), 1
    ids = torch.full((2, long.shape[1]), PAD_ID)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = long[0], 1
    ids[1, : short.shape[1]], mask[1, : short.shape[1]] = short[0], 1  # windows 2 and 3 of row 1: all padding
    with torch.no_grad():
        for task in (0, 1):
            batched = model(ids, mask, task=task).logits
            torch.testing.assert_close(batched[0], model(long, task=task).logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched[1], model(short, task=task).logits[0], atol=1e-5, rtol=1e-5)
            # the short one alone takes the single-window path: padding windows changed nothing
            torch.testing.assert_close(batched[1], _old_path(model, short, None, task)[0][0], atol=1e-5, rtol=1e-5)
            chunked = model(ids, mask, task=task, windows_per_pass=2).logits  # 6 windows, 3 passes
            torch.testing.assert_close(chunked, batched, atol=1e-5, rtol=1e-5)
        # Masked bytes change nothing: row 0 with its last 20 bytes overwritten and masked = row 0 cut shorter.
        noisy, cut = ids[:1].clone(), mask[:1].clone()
        noisy[0, -20:], cut[0, -20:] = 100, 0
        torch.testing.assert_close(model(noisy, cut).logits, model(ids[:1, :-20]).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", [PLAIN, PRESETS["tiny"]], ids=IDS[:2])
def test_logits_depend_on_a_byte_in_the_last_window(config):
    model = _classifier(config.replace(max_seq_len=2048))
    ids = _ids(6000, seed=3)
    changed = ids.clone()
    changed[0, 5000] = 6 + (int(ids[0, 5000]) - 6 + 100) % 256
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
        assert (before - after).abs().max() > 1e-6  # one byte of 2,048 in its window: small, but there
        # ... and only through the third window: the first two read alone are unchanged
        assert torch.equal(model(ids[:, :4096]).logits, model(changed[:, :4096]).logits)


def test_gradient_reaches_the_parameters_through_every_window():
    config = PRESETS["tiny"]
    w = config.max_seq_len
    ids = torch.cat([torch.full((1, w), 10), torch.full((1, w), 20), torch.full((1, w - 7), 30)], dim=1)
    grads = []
    for checkpointing in (False, True):
        model = _classifier(config).train()
        model.gradient_checkpointing_enable(checkpointing)
        model(ids).logits.sum().backward()
        rows = model.encoder.token_embedding.weight.grad
        # each window holds one byte id only: its embedding row has a gradient, rows nobody read have none
        assert all(rows[i].abs().sum() > 0 for i in (10, 20, 30)) and rows[40].abs().sum() == 0
        assert all(p.grad is not None for n, p in model.named_parameters() if "heads.1" not in n)
        grads.append(rows.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_attention_maps_of_several_windows():
    config = PRESETS["small"].replace(max_seq_len=128, num_latents=16, num_self_layers=1, ngram_buckets=512)
    model = _classifier(config)
    w, n = config.max_seq_len, config.num_latents
    ids = _ids(3 * w, seed=4, batch=2)
    mask = torch.ones_like(ids)
    mask[1, w + 40 :] = 0  # row 1: a full window, 40 bytes, an empty window
    with torch.no_grad():
        fused = model(ids, mask)
        out = model(ids, mask, return_attentions=True)
    torch.testing.assert_close(out.logits, fused.logits, atol=1e-5, rtol=1e-5)
    assert fused.encoder_attention is None and fused.decoder_attention is None
    enc, dec = out.encoder_attention, out.decoder_attention
    assert enc.shape == (2, 3, config.num_cross_heads, n, w)  # [B, K, H, N, W]
    assert dec.shape == (2, TASKS.heads_for(config), 1, 3 * n)  # [B, H, 1, K*N]
    # Window 1 of row 1 has 40 bytes: its latents read none of its padding.
    assert enc[1, 1, ..., 40:].abs().max() == 0
    # The task query reads no latent of row 1's empty window, nor trimmed latents (stretch starts past byte 40).
    stride = w / n
    hidden = dec[1].view(-1, 3, n)
    assert hidden[:, 2].abs().max() == 0
    assert hidden[:, 1, int(np.ceil(40 / stride)) :].abs().max() == 0
    torch.testing.assert_close(dec.sum(-1), torch.ones_like(dec.sum(-1)))


def test_windows_of_a_batch():
    ids = torch.arange(10).view(1, 10).repeat(2, 1) + 6
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    windows = split_windows(ids, mask, 4)
    assert windows.count == 3 and windows.input_ids.shape == windows.attention_mask.shape == (6, 4)
    assert windows.input_ids[2].tolist() == [14, 15, PAD_ID, PAD_ID]
    assert windows.attention_mask[2].tolist() == [True, True, False, False]
    assert windows.has_text.tolist() == [[True, True, True], [True, False, False]]
    # an empty window reads its first byte (finite latents), and the task query never reads them
    assert windows.attention_mask[4].tolist() == [True, False, False, False]


def test_window_argument():
    model = _classifier(PRESETS["tiny"])
    ids = _ids(100)
    with torch.no_grad():
        two = model(ids, window=64).logits  # 64 + 36 bytes
        a, b = model.encoder(ids[:, :64]), model.encoder(F.pad(ids[:, 64:], (0, 28)), F.pad(torch.ones(1, 36), (0, 28)))
        latents = torch.cat([a.hidden, b.hidden], dim=1)
        expected, _ = model.decoder(latents, 0)
        torch.testing.assert_close(two, expected, atol=1e-5, rtol=1e-5)
    for bad in (0, 129, 2.0, True):
        with pytest.raises(PerceiverLMError, match="window must be an integer in 1..max_seq_len=128"):
            model(ids, window=bad)
    with pytest.raises(PerceiverLMError, match="windows_per_pass must be a positive integer"):
        model(_ids(300), windows_per_pass=0)


def test_the_task_configs_window_is_the_default_and_survives_save_and_load(tmp_path):
    tasks = MultiTaskConfig(TASKS.tasks, head_hidden=32, max_length=300, window=64)
    assert MultiTaskConfig.from_dict(tasks.to_dict()) == tasks
    assert "window" not in TASKS.to_dict()  # files written before the field read back unchanged
    torch.manual_seed(0)
    model = PerceiverClassifier(PRESETS["tiny"], tasks).eval()
    ids = _ids(100)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, model(ids, window=64).logits)
        assert not torch.allclose(model(ids).logits, model(ids, window=128).logits)
    model.save_pretrained(tmp_path / "m")
    loaded = PerceiverClassifier.from_pretrained(tmp_path / "m").eval()
    assert loaded.tasks.window == 64
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    with pytest.raises(PerceiverLMError, match="window=129 is longer than the model's max_seq_len=128"):
        PerceiverClassifier(PRESETS["tiny"], MultiTaskConfig(TASKS.tasks, window=129))
    for bad in (0, 2.5, True, "64"):
        with pytest.raises(PerceiverLMError, match="window must be an integer in 1..16777216"):
            MultiTaskConfig(TASKS.tasks, window=bad)


def test_cost_grows_linearly_with_the_bytes_read():
    from torch.utils.flop_counter import FlopCounterMode

    model = _classifier(PRESETS["tiny"])
    flops = {}
    for windows in (1, 2, 4, 8):
        with FlopCounterMode(display=False) as counter:
            model(_ids(windows * PRESETS["tiny"].max_seq_len))
        flops[windows] = counter.get_total_flops()
    for windows in (2, 4, 8):
        assert flops[windows] / (windows * flops[1]) == pytest.approx(1.0, abs=0.02), flops


def test_a_classifier_converted_from_transformers_reads_long_inputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    from perceiver_lm.interop import load_from_transformers

    hf = dict(num_latents=16, d_latents=96, d_model=64, num_blocks=1, num_self_attends_per_block=2)
    hf |= dict(num_self_attention_heads=4, num_cross_attention_heads=4, qk_channels=32, v_channels=96)
    hf |= dict(max_position_embeddings=128, vocab_size=262)
    torch.manual_seed(0)
    transformers.PerceiverForMaskedLM(transformers.PerceiverConfig(**hf)).save_pretrained(tmp_path / "hf")
    lm = load_from_transformers(tmp_path / "hf")
    model = PerceiverClassifier.from_lm(lm, TASKS).eval()
    long, short = _ids(300, seed=5), _ids(100, seed=6)
    ids = torch.cat([long, F.pad(short, (0, 200))])
    mask = torch.cat([torch.ones(1, 300), F.pad(torch.ones(1, 100), (0, 200))]).long()
    with torch.no_grad():
        batched = model(ids, mask).logits
        torch.testing.assert_close(batched[0], model(long).logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[1], _old_path(model, short, None)[0][0], atol=1e-5, rtol=1e-5)


FILLER = ("no", "not", "never", "nah", "none", "nope", "nothing", "nor")  # no "y": "yes" is only where it is put


def _yes_documents(rng, n, length=700):
    """Filler words; half of them with the word "yes" in the last 100 bytes (label 1), the rest without."""
    texts, labels = [], []
    for _ in range(n):
        words = []
        while sum(len(w) + 1 for w in words) < length:
            words.append(FILLER[rng.integers(len(FILLER))])
        text = " ".join(words)[:length]
        label = int(rng.random() < 0.5)
        if label:
            at = int(rng.integers(length - 100, length - 4))
            text = text[:at] + " yes" + text[at + 4 :]
        texts.append(text)
        labels.append(label)
    enc = encode_batch(texts)
    return torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask), torch.tensor(labels)


def test_a_tiny_classifier_learns_a_label_only_the_last_window_decides():
    config = PRESETS["tiny"].replace(max_seq_len=256)  # 702 ids: windows of 256, 256, 190 bytes
    torch.manual_seed(0)
    model = PerceiverClassifier(config, MultiTaskConfig((TaskSpec("yes", 2),), 64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    rng = np.random.default_rng(0)
    ids, mask, labels = _yes_documents(np.random.default_rng(1), 128)
    assert ids.shape[1] > 2 * config.max_seq_len
    accuracy = 0.0
    for step in range(300):  # batches of 32: 9 seeds of 9 pass 95 % within 140 steps (~20 s on one thread)
        batch_ids, batch_mask, batch_labels = _yes_documents(rng, 32)
        loss = F.cross_entropy(model.train()(batch_ids, batch_mask).logits, batch_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 19:
            with torch.no_grad():
                accuracy = (model.eval()(ids, mask).logits.argmax(-1) == labels).float().mean().item()
            if accuracy > 0.95:
                break
    assert accuracy > 0.9, (step, accuracy)
    with torch.no_grad():  # read through the first window only, the same model is at chance
        first = model(ids[:, : config.max_seq_len], mask[:, : config.max_seq_len]).logits.argmax(-1) == labels
    assert first.float().mean() < 0.7


def test_long_documents_benchmark_runs_on_a_tiny_config(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("long_documents", None)
    from long_documents import measure, summarise

    runs = [measure("tiny", length, 256 // length, 1, 0) for length in (64, 128, 256)]
    assert [r["windows"] for r in runs] == [1, 1, 2] and all(r["example_s"] > 0 for r in runs)
    assert runs[0]["peak_memory_mib"] >= runs[0]["baseline_memory_mib"] > 0
    chunked = measure("tiny", 512, 1, 1, 0, windows_per_pass=2, overrides={"num_self_layers": 1})
    assert chunked["windows"] == 4 and chunked["windows_per_pass"] == 2
    narrow = measure("tiny", 256, 1, 1, 0, overrides={"num_self_layers": 1}, window=64)
    assert (narrow["window"], narrow["windows"], narrow["overrides"]) == (64, 4, {"num_self_layers": 1})
    rows = summarise(runs)
    assert [r["length"] for r in rows] == [64, 128, 256] and rows[0]["per_byte_vs_shortest"] == 1.0


def test_a_model_pretrained_on_short_windows_is_read_in_those_windows(tmp_path, capsys):
    # Pretrained on 64-byte windows of a 128-byte model: positions 64..127 (and the latents over them) never
    # trained, so fine-tuning, its evaluation and MLM scoring read longer inputs as 64-byte windows by default.
    import json

    from perceiver_lm.evaluation import score_text
    from perceiver_lm.options import EvalOptions, TrainingOptions
    from perceiver_lm.training import pretrain
    from tasks.finetune.finetune import GlueOptions, finetune

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"word{i % 7} and more words {i}\n" for i in range(400)))
    pretrain(
        TrainingOptions(data=[str(corpus)], output_dir=str(tmp_path / "lm"), window=64, batch_size=4, max_steps=2,
                        eval_every=2, eval_windows=2, report_to="none"),
        PRESETS["tiny"],
    )  # fmt: skip
    rows = [{"text": "x" * (90 + i) + (" good" if i % 2 else " bad"), "label": i % 2} for i in range(8)]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = finetune(
        GlueOptions(train_file=str(train_file), validation_file=str(train_file), checkpoint=str(tmp_path / "lm"),
                    output_dir=str(tmp_path / "ft"), max_steps=1, batch_size=4)
    )  # fmt: skip
    assert "pretrained on 64-byte windows" in capsys.readouterr().err
    tasks = MultiTaskConfig.load(result.best_model / "tasks.json")
    assert tasks.window == 64 and tasks.max_length is None  # 128-byte inputs: two windows of 64
    assert PerceiverClassifier.from_pretrained(result.best_model)._window(None) == 64
    scored = score_text(tmp_path / "lm", EvalOptions(data=[str(corpus)], max_windows=2))
    assert scored.window == 64
    # Asked for explicitly, a longer window is read, with a note that its tail never trained.
    scored = score_text(tmp_path / "lm", EvalOptions(data=[str(corpus)], max_windows=2, window=128))
    assert scored.window == 128 and "past the 64 bytes" in capsys.readouterr().err
