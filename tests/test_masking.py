import numpy as np

from perceiver_lm.masking import mask_tokens, unit_ids
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
