"""Using trained models from Python: filling masked bytes, labelling texts, tagging words."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perceiver_lm.errors import PerceiverLMError, clipped
from perceiver_lm.model import PerceiverClassifier, PerceiverLM
from perceiver_lm.tokenizer import (
    MASK_ID,
    NUM_SPECIAL,
    bytes_to_ids,
    decode_bytes,
    encode_example,
    encode_words,
    pad_batch,
    pad_word_positions,
)

MASK_MARK = re.compile(rb"\[MASK(?:\*(\d+))?\]")


@dataclass(frozen=True)
class FillMaskResult:
    """The filled text, the masked byte positions and the top-k candidate bytes at each."""

    text: str
    positions: list[int]
    candidates: list[list[tuple[bytes, float]]]


def parse_masked_text(text: str, max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Turn text with ``[MASK]`` (one byte) or ``[MASK*N]`` (N bytes) marks into ids and mask positions.

    With ``max_length``, a text that would be longer is refused before anything of its size is allocated.
    """
    raw = text.encode("utf-8", errors="surrogateescape")
    pieces, positions, length, cursor = [], [], 0, 0
    for match in MASK_MARK.finditer(raw):
        before = bytes_to_ids(raw[cursor : match.start()])
        digits = match.group(1) or b"1"
        if len(digits.lstrip(b"0")) > 12:  # no window is that long; int() of thousands of digits would fail
            window = "" if max_length is None else f" ({max_length})"
            raise PerceiverLMError(
                f"mask mark [MASK*{clipped(digits.decode())}] covers more bytes than any text can hold, longer than "
                f"the model's window{window}"
            )
        count = int(digits)
        if count == 0:
            raise PerceiverLMError(f"mask mark {match.group(0).decode()} must cover at least one byte")
        if max_length is not None and length + len(before) + count > max_length:
            raise PerceiverLMError(
                f"text is at least {length + len(before) + count:,} bytes with its masks, longer than the model's "
                f"window ({max_length})"
            )
        pieces += [before, np.full(count, MASK_ID, dtype=np.int64)]
        positions.extend(range(length + len(before), length + len(before) + count))
        length += len(before) + count
        cursor = match.end()
    pieces.append(bytes_to_ids(raw[cursor:]))
    if not positions:
        raise PerceiverLMError("text has no [MASK] or [MASK*N] marks to fill")
    return np.concatenate(pieces), np.array(positions, dtype=np.int64)


