"""Byte-level tokenizer with the 262-id vocabulary of the public Perceiver IO language model.

Ids 0..5 are specials; byte ``b`` has id ``b + 6``. Everything is vectorised with numpy: no Python
loop runs per byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from perceiver_lm.errors import PerceiverLMError

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
MASK_ID = 3
CLS_ID = 4
SEP_ID = 5
NUM_SPECIAL = 6
VOCAB_SIZE = 256 + NUM_SPECIAL
SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]")


@dataclass(frozen=True)
class BatchEncoding:
    """A padded batch: ``input_ids`` and ``attention_mask`` are ``[B, L]`` int64 arrays."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


def bytes_to_ids(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Map raw bytes (or a uint8 array) to token ids, without special tokens."""
    array = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    return array.astype(np.int64) + NUM_SPECIAL


def encode(text: str | bytes, add_special_tokens: bool = True) -> np.ndarray:
    """Encode one text as ``[CLS] bytes [SEP]`` (or bare byte ids)."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    ids = bytes_to_ids(raw)
    if not add_special_tokens:
        return ids
    return np.concatenate(([CLS_ID], ids, [SEP_ID])).astype(np.int64)


def encode_pair(first: str | bytes, second: str | bytes, max_length: int | None = None) -> np.ndarray:
    """Encode a sentence pair as ``[CLS] a [SEP] b [SEP]``.

    With ``max_length``, bytes are cut from the end of the longer text first (one byte at a time,
    as BERT's "longest first"), so that both texts keep as much as they can.
    """
    a = encode(first, add_special_tokens=False)
    b = encode(second, add_special_tokens=False)
    if max_length is not None:
        budget = max_length - 3
        if budget < 0:
            raise PerceiverLMError(f"max_length must be at least 3 for a pair, got {max_length}")
        if len(a) + len(b) > budget:
            short = min(len(a), len(b), budget // 2)
            keep_a = short if len(a) <= len(b) else budget - short
            a, b = a[:keep_a], b[: budget - keep_a]
    return np.concatenate(([CLS_ID], a, [SEP_ID], b, [SEP_ID])).astype(np.int64)


def bucket_length(length: int) -> int:
    """``length`` rounded up to one of a few sizes: a multiple of a quarter of the power of two below it (at
    least 16). Four sizes per doubling, at most 25 % padding: a compiled model sees few shapes."""
    step = max(16, 1 << max(0, length.bit_length() - 3))
    return -(-length // step) * step


def pad_batch(sequences: Sequence[np.ndarray], max_length: int | None = None, bucketed: bool = False) -> BatchEncoding:
    """Right-pad id sequences with ``[PAD]``, truncating to ``max_length``.

    Truncation keeps the first ``max_length - 1`` ids and the final id, so a sequence that ends in
    ``[SEP]`` still does after truncation. ``bucketed`` pads to `bucket_length` of the longest sequence.
    """
    if max_length is not None and max_length < 2:
        raise PerceiverLMError(f"max_length must be at least 2, got {max_length}")
    trimmed = []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        if max_length is not None and len(seq) > max_length:
            seq = np.concatenate((seq[: max_length - 1], seq[-1:]))
        trimmed.append(seq)
    length = max((len(s) for s in trimmed), default=0)
    if bucketed and length:
        length = bucket_length(length)
    ids = np.full((len(trimmed), length), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(trimmed), length), dtype=np.int64)
    for row, seq in enumerate(trimmed):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return BatchEncoding(input_ids=ids, attention_mask=mask)


def encode_batch(
    texts: Sequence[str | bytes],
    pairs: Sequence[str | bytes] | None = None,
    max_length: int | None = None,
    add_special_tokens: bool = True,
) -> BatchEncoding:
    """Encode texts (or text pairs) into a padded, truncated batch with an attention mask.

    Args:
        texts: first segments.
        pairs: optional second segments, one per text.
        max_length: truncate every sequence to this many ids (specials included).
        add_special_tokens: wrap in ``[CLS] ... [SEP]``; ignored for pairs, which always have them.
    """
    if pairs is not None:
        if len(pairs) != len(texts):
            raise PerceiverLMError(f"got {len(texts)} texts but {len(pairs)} pair texts")
        seqs = [encode_pair(a, b) for a, b in zip(texts, pairs, strict=True)]
    else:
        seqs = [encode(t, add_special_tokens) for t in texts]
    return pad_batch(seqs, max_length)


def decode_bytes(ids: np.ndarray | Sequence[int]) -> bytes:
    """Turn ids back into raw bytes, dropping special tokens."""
    ids = np.asarray(ids, dtype=np.int64)
    ids = ids[ids >= NUM_SPECIAL]
    return (ids - NUM_SPECIAL).astype(np.uint8).tobytes()


def decode(ids: np.ndarray | Sequence[int]) -> str:
    """Decode ids to text; specials are dropped and broken UTF-8 becomes U+FFFD."""
    return decode_bytes(ids).decode("utf-8", errors="replace")


def encode_words(words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``[CLS] w1 w2 ... [SEP]`` (the words joined by one space) and each word's first and last byte positions
    [words, 2], where a tagger reads the word."""
    pieces, ends, at = [], [], 1
    for word in words:
        data = word.encode("utf-8")
        ends.append((at, at + len(data) - 1))
        pieces.append(data)
        at += len(data) + 1
    ids = np.concatenate(([CLS_ID], bytes_to_ids(b" ".join(pieces)), [SEP_ID])).astype(np.int64)
    return ids, np.asarray(ends, dtype=np.int64).reshape(-1, 2)


def encode_example(a: str, b: str | None, max_length: int) -> np.ndarray:
    """``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, at most ``max_length`` ids (as fine-tuning reads a text)."""
    if b is None:
        ids = encode(a)
        return ids if len(ids) <= max_length else np.concatenate((ids[: max_length - 1], [SEP_ID]))
    return encode_pair(a, b, max_length)


def pad_word_positions(reads: Sequence[np.ndarray]) -> np.ndarray:
    """Word positions of a batch ([words] or [words, 2] each, `encode_words`) padded with 0 to [B, Q(, 2)]."""
    out = np.zeros((len(reads), max(len(r) for r in reads), *reads[0].shape[1:]), dtype=np.int64)
    for row, at in enumerate(reads):
        out[row, : len(at)] = at
    return out
