"""Held-out scoring of a masked byte LM: bits per masked byte and accuracy, overall and per byte class.

The masks are a pure function of ``--seed`` and the text, so two checkpoints scored with the same
options are compared on the same masked bytes, and scoring one checkpoint twice gives the same
numbers. Noise (``--noise KIND:RATE``) corrupts the text before masking: the model is then scored
on predicting the noisy bytes, which measures how well it copes with text unlike its training data.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from perceiver_lm.data import (
    ByteCorpus,
    CorpusRange,
    MaskedWindows,
    MaskingOptions,
    collate_masked,
    corpus_from_texts,
    load_corpus,
    spread,
)
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.masking import maskable
from perceiver_lm.noise import Noise, noisy_texts, parse_noise
from perceiver_lm.options import EvalOptions
from perceiver_lm.tokenizer import NUM_SPECIAL

LN2 = math.log(2.0)
# What a masked byte is; "special" is the [SEP] between documents.
BYTE_CLASSES = ("letters", "digits", "whitespace", "punctuation", "non-ascii", "control", "special")


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the masked positions only (labels -100 are padding)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction=reduction)


def _class_of_id() -> torch.Tensor:
    """[vocab] class index of each token id."""
    byte = np.arange(256)
    ascii_class = np.select(
        [
            np.isin(byte, [9, 10, 11, 12, 13, 32]),
            ((byte >= 65) & (byte <= 90)) | ((byte >= 97) & (byte <= 122)),
            (byte >= 48) & (byte <= 57),
            (byte > 32) & (byte < 127),
            byte >= 128,
        ],
        [2, 0, 1, 3, 4],
        default=5,
    )
    return torch.from_numpy(np.concatenate([np.full(NUM_SPECIAL, 6), ascii_class]))


@torch.no_grad()
def masked_byte_stats(model: torch.nn.Module, loader: DataLoader, accelerator: Any) -> torch.Tensor:
    """[classes, 3] sums over the loader and all processes: loss (nats), correct predictions, masked bytes."""
    was_training = model.training
    model.eval()
    table = _class_of_id().to(accelerator.device)
    totals = torch.zeros(len(BYTE_CLASSES), 3, dtype=torch.float64)
    for batch in loader:
        logits = model(batch["input_ids"], query_positions=batch["query_positions"]).logits
        labels = batch["labels"]
        valid = labels != -100
        loss = masked_lm_loss(logits, labels, reduction="none").view(labels.shape)  # [B, Q]
        correct = (logits.argmax(-1) == labels) & valid
        member = F.one_hot(table[labels.clamp(min=0)], len(BYTE_CLASSES)) * valid[..., None]  # [B, Q, C]
        stats = torch.stack(
            [(member * loss[..., None]).sum(1), (member * correct[..., None]).sum(1), member.sum(1)], dim=-1
        ).float()  # [B, C, 3]
        totals += accelerator.gather_for_metrics(stats).sum(0).double().cpu()
    model.train(was_training)
    return totals


VALIDATION_SOURCE = "the validation windows (--val-data, or the end of --data)"


def no_byte_to_score(
    source: str, whole_words: bool = True, noise: list[str] | tuple[str, ...] = ()
) -> PerceiverLMError:
    """The error for a score that would be averaged over zero masked bytes, naming the text (``source``)."""
    what = "no maskable word (whitespace only?)" if whole_words else "no byte"
    after = f" after --noise {' '.join(noise)}" if noise else ""
    return PerceiverLMError(f"{source}: no byte to score: the text{after} has {what}")


def count_maskable(examples: Any, whole_words: bool) -> int:
    """How many bytes of masked examples (dicts of `MaskedWindows`) masking could have chosen.

    The original bytes are the corrupted ``input_ids`` with the ``labels`` put back at the masked positions.
    """
    total = 0
    for index in range(len(examples)):
        example = examples[index]
        ids = example["input_ids"].copy()
        ids[example["positions"]] = example["labels"]
        total += int(np.count_nonzero(maskable(ids, whole_words)))
    return total


def require_scorable(examples: Any, whole_words: bool, source: str, noise: list[str] | tuple[str, ...] = ()) -> int:
    """`count_maskable`, refusing (`no_byte_to_score`) examples that hold no maskable byte: every score
    of them would be an average over zero masked bytes. Call it before training or scoring starts."""
    count = count_maskable(examples, whole_words)
    if count == 0:
        raise no_byte_to_score(source, whole_words, noise)
    return count


def summarize(totals: torch.Tensor, source: str = VALIDATION_SOURCE) -> dict[str, Any]:
    """Bits per masked byte, accuracy and counts from `masked_byte_stats`, overall and per class.

    Zero masked bytes is an error naming ``source`` (the scored text), not a score of 0 bits.
    """

    def numbers(loss: float, correct: float, count: float) -> dict[str, float]:
        return {"bits_per_byte": loss / count / LN2, "accuracy": correct / count, "loss": loss / count}

    overall = totals.sum(0).tolist()
    if overall[2] <= 0:
        raise no_byte_to_score(source)
    classes = {
        name: {**numbers(*row), "masked_bytes": int(row[2])}
        for name, row in zip(BYTE_CLASSES, totals.tolist(), strict=True)
        if row[2] > 0
    }
    return {**numbers(*overall), "masked_bytes": int(overall[2]), "classes": classes}


def noisy_corpus(corpus: ByteCorpus, noises: list[Noise], seed: int, source: str | None = None) -> ByteCorpus:
    """The corpus with every line corrupted by ``noises`` (line i of the whole corpus draws from (seed, i));
    noise that leaves no text at all is an error naming ``source`` (default: the corpus's name)."""
    # Bytes that are not UTF-8 pass through unchanged (surrogateescape) instead of being replaced.
    docs = [
        bytes(corpus.buffers[buffer_index][start:end]).decode("utf-8", "surrogateescape").split("\n")
        for buffer_index, start, end in corpus.spans.tolist()
    ]
    noisy = iter(noisy_texts([line for lines in docs for line in lines], noises, seed))
    rebuilt = ["\n".join(next(noisy) for _ in lines) for lines in docs]
    if not any(rebuilt):
        shown = " ".join(map(str, noises))
        raise PerceiverLMError(f"{source or corpus.name}: no byte to score: --noise {shown} leaves no text")
    return corpus_from_texts(rebuilt, f"{corpus.name} ({', '.join(map(str, noises))})", errors="surrogateescape")


@dataclass
class TextScore:
    """What `score_text` returns: the numbers and what they were measured on."""

    checkpoint: str
    step: int | None
    text: str
    window: int
    windows: int
    windows_total: int
    mask_unit: str
    mask_rate: float
    maskable_bytes: int  # bytes of the scored windows masking could choose
    effective_mask_rate: float  # masked bytes / maskable bytes: what was scored, whatever --mask-rate asked
    seed: int
    noise: list[str]
    precision: str
    metrics: dict[str, Any]
    main_process: bool = True

    def table(self) -> str:
        """The report as a plain-text table."""
        m = self.metrics
        lines = [
            f"{self.checkpoint}{'' if self.step is None else f' (step {self.step})'} on {self.text}",
            f"{self.windows} of {self.windows_total} windows of {self.window} bytes; {self.mask_unit} masking at "
            f"{self.mask_rate:g}, seed {self.seed}; {self.precision}",
            f"effective mask rate {self.effective_mask_rate:.4f} ({m['masked_bytes']:,} masked of "
            f"{self.maskable_bytes:,} maskable bytes)",
            "",
            f"{'bytes':<12} {'masked':>9} {'bits/byte':>10} {'accuracy':>9}",
            f"{'all':<12} {m['masked_bytes']:>9,} {m['bits_per_byte']:>10.4f} {m['accuracy']:>9.4f}",
        ]
        for name, c in m["classes"].items():
            lines.append(f"{name:<12} {c['masked_bytes']:>9,} {c['bits_per_byte']:>10.4f} {c['accuracy']:>9.4f}")
        return "\n".join(lines)


def score_text(checkpoint: str | Path, options: EvalOptions, accelerator: Any = None) -> TextScore:
    """Bits per masked byte and masked-byte accuracy of a pretrained checkpoint on held-out text.

    Args:
        checkpoint: an MLM checkpoint folder, or a run folder (its newest checkpoint).
        options: the text, masking, noise and batch options.
        accelerator: the Accelerator to score with; default: a new one (several processes share the windows).
    """
    from perceiver_lm import checkpoint as ckpt
    from perceiver_lm.model import PerceiverLM
    from perceiver_lm.runtime import use_accelerator

    noises = [parse_noise(spec) for spec in options.noise]
    directory = ckpt.resolve_model_dir(checkpoint)
    model = PerceiverLM.from_pretrained(directory)
    step = ckpt.read_trainer_state(directory)["step"] if (directory / ckpt.STATE_FILE).is_file() else None
    source = f"--dataset {options.dataset}" if options.dataset else f"--data {' '.join(map(str, options.data))}"
    corpus = load_corpus(options)
    if noises:
        corpus = noisy_corpus(corpus, noises, options.seed, source)
    trained = ckpt.pretrained_window(directory, model.config)
    window = min(options.window or trained or model.config.max_seq_len, len(corpus))
    if trained is not None and window > trained:
        print(f"note: --window {window} reads positions past the {trained} bytes this model was pretrained on "
              "(they never trained)", file=sys.stderr)  # fmt: skip
    if window > model.config.max_seq_len:
        raise PerceiverLMError(f"--window {window} is longer than the model's max_seq_len ({model.config.max_seq_len})")
    masking = MaskingOptions(options.mask_rate, options.mask_unit == "word")
    windows = MaskedWindows(CorpusRange(corpus, 0, len(corpus)), window, masking, options.seed, shuffle=False)
    count = len(windows) if not options.max_windows else min(options.max_windows, len(windows))
    picks = spread(len(windows), count)
    scored = Subset(windows, picks)
    maskable_bytes = require_scorable(scored, masking.whole_words, source, [str(n) for n in noises])
    accelerator, precision = use_accelerator(accelerator, options.mixed_precision, options.cpu, compile=options.compile)
    loader = DataLoader(scored, batch_size=options.batch_size, collate_fn=collate_masked)
    model, loader = accelerator.prepare(model, loader)
    accelerator.print(f"scoring {len(picks)} windows of {window} bytes from {corpus.name}", file=sys.stderr)
    metrics = summarize(masked_byte_stats(model, loader, accelerator), source)
    return TextScore(
        checkpoint=str(directory),
        step=step,
        text=corpus.name,
        window=window,
        windows=len(picks),
        windows_total=len(windows),
        mask_unit=options.mask_unit,
        mask_rate=options.mask_rate,
        maskable_bytes=maskable_bytes,
        effective_mask_rate=metrics["masked_bytes"] / maskable_bytes,
        seed=options.seed,
        noise=[str(n) for n in noises],
        precision=precision,
        metrics=metrics,
        main_process=accelerator.is_main_process,
    )
