"""Masking for byte-level MLM: whole-word (or single-byte) selection with 80/10/10 replacement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perceiver_lm.tokenizer import MASK_ID, NUM_SPECIAL, VOCAB_SIZE

WHITESPACE_IDS = np.array([b + NUM_SPECIAL for b in b" \t\n\r\x0b\x0c"], dtype=np.int64)
# The longest unit whole-word masking keeps whole, in bytes. A "word" is what lies between whitespace, so
# text without spaces (Chinese, Japanese, Thai, a long URL, base64, a hash) is one word as long as the
# window, and masking 15 % of the words masks all of its bytes or none. Longer words are cut into pieces
# of at most this many bytes (at UTF-8 character starts, so a piece may run 3 bytes over), each masked on
# its own. 32 keeps the words of space-separated languages whole (English words of over 20 bytes are rare,
# of over 32 practically absent: those are URLs, numbers, compounds), yet gives a 2,048-byte window of
# unspaced text 64 pieces, so its masked share stays within about a percent of the rate; a piece is
# still ~10 CJK characters, a phrase, whose bytes cannot be copied from its own unmasked neighbours.
MAX_UNIT_BYTES = 32


@dataclass(frozen=True)
class MaskedExample:
    """One masked window: corrupted ``input_ids`` [L], masked ``positions`` [M] and their ``labels`` [M]."""

    input_ids: np.ndarray
    positions: np.ndarray
    labels: np.ndarray


def maskable(ids: np.ndarray, whole_words: bool) -> np.ndarray:
    """[L] bool: the bytes masking may choose: the bytes of words (not whitespace), or every byte; never specials."""
    byte = ids >= NUM_SPECIAL
    return byte & ~np.isin(ids, WHITESPACE_IDS) if whole_words else byte


def unit_ids(ids: np.ndarray, whole_words: bool, max_unit: int = MAX_UNIT_BYTES) -> np.ndarray:
    """Number each maskable unit 1..W (0 = never masked): words between whitespace, or single bytes.

    A word longer than ``max_unit`` bytes is cut into pieces (see `MAX_UNIT_BYTES`), each starting at the first
    UTF-8 character that begins at or after a multiple of ``max_unit`` bytes into the word.
    """
    in_word = maskable(ids, whole_words)
    if not whole_words:
        return np.where(in_word, np.cumsum(in_word), 0)
    starts = in_word & ~np.concatenate(([False], in_word[:-1]))
    at = np.arange(len(ids))
    word_start = np.maximum.accumulate(np.where(starts, at, 0))
    # A continuation byte (10xxxxxx) belongs to the character begun at most 3 bytes before it; any other
    # (broken UTF-8, binary) counts as a character of its own, so no piece grows past max_unit + 3 bytes.
    continuation = ((ids - NUM_SPECIAL) & 0xC0) == 0x80
    lead = np.maximum.accumulate(np.where(in_word & (starts | ~continuation), at, 0))
    char_start = in_word & (starts | ~continuation | (at - lead > 3))
    char_offset = np.maximum.accumulate(np.where(char_start, at, 0)) - word_start
    piece = char_offset // max_unit
    new_piece = char_start & (piece != np.concatenate(([-1], piece[:-1])))
    return np.where(in_word, np.cumsum(starts | new_piece), 0)


def mask_tokens(
    ids: np.ndarray,
    rng: np.random.Generator,
    rate: float = 0.15,
    whole_words: bool = True,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> MaskedExample:
    """Mask ``rate`` of the units of ``ids`` (at least one when there is any): words (cut into pieces of
    at most `MAX_UNIT_BYTES`, so that the masked share of bytes is near ``rate`` in unspaced text too), or bytes.

    Each chosen unit is, as a whole, replaced by ``[MASK]`` ids (``mask_fraction``), by random byte
    ids drawn from the 256 byte ids only (``random_fraction``), or left unchanged (the rest).
    Specials are never masked. Deterministic given ``rng``'s state.

    Args:
        ids: [L] int64 token ids.
        rng: numpy generator (seed it per example for reproducible masking).
        rate: fraction of units to mask.
        whole_words: mask whitespace-delimited words (long ones in pieces); False masks single bytes.
        mask_fraction: share of chosen units replaced by ``[MASK]``.
        random_fraction: share of chosen units replaced by random byte ids.
    """
    units = unit_ids(ids, whole_words)
    count = int(units.max(initial=0))
    corrupted = ids.copy()
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return MaskedExample(corrupted, empty, empty)
    chosen_count = min(count, max(1, int(round(rate * count))))
    chosen = np.zeros(count + 1, dtype=bool)
    chosen[rng.choice(count, chosen_count, replace=False) + 1] = True
    draw = rng.random(count + 1)
    positions = np.flatnonzero(chosen[units])
    unit_of = units[positions]
    to_mask = draw[unit_of] < mask_fraction
    to_random = (draw[unit_of] >= mask_fraction) & (draw[unit_of] < mask_fraction + random_fraction)
    corrupted[positions[to_mask]] = MASK_ID
    corrupted[positions[to_random]] = rng.integers(NUM_SPECIAL, VOCAB_SIZE, int(to_random.sum()))
    return MaskedExample(corrupted, positions.astype(np.int64), ids[positions].astype(np.int64))