def nonfinite_weight(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer of ``model`` holding a NaN or an infinity; None if none does."""
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_finite(model: torch.nn.Module, output: torch.Tensor, source: str | Path | None, what: str) -> None:
    """Refuse (one line naming ``source``, the checkpoint) an ``output`` of ``model`` holding NaN or infinities:
    anything read from it (a byte, a latent's bytes) would be noise. Names the broken weight when one is."""
    if bool(torch.isfinite(output).all()):
        return
    where = "" if source is None else f"{source}: "
    name = nonfinite_weight(model)
    if name is not None:
        raise PerceiverLMError(
            f"{where}weight {name} holds NaN or infinite values (a diverged or corrupt checkpoint); cannot {what}"
        )
    raise PerceiverLMError(
        f"{where}the model's output is NaN or infinite on this text (its weights overflow); cannot {what}"
    )


@torch.no_grad()
def fill_mask(model: PerceiverLM, text: str, top_k: int = 3, source: str | Path | None = None) -> FillMaskResult:
    """Predict every masked byte of ``text`` at once and return the argmax filling.

    Args:
        model: a trained model (put in eval mode here).
        text: text with ``[MASK]`` / ``[MASK*N]`` marks.
        top_k: candidates to report per masked byte.
        source: the checkpoint the model came from, named when its output is not finite (NaN weights).
    """
    if not 1 <= top_k <= 256:
        raise PerceiverLMError(f"--top-k must be in 1..256 (the byte values), got {top_k}")
    ids, positions = parse_masked_text(text, model.config.max_seq_len)
    if len(ids) > model.config.max_seq_len:
        raise PerceiverLMError(f"text is {len(ids)} bytes, longer than the model's window ({model.config.max_seq_len})")
    model.eval()
    device = next(model.parameters()).device
    input_ids = torch.from_numpy(ids)[None].to(device)
    query = torch.from_numpy(positions)[None].to(device)
    logits = model(input_ids, query_positions=query).logits[0].float()  # [Q, vocab]
    check_finite(model, logits[:, NUM_SPECIAL:], source, "fill masks")
    logits[:, :NUM_SPECIAL] = float("-inf")  # only bytes can fill a byte slot
    probs = logits.softmax(-1)
    top = probs.topk(top_k, dim=-1)
    filled = ids.copy()
    filled[positions] = top.indices[:, 0].cpu().numpy()
    candidates = [
        [(bytes([i - NUM_SPECIAL]), p) for i, p in zip(row_i.tolist(), row_p.tolist(), strict=True)]
        for row_i, row_p in zip(top.indices.cpu(), top.values.cpu(), strict=True)
    ]
    return FillMaskResult(decode_bytes(filled).decode("utf-8", errors="replace"), positions.tolist(), candidates)


def _task(model: PerceiverClassifier, task: str | None, per_word: bool) -> int:
    """The index of ``task`` (default: the model's only task of that output kind)."""
    if task is not None:
        index = model.tasks.index(task)
        if model.tasks.tasks[index].per_word != per_word:
            wanted = "tags words (use tag)" if not per_word else "labels texts (use classify)"
            raise PerceiverLMError(f"task {task} {wanted}")
        return index
    fitting = [i for i, t in enumerate(model.tasks.tasks) if t.per_word == per_word]
    if len(fitting) != 1:
        names = ", ".join(model.tasks.tasks[i].name for i in fitting) or "none"
        raise PerceiverLMError(f"name the task: the model has {len(fitting)} of this kind ({names})")
    return fitting[0]


def _label_names(model: PerceiverClassifier, index: int) -> list[str] | None:
    """A task's label names as the model keeps them (tasks of your own), else None (GLUE's: class ids)."""
    about = model.tasks.tasks[index].about or {}
    return list(about.get("labels") or []) or None


@torch.no_grad()
def classify(
    model: PerceiverClassifier,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    task: str | None = None,
    batch_size: int = 32,
) -> list[str | float]:
    """The label name (a score for regression; a class id as text for a GLUE task) of each text (or text pair),
    read as the model was fine-tuned to read (its ``max_length``, in windows)."""
    index = _task(model, task, per_word=False)
    spec = model.tasks.tasks[index]
    length = model.tasks.max_length or model.config.max_seq_len
    names = _label_names(model, index)
    model.eval()
    device = next(model.parameters()).device
    out: list[str | float] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        second = [None] * len(chunk) if pairs is None else pairs[start : start + batch_size]
        batch = pad_batch([encode_example(a, b, length) for a, b in zip(chunk, second, strict=True)])
        ids, mask = torch.from_numpy(batch.input_ids).to(device), torch.from_numpy(batch.attention_mask).to(device)
        logits = model(ids, mask, task=index).logits.float()  # [B, C]
        if spec.num_outputs == 1 and names is None:  # a score
            out += logits[:, 0].tolist()
        else:
            out += [names[i] if names else str(i) for i in logits.argmax(-1).tolist()]
    return out


@torch.no_grad()
def tag(
    model: PerceiverClassifier, sentences: Sequence[Sequence[str]], task: str | None = None, batch_size: int = 32
) -> list[list[str]]:
    """A tag name for every word of each sentence (a list of words), from a model with a tagging task."""
    index = _task(model, task, per_word=True)
    names = _label_names(model, index)
    model.eval()
    device = next(model.parameters()).device
    out: list[list[str]] = []
    for start in range(0, len(sentences), batch_size):
        encoded = [encode_words(words) for words in sentences[start : start + batch_size]]
        if any(len(reads) == 0 for _, reads in encoded):
            raise PerceiverLMError("a sentence to tag has no words")
        batch = pad_batch([ids for ids, _ in encoded])
        reads = torch.from_numpy(pad_word_positions([at for _, at in encoded]))  # [B, Q, 2]: first, last byte
        ids, mask = torch.from_numpy(batch.input_ids).to(device), torch.from_numpy(batch.attention_mask).to(device)
        best = model(ids, mask, task=index, word_positions=reads.to(device)).logits.argmax(-1).tolist()  # [B, Q]
        out += [
            [names[t] if names else str(t) for t in row[: len(at)]] for row, (_, at) in zip(best, encoded, strict=True)
        ]
    return out
