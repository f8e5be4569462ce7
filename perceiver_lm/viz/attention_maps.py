"""Which input bytes each latent reads: encoder cross-attention maps, per-latent summaries, labels.

`attention_maps` runs a model (masked LM or fine-tuned task model) in eval mode on the explicit
attention path and returns, per text, the encoder maps ``[heads, latents, bytes]`` (softmax weights
before dropout; each row sums to 1 over the text's bytes) and the decoder's attention for one
chosen query. `summarize` describes every (head, latent) row and labels it:

=================  =========================================================================
label              rule (checked in this order; thresholds are the ``*_THRESHOLD`` constants)
=================  =========================================================================
local              spread (weighted std. dev. of position) <= max(LOCAL_MIN_BYTES,
                   LOCAL_FRACTION x length): the latent reads one stretch of the text
class-selective    at least CLASS_MASS of the weight on one byte class (whitespace,
                   punctuation, capitals, digits, non-ASCII) whose share of the bytes, in the
                   whole text and within 2 spreads of the latent's centre, is at most
                   1/CLASS_LIFT of that weight; the text holds >= 3 bytes of the class
periodic           the strongest period p (2 <= p <= length/3) of the weight sequence, with
                   its first four harmonics, carries >= PERIODIC_POWER of the non-constant
                   spectral power
diffuse            normalised entropy >= DIFFUSE_ENTROPY (close to uniform over the text)
mixed              none of the above
=================  =========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.tokenizer import NUM_SPECIAL, SPECIAL_TOKENS, encode, encode_words, pad_batch
from perceiver_lm.validation import shown

LOCAL_MIN_BYTES = 8.0
LOCAL_FRACTION = 0.05
CLASS_MASS = 0.5
CLASS_LIFT = 2.5
PERIODIC_POWER = 0.3
DIFFUSE_ENTROPY = 0.9
KINDS = ("local", "class-selective", "periodic", "diffuse", "mixed")
BYTE_CLASSES = ("whitespace", "punctuation", "capitals", "digits", "non-ascii")
SPECIAL_NAMES = dict(enumerate(SPECIAL_TOKENS))


@dataclass
class AttentionMaps:
    """Attention maps of one text. Axes: heads H, latents N, positions L (one per input id)."""

    text: str
    ids: np.ndarray
    """[L] input ids (byte b has id b + 6; specials below 6)."""
    encoder: np.ndarray
    """[H, N, L] encoder cross-attention: latent n's weights over the input positions, per head."""
    decoder: np.ndarray | None
    """[H, N] the chosen decoder query's weights over latents (MLM position or task query), or None."""
    query: str | None
    """What the decoder query is: "position 12 ('o')" or "task sst2"."""

    @property
    def byte_values(self) -> np.ndarray:
        """[L] byte values, -1 at special ids."""
        return np.where(self.ids >= NUM_SPECIAL, self.ids - NUM_SPECIAL, -1)

    def segments(self) -> list[tuple[str, int, int]]:
        """Display pieces ``(text, first, end)`` over positions: one per character (spanning its
        UTF-8 bytes) or special id, so multi-byte characters show as characters."""
        pieces, position, chars = [], 0, iter(self.text)
        while position < len(self.ids):
            if self.ids[position] < NUM_SPECIAL:
                pieces.append((SPECIAL_NAMES.get(int(self.ids[position]), "?"), position, position + 1))
                position += 1
                continue
            char = next(chars)
            size = len(char.encode("utf-8"))
            pieces.append((char, position, position + size))
            position += size
        return pieces

    def labels(self) -> list[str]:
        """A short label per position: the character at its first byte, "·" on continuation bytes."""
        out = []
        for piece, first, end in self.segments():
            out += [{" ": "␣", "\n": "⏎", "\t": "⇥"}.get(piece, piece)] + ["·"] * (end - first - 1)
        return out


