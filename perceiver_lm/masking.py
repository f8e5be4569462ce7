"""Masking for byte-level MLM: whole-word (or single-byte) selection with 80/10/10 replacement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perceiver_lm.tokenizer import MASK_ID, NUM_SPECIAL, VOCAB_SIZE

WHITESPACE_IDS = np.array([b + NUM_SPECIAL for b in b" \t\n\r\x0b\x0c"], dtype=np.int64)


@dataclass(frozen=True)
class MaskedExample:
    """One masked window: corrupted ``input_ids`` [L], masked ``positions`` [M] and their ``labels`` [M]."""

    input_ids: np.ndarray
    positions: np.ndarray
    labels: np.ndarray


def unit_ids(ids: np.ndarray, whole_words: bool) -> np.ndarray:
    """Number each maskable unit 1..W (0 = never masked): words between whitespace, or single bytes."""
    maskable = ids >= NUM_SPECIAL
    if not whole_words:
        return np.where(maskable, np.cumsum(maskable), 0)
    in_word = maskable & ~np.isin(ids, WHITESPACE_IDS)
    starts = in_word & ~np.concatenate(([False], in_word[:-1]))
    return np.where(in_word, np.cumsum(starts), 0)


def mask_tokens(
    ids: np.ndarray,
    rng: np.random.Generator,
    rate: float = 0.15,
    whole_words: bool = True,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> MaskedExample:
    """Mask ``rate`` of the units of ``ids`` (at least one when there is any).

    Each chosen unit is, as a whole, replaced by ``[MASK]`` ids (``mask_fraction``), by random byte
    ids drawn from the 256 byte ids only (``random_fraction``), or left unchanged (the rest).
    Specials are never masked. Deterministic given ``rng``'s state.

    Args:
        ids: [L] int64 token ids.
        rng: numpy generator (seed it per example for reproducible masking).
        rate: fraction of units to mask.
        whole_words: mask whitespace-delimited words; False masks single bytes.
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
