import numpy as np
import pytest

from perceiver_lm.masking import MAX_UNIT_BYTES, mask_tokens, maskable, unit_ids
from perceiver_lm.tokenizer import CLS_ID, MASK_ID, NUM_SPECIAL, SEP_ID, encode


def _words(rng, count):
    return " ".join("".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(1, 9))) for _ in range(count))


def test_whole_words_are_masked_entirely_and_count_matches_rate():
    rng = np.random.default_rng(1)
    ids = encode(_words(rng, 200))
    units = unit_ids(ids, whole_words=True)
    assert units.max() == 200
    masked = mask_tokens(ids, np.random.default_rng(0), rate=0.15)
    chosen = np.unique(units[masked.positions])
    assert len(chosen) == 30 and 0 not in chosen
    for word in chosen:  # every byte of a chosen word, and nothing else
        assert set(np.flatnonzero(units == word)) <= set(masked.positions.tolist())
    assert len(masked.positions) == sum((units == w).sum() for w in chosen)
    assert (masked.labels == ids[masked.positions]).all()
    unmasked = np.setdiff1d(np.arange(len(ids)), masked.positions)
    assert (masked.input_ids[unmasked] == ids[unmasked]).all()


def test_specials_and_whitespace_never_masked_and_random_ids_are_bytes():
    rng = np.random.default_rng(2)
    ids = encode(_words(rng, 500))
    for seed in range(20):
        masked = mask_tokens(ids, np.random.default_rng(seed), rate=0.5)
        assert CLS_ID not in ids[masked.positions] and SEP_ID not in ids[masked.positions]
        assert not np.isin(ids[masked.positions], [32 + NUM_SPECIAL, 10 + NUM_SPECIAL]).any()
        changed = masked.input_ids != ids
        replaced = masked.input_ids[changed & (masked.input_ids != MASK_ID)]
        assert (replaced >= NUM_SPECIAL).all() and (replaced < 262).all()


def test_replacement_proportions_are_80_10_10_per_word():
    rng = np.random.default_rng(3)
    ids = encode(_words(rng, 4000))
    units = unit_ids(ids, True)
    masked = mask_tokens(ids, np.random.default_rng(5), rate=0.5)
    words = np.unique(units[masked.positions])
    kinds = {"mask": 0, "same": 0, "random": 0}
    for w in words:
        where = np.flatnonzero(units == w)
        new = masked.input_ids[where]
        if (new == MASK_ID).all():
            kinds["mask"] += 1
        elif (new == ids[where]).all():
            kinds["same"] += 1  # includes the rare random draw equal to the original
        else:
            kinds["random"] += 1
    total = len(words)
    assert abs(kinds["mask"] / total - 0.8) < 0.03
    assert abs(kinds["random"] / total - 0.1) < 0.02
    assert abs(kinds["same"] / total - 0.1) < 0.02


def test_deterministic_given_seed_and_byte_mode():
    ids = encode("the quick brown fox jumps over the lazy dog " * 20)
    a = mask_tokens(ids, np.random.default_rng(7))
    b = mask_tokens(ids, np.random.default_rng(7))
    assert (a.input_ids == b.input_ids).all() and (a.positions == b.positions).all()
    c = mask_tokens(ids, np.random.default_rng(8))
    assert not np.array_equal(a.positions, c.positions)
    single = mask_tokens(ids, np.random.default_rng(7), rate=0.15, whole_words=False)
    assert len(single.positions) == round(0.15 * (len(ids) - 2))


def test_no_maskable_units():
    masked = mask_tokens(np.array([CLS_ID, 32 + NUM_SPECIAL, SEP_ID]), np.random.default_rng(0))
    assert len(masked.positions) == 0


# Text without spaces is one "word" to whitespace splitting: masking 15 % of the words masked all of its bytes.
CJK = "天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜金生丽水玉出昆冈"
UNSPACED = [
    ("chinese", CJK * 20),
    ("japanese", "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。" * 30),
    ("thai", "ภาษาไทยเขียนติดกันโดยไม่เว้นวรรคระหว่างคำ" * 30),
    ("url", "https://example.com/" + "".join(f"path{i}/segment-{i * 7919 % 1000}?q={i}&" for i in range(200))),
    ("base64", __import__("base64").b64encode(np.random.default_rng(0).bytes(1600)).decode()),
    ("digits", "".join(str(d) for d in np.random.default_rng(1).integers(0, 10, 2100))),
    ("one-long-word-among-short", "see " + "x" * 2000 + " for the details of it"),
]