def _model_input(model, text: str, per_word: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The ids a model reads ``text`` as, and for a tagging task each word's first and last bytes: a masked LM was
    trained on raw byte windows, a task model on [CLS] text [SEP], a tagger on the words joined by spaces."""
    if per_word:
        return encode_words(text.split())
    return (encode(text) if hasattr(model, "tasks") else encode(text, add_special_tokens=False)), None


@torch.no_grad()
def attention_maps(
    model, texts: list[str], query: int | str | tuple[str, int] | None = None, batch_size: int = 8, source=None
) -> list[AttentionMaps]:
    """Encoder (and one decoder query's) cross-attention maps for each text.

    Args:
        model: a `PerceiverLM` or `PerceiverClassifier` (put in eval mode here).
        texts: texts of at most the model's window in bytes (plus [CLS]/[SEP] for task models).
        query: for a masked LM, the byte position whose decoder query to show (default: none);
            for a task model, the task name (default: its first task), or (task name, word index) for the
            query of one word of a tagging task (default: word 0).
        batch_size: texts per forward pass.
        source: the checkpoint the model came from, named when its attention is not finite (NaN weights).
    """
    from perceiver_lm.inference import check_finite

    model.eval()
    window = model.config.max_seq_len
    is_task_model = hasattr(model, "tasks")
    word = 0
    if isinstance(query, tuple):
        if not is_task_model:
            raise PerceiverLMError(f"--query {query[0]}:{query[1]}: a masked LM takes a byte position as its query")
        query, word = query
    if is_task_model:
        task_name = query if isinstance(query, str) else model.tasks.tasks[0].name
        task_index = model.tasks.index(task_name)
    elif isinstance(query, str):
        raise PerceiverLMError(f"--query {shown(query)}: a masked LM takes a byte position as its query")
    per_word = is_task_model and model.tasks.tasks[task_index].per_word
    inputs = [_model_input(model, t, per_word) for t in texts]
    encoded = [ids for ids, _ in inputs]
    if per_word:
        for _, reads in inputs:
            if not 0 <= word < len(reads):
                raise PerceiverLMError(f"--query {task_name}:{word}: the text has {len(reads)} word(s) (from 0)")
    for ids in encoded:
        if len(ids) > window:
            raise PerceiverLMError(f"text of {len(ids)} ids is longer than the model's window ({window}); shorten it")
        if len(ids) == 0:
            raise PerceiverLMError("empty text: nothing to attend to")
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = pad_batch(chunk)
        ids = torch.from_numpy(batch.input_ids).to(device)
        mask = torch.from_numpy(batch.attention_mask).to(device)
        if per_word:  # the one word's query
            at = torch.tensor(  # [B, 1, 2]: the word's first and last byte
                [[reads[word].tolist()] for _, reads in inputs[start : start + batch_size]], device=device
            )
            result = model(ids, mask, task=task_index, return_attentions=True, word_positions=at)
            decoder = result.decoder_attention[:, :, 0]  # [B, H, N]
        elif is_task_model:
            result = model(ids, mask, task=task_index, return_attentions=True)
            decoder = result.decoder_attention[:, :, 0]  # [B, H, N]
        else:
            for seq in chunk if query is not None else []:
                if not 0 <= query < len(seq):
                    raise PerceiverLMError(f"--query {query}: position outside the text (0..{len(seq) - 1})")
            # Decode one position only (the asked-for one, else 0): the encoder maps are what matter.
            positions = torch.full((len(chunk), 1), int(query or 0), device=device)
            result = model(ids, mask, query_positions=positions, return_attentions=True)
            decoder = result.decoder_attention[:, :, 0] if query is not None else None
        for row, seq in enumerate(chunk):
            length = len(seq)
            latents = model.encoder.active_latents(length)  # with trim_latents, a short text has fewer
            encoder = result.encoder_attention[row, :, :latents, :length]
            check_finite(model, encoder if decoder is None else decoder[row, :, :latents], source, "map its attention")
            check_finite(model, encoder, source, "map its attention")
            maps = AttentionMaps(
                texts[start + row],
                seq,
                encoder.float().cpu().numpy(),
                None if decoder is None else decoder[row, :, :latents].float().cpu().numpy(),
                None,
            )
            if per_word:
                maps.query = f"task {task_name}, word {word} ({texts[start + row].split()[word]!r})"
            elif is_task_model:
                maps.query = f"task {task_name}"
            elif query is not None:
                maps.query = f"position {query} ({maps.labels()[query]!r})"
            out.append(maps)
    return out


def byte_classes(values: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks [L] of each byte class; special ids (value -1) belong to none."""
    v = values
    punct = np.isin(v, np.frombuffer(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", dtype=np.uint8))
    return {
        "whitespace": np.isin(v, (9, 10, 13, 32)),
        "punctuation": punct,
        "capitals": (v >= 65) & (v <= 90),
        "digits": (v >= 48) & (v <= 57),
        "non-ascii": v >= 128,
    }


@dataclass
class LatentSummary:
    """How one latent (in one head) spreads its attention over a text."""

    head: int
    latent: int
    kind: str
    centre: float  # weighted mean position
    spread: float  # weighted standard deviation of position, in bytes
    entropy: float  # nats
    normalized_entropy: float  # entropy / log(length): 0 = one byte, 1 = uniform
    period: float | None  # dominant period in bytes, when the spectrum has a clear peak
    period_power: float  # share of non-constant spectral power at that period
    class_mass: dict[str, float]  # weight on each byte class
    class_lift: dict[
        str, float
    ]  # class_mass / the class's share of the bytes, globally or near the centre (nan if absent)
    top: list[tuple[int, float]]  # the most-attended positions and their weights
    prefers: str | None = None  # a byte class it over-reads (the class-selective rule), whatever its kind


def dominant_period(w: np.ndarray) -> tuple[float | None, float]:
    """The strongest period (in bytes) of an attention row, and the share of the row's power it holds."""
    length = len(w)
    if length < 6:
        return None, 0.0
    power = np.abs(np.fft.rfft(w - w.mean())) ** 2
    freqs = np.fft.rfftfreq(length)
    usable = (freqs >= 3.0 / length) & (freqs <= 0.5)  # at least 3 cycles over the text, period >= 2
    total = power[1:].sum()
    if not usable.any() or total <= 0:
        return None, 0.0
    # A sharp periodic comb spreads its power over harmonics: score each candidate
    # frequency with its first four harmonics, so the fundamental wins over them.
    index = np.arange(len(power))
    scores = sum(
        np.where(k * index < len(power), power[np.minimum(k * index, len(power) - 1)], 0.0) for k in range(1, 5)
    )
    best = int(np.argmax(np.where(usable, scores, -1.0)))
    return float(1.0 / freqs[best]), float(scores[best] / total)


def summarize_row(
    weights: np.ndarray, classes: dict[str, np.ndarray], head: int = 0, latent: int = 0, top_k: int = 8
) -> LatentSummary:
    """Summarise and label one attention row [L] (non-negative, summing to 1) over a text."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / max(w.sum(), 1e-12)
    length = len(w)
    positions = np.arange(length)
    centre = float((w * positions).sum())
    spread = float(np.sqrt((w * (positions - centre) ** 2).sum()))
    nz = w[w > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    normalized = entropy / np.log(length) if length > 1 else 0.0
    period, period_power = dominant_period(w)
    mass = {name: float(w[m].sum()) for name, m in classes.items()}
    # A latent that reads one stretch full of digits is local, not digit-selective: compare the
    # class's weight with its share of the whole text and of the stretch the latent reads.
    reach = max(2 * spread, LOCAL_MIN_BYTES)
    near = np.abs(positions - centre) <= reach
    share = {name: float(max(m.mean(), m[near].mean() if near.any() else 0.0)) for name, m in classes.items()}
    lift = {name: (mass[name] / share[name] if share[name] > 0 else float("nan")) for name in classes}
    kind = "mixed"
    counts = {name: int(m.sum()) for name, m in classes.items()}
    selective = [
        n for n in classes if share[n] > 0 and counts[n] >= 3 and mass[n] >= CLASS_MASS and lift[n] >= CLASS_LIFT
    ]
    # A local latent can still prefer a class within its stretch (e.g. the "." and newline there).
    preferring = [n for n in classes if share[n] > 0 and mass[n] >= CLASS_MASS and lift[n] >= CLASS_LIFT]
    if spread <= max(LOCAL_MIN_BYTES, LOCAL_FRACTION * length):
        kind = "local"
    elif selective:
        kind = "class-selective"
    elif period is not None and period_power >= PERIODIC_POWER:
        kind = "periodic"
    elif normalized >= DIFFUSE_ENTROPY:
        kind = "diffuse"
    order = np.argsort(-w)[:top_k]
    return LatentSummary(
        head,
        latent,
        kind,
        centre,
        spread,
        entropy,
        float(normalized),
        period,
        period_power,
        mass,
        lift,
        [(int(p), float(w[p])) for p in order],
        max(preferring, key=lambda n: lift[n]) if preferring else None,
    )


def summarize(maps: AttentionMaps, head: int | None = None) -> list[LatentSummary]:
    """Summaries of every (head, latent) row of the encoder maps; ``head`` picks one head, -1 their mean."""
    classes = byte_classes(maps.byte_values)
    encoder = maps.encoder
    if head == -1:
        return [summarize_row(row, classes, -1, n) for n, row in enumerate(encoder.mean(0))]
    heads = range(encoder.shape[0]) if head is None else [head]
    if head is not None and not 0 <= head < encoder.shape[0]:
        raise PerceiverLMError(f"--head {head}: the model has heads 0..{encoder.shape[0] - 1}")
    return [summarize_row(encoder[h, n], classes, h, n) for h in heads for n in range(encoder.shape[1])]


def describe_summary(summary: LatentSummary, labels: list[str]) -> str:
    """One line: which latent, its kind and numbers, and the bytes it reads most."""
    head = "mean" if summary.head == -1 else str(summary.head)
    extra = ""
    if summary.kind == "periodic":
        extra = f", period {summary.period:.1f} bytes ({summary.period_power:.0%} of power)"
    if summary.prefers:
        name = summary.prefers
        extra += f", {summary.class_mass[name]:.0%} on {name} ({summary.class_lift[name]:.1f}x their share)"
    reads = " ".join(f"{labels[p]!s}@{p}:{w:.2f}" for p, w in summary.top[:6])
    return (
        f"head {head:>4} latent {summary.latent:>4}  {summary.kind:<15} centre {summary.centre:7.1f}  "
        f"spread {summary.spread:6.1f}  entropy {summary.normalized_entropy:.2f}{extra}\n      reads: {reads}"
    )
