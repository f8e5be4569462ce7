import numpy as np
import pytest

from perceiver_lm import tokenizer as tok


def test_special_ids_and_byte_offset():
    assert (tok.PAD_ID, tok.BOS_ID, tok.EOS_ID, tok.MASK_ID, tok.CLS_ID, tok.SEP_ID) == (0, 1, 2, 3, 4, 5)
    assert tok.VOCAB_SIZE == 262
    assert tok.encode("hi").tolist() == [4, ord("h") + 6, ord("i") + 6, 5]
    assert tok.encode(b"\x00\xff", add_special_tokens=False).tolist() == [6, 261]


@pytest.mark.parametrize("text", ["Grüße aus Köln", "東京は雨です", "emoji 🧠🔥 ok", "", "tab\tnew\nline"])
def test_round_trip_multilingual(text):
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) + 2
    assert tok.decode(ids) == text


def test_broken_utf8_decodes_with_replacement():
    ids = tok.encode(b"ok \xe2\x82 end")  # truncated 3-byte sequence
    assert tok.decode(ids) == "ok \ufffd end"
    assert tok.decode_bytes(ids) == b"ok \xe2\x82 end"


def test_pair_and_batch_with_padding_and_truncation():
    pair = tok.encode_pair("ab", "c")
    assert pair.tolist() == [4, 103, 104, 5, 105, 5]
    batch = tok.encode_batch(["abc", "a"], max_length=4)
    assert batch.input_ids.tolist() == [[4, 103, 104, 5], [4, 103, 5, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    pairs = tok.encode_batch(["a", "bb"], pairs=["x", "y"])
    assert pairs.input_ids[1].tolist() == [4, 104, 104, 5, 127, 5]
    assert pairs.attention_mask[0].tolist() == [1, 1, 1, 1, 1, 0]


def test_bucketed_padding_uses_four_lengths_per_doubling_and_at_most_a_quarter_more():
    sizes = {tok.bucket_length(n) for n in range(1, 2049)}
    assert sorted(sizes)[:8] == [16, 32, 48, 64, 80, 96, 112, 128]
    assert {160, 192, 224, 256, 1280, 1536, 1792, 2048} <= sizes and len(sizes) == 24
    assert all(n <= tok.bucket_length(n) <= max(n + 15, 1.25 * n) for n in range(1, 5000))
    assert tok.bucket_length(2049) == 2560  # past a power of two, the step doubles
    batch = tok.pad_batch([np.arange(6, 106), np.arange(6, 16)], bucketed=True)  # longest: 100 ids
    assert batch.input_ids.shape == (2, 112) and batch.attention_mask.sum(1).tolist() == [100, 10]
    assert (batch.input_ids[:, 100:] == tok.PAD_ID).all()


def test_batch_errors():
    with pytest.raises(ValueError, match="2 texts but 1"):
        tok.encode_batch(["a", "b"], pairs=["x"])
    with pytest.raises(ValueError, match="at least 2"):
        tok.pad_batch([np.array([1, 2, 3])], max_length=1)


PARITY_TEXTS = [
    "Hello, world!",
    "Grüße aus Köln",
    "東京は雨です",
    "emoji 🧠🔥 ok",
    "العربية",
    "  spaces\tand\nnewlines  ",
]


def test_ids_equal_transformers_perceiver_tokenizer():
    transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install -e '.[test]')")
    reference = transformers.PerceiverTokenizer()
    for text in PARITY_TEXTS:
        assert tok.encode(text).tolist() == reference(text)["input_ids"], text
    pair = reference("first", "second")["input_ids"]
    assert tok.encode_pair("first", "second").tolist() == pair
    assert tok.decode(tok.encode(PARITY_TEXTS[2])) == reference.decode(
        reference(PARITY_TEXTS[2])["input_ids"], skip_special_tokens=True
    )