def _window(text: str, size: int = 2048) -> np.ndarray:
    """``[CLS] text [SEP]`` with ``text`` cut to about ``size`` bytes (at a character boundary)."""
    return encode(text.encode()[: size - 2].decode("utf-8", "ignore"))


@pytest.mark.parametrize("name, text", UNSPACED, ids=[u[0] for u in UNSPACED])
def test_masked_share_of_unspaced_text_stays_near_the_rate(name, text):
    ids = _window(text)
    assert len(ids) > 2000
    can = maskable(ids, whole_words=True)
    for seed in range(8):
        masked = mask_tokens(ids, np.random.default_rng(seed), rate=0.15)
        assert 0.10 <= len(masked.positions) / can.sum() <= 0.20, (name, seed, len(masked.positions))
    # Pieces are masked independently, start at a character (never inside a UTF-8 sequence) and stay short.
    units = unit_ids(ids, whole_words=True)
    sizes = np.bincount(units)[1:]
    assert sizes.max() <= MAX_UNIT_BYTES + 3 and len(sizes) >= len(ids) // (MAX_UNIT_BYTES + 3)
    firsts = np.flatnonzero(units[1:] != units[:-1]) + 1
    firsts = firsts[units[firsts] > 0]
    assert not np.any(((ids[firsts] - NUM_SPECIAL) & 0xC0) == 0x80)
    assert (np.unique(units[firsts]) == np.arange(1, units.max() + 1)).all()


def _whitespace_words(ids: np.ndarray) -> np.ndarray:
    """The units of whole-word masking before long words were cut: runs between whitespace (a reference)."""
    units, current, inside = np.zeros(len(ids), dtype=np.int64), 0, False
    for i, token in enumerate(ids.tolist()):
        word = token >= NUM_SPECIAL and chr(token - NUM_SPECIAL) not in " \t\n\r\x0b\x0c"
        current += word and not inside
        units[i], inside = (current if word else 0), word
    return units


def test_words_under_the_cap_are_masked_whole_as_before():
    rng = np.random.default_rng(4)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(1, MAX_UNIT_BYTES + 1))) for _ in range(300)]
    text = " ".join(words) + "\nnaïve café, déjà-vu\tinternationalization e-mail 3.14159!"
    ids = encode(text)
    assert (unit_ids(ids, whole_words=True) == _whitespace_words(ids)).all()
    # The masks of an English sentence are exactly those whole-word masking drew before the cap.
    sentence = "The quick brown fox jumps over the lazy dog; internationalization, 3.14159 and e-mail."
    masked = mask_tokens(encode(sentence + "\nA second line, with\ttabs."), np.random.default_rng(0))
    assert masked.positions.tolist() == [*range(46, 67), *range(68, 75), 88]


@pytest.mark.parametrize(
    "length, pieces", [(MAX_UNIT_BYTES - 1, 1), (MAX_UNIT_BYTES, 1), (MAX_UNIT_BYTES + 1, 2), (5 * MAX_UNIT_BYTES, 5)]
)
def test_words_over_the_cap_are_cut_into_pieces(length, pieces):
    units = unit_ids(encode("a " + "x" * length + " b"), whole_words=True)
    assert units.max() == pieces + 2
    last = length - MAX_UNIT_BYTES * (pieces - 1)
    assert np.bincount(units)[2:-1].tolist() == [MAX_UNIT_BYTES] * (pieces - 1) + [last]


def test_broken_utf8_runs_are_cut_too():
    ids = np.array([CLS_ID, *([0x80 + NUM_SPECIAL] * 100), SEP_ID])  # continuation bytes without a lead
    assert np.bincount(unit_ids(ids, whole_words=True))[1:].tolist() == [32, 32, 32, 4]
