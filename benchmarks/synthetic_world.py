"""A synthetic language whose word classes can be learnt only from unlabelled text, and its entropy.

A world has ``classes`` word classes, each spelt ``spellings`` ways (random lowercase strings, unique
across the lexicon). A sentence follows a sparse Markov chain over classes (each class has ``successors``
possible next classes) and spells every word by a uniform draw among its class's spellings. Two polarities
own ``sentiment_classes`` classes each. A labelled sentence is filler (uniform words of the other classes)
with one sentiment word inserted; training sentences use the first ``seen_spellings`` spellings of each
sentiment class, dev sentences only the others. Nothing in the labelled data says which class an unseen
spelling belongs to: only what a model learnt from the corpus can.

The world is a pure function of its options (seeded), so two calls build the same files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


@dataclass(frozen=True)
class WorldOptions:
    """The shape of a synthetic world; the defaults are the world of issue 31."""

    classes: int = 40
    """Word classes."""
    spellings: int = 12
    """Spellings per class."""
    min_letters: int = 4
    """Shortest spelling."""
    max_letters: int = 7
    """Longest spelling."""
    successors: int = 3
    """Classes that may follow each class (drawn at random, without the class itself)."""
    min_words: int = 8
    """Shortest sentence, in words."""
    max_words: int = 16
    """Longest sentence, in words."""
    corpus_bytes: int = 6_000_000
    """Size of the unlabelled corpus (one sentence a line)."""
    sentiment_classes: int = 2
    """Classes per polarity (positive, negative)."""
    seen_spellings: int = 4
    """Spellings of each sentiment class used in training sentences; dev uses the rest."""
    train_sentences: int = 600
    """Labelled training sentences."""
    dev_sentences: int = 1000
    """Labelled dev sentences (unseen spellings only)."""
    seed: int = 0
    """Seed of the lexicon, the chain and every sentence."""

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.successors < self.classes:
            problems.append(f"successors must be in [1, classes), got {self.successors}")
        if not 1 <= self.min_letters <= self.max_letters:
            problems.append(f"need 1 <= min_letters <= max_letters, got {self.min_letters}, {self.max_letters}")
        if not 1 <= self.min_words <= self.max_words:
            problems.append(f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if not 1 <= 2 * self.sentiment_classes < self.classes:
            problems.append("2 * sentiment_classes must be below classes (filler needs classes of its own)")
        if not 1 <= self.seen_spellings < self.spellings:
            problems.append(f"seen_spellings must be in [1, spellings), got {self.seen_spellings}")
        words = sum(26**n for n in range(self.min_letters, self.max_letters + 1))
        if self.classes * self.spellings > words // 4:
            problems.append(f"{self.classes * self.spellings} spellings do not fit {words} strings of those lengths")
        if problems:
            raise ValueError("world options: " + "; ".join(problems))


class World:
    """The lexicon and the chain of one `WorldOptions`; sentences are drawn from a generator."""

    def __init__(self, options: WorldOptions) -> None:
        self.options = o = options
        rng = np.random.default_rng(o.seed)
        seen: set[str] = set()
        self.lexicon: list[list[str]] = []  # [class][spelling]
        for _ in range(o.classes):
            words = []
            while len(words) < o.spellings:
                n = int(rng.integers(o.min_letters, o.max_letters + 1))
                word = LETTERS[rng.integers(0, 26, n)].tobytes().decode()
                if word not in seen:
                    seen.add(word)
                    words.append(word)
            self.lexicon.append(words)
        self.successors = np.stack(
            [rng.choice(np.delete(np.arange(o.classes), c), o.successors, replace=False) for c in range(o.classes)]
        )  # [classes, successors]
        k = o.sentiment_classes
        self.positive = list(range(k))
        self.negative = list(range(k, 2 * k))
        self.filler = list(range(2 * k, o.classes))

    # --- sentences -------------------------------------------------------------------------------------------
    def corpus_sentence(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Classes and spelling indices of one corpus sentence."""
        o = self.options
        n = int(rng.integers(o.min_words, o.max_words + 1))
        classes = [int(rng.integers(o.classes))]
        for _ in range(n - 1):
            classes.append(int(self.successors[classes[-1], rng.integers(o.successors)]))
        return classes, [int(s) for s in rng.integers(0, o.spellings, n)]

    def spell(self, classes: list[int], spellings: list[int]) -> str:
        return " ".join(self.lexicon[c][s] for c, s in zip(classes, spellings, strict=True))

    def corpus(self) -> str:
        """The unlabelled corpus: sentences one a line until ``corpus_bytes``."""
        rng = np.random.default_rng([self.options.seed, 1])
        lines, size = [], 0
        while size < self.options.corpus_bytes:
            lines.append(self.spell(*self.corpus_sentence(rng)))
            size += len(lines[-1]) + 1
        return "\n".join(lines) + "\n"

    def labelled(self, count: int, seen: bool, stream: int) -> list[dict[str, str]]:
        """``count`` labelled sentences: uniform filler words and one sentiment word of a seen or unseen spelling."""
        o = self.options
        rng = np.random.default_rng([o.seed, stream])
        spellings = range(o.seen_spellings) if seen else range(o.seen_spellings, o.spellings)
        rows = []
        for i in range(count):
            n = int(rng.integers(o.min_words, o.max_words + 1))
            words = [self.lexicon[int(rng.choice(self.filler))][int(rng.integers(o.spellings))] for _ in range(n - 1)]
            positive = i % 2 == 0  # balanced
            sentiment = int(rng.choice(self.positive if positive else self.negative))
            words.insert(int(rng.integers(n)), self.lexicon[sentiment][int(rng.choice(list(spellings)))])
            rows.append({"text": " ".join(words), "label": "positive" if positive else "negative"})
        order = rng.permutation(count)
        return [rows[i] for i in order]

    def write(self, folder: str | Path) -> dict[str, Path]:
        """corpus.txt, train.jsonl, dev.jsonl and world.json (the options and the entropy) in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {name: folder / name for name in ("corpus.txt", "train.jsonl", "dev.jsonl", "world.json")}
        paths["corpus.txt"].write_text(self.corpus())
        for name, count, seen, stream in (
            ("train.jsonl", self.options.train_sentences, True, 2),
            ("dev.jsonl", self.options.dev_sentences, False, 3),
        ):
            rows = self.labelled(count, seen, stream)
            paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths["world.json"].write_text(json.dumps({"options": asdict(self.options), **self.entropy()}, indent=1))
        return paths

    # --- entropy ---------------------------------------------------------------------------------------------
    def entropy(self, sentences: int = 4000) -> dict[str, float]:
        """What the best possible model scores, on ``sentences`` corpus sentences drawn afresh.

        ``bits_per_byte``: exact information content of the text per byte (a left-to-right model that knows the
        world). ``mlm_floor_bits_per_masked_byte``: the loss of an ideal masked-byte predictor when one word is
        replaced by [MASK] bytes and the rest of its sentence is visible (neighbour classes and the word's length
        known; each byte predicted on its own from the posterior over spellings). Masking more words at once only
        adds uncertainty, so a model trained with 15 % whole-word masking cannot go below it on average.
        ``letters_at_random``: log2(26), the plateau of a model that knows only which bytes are letters.
        """
        o = self.options
        rng = np.random.default_rng([o.seed, 4])
        log2 = math.log2
        follows = np.zeros((o.classes, o.classes), dtype=bool)  # follows[a, b]: b may come after a
        follows[np.arange(o.classes)[:, None], self.successors] = True
        lengths = np.array([[len(w) for w in row] for row in self.lexicon])  # [classes, spellings]
        info_bits = info_bytes = 0.0
        mlm_bits = mlm_bytes = 0.0
        for _ in range(sentences):
            classes, spellings = self.corpus_sentence(rng)
            n = len(classes)
            info_bits += log2(o.max_words - o.min_words + 1) + log2(o.classes)
            info_bits += (n - 1) * log2(o.successors) + n * log2(o.spellings)
            info_bytes += (
                sum(int(lengths[c, s]) for c, s in zip(classes, spellings, strict=True)) + n
            )  # spaces and the newline
            for i, (c, s) in enumerate(zip(classes, spellings, strict=True)):
                length = int(lengths[c, s])
                prior = np.ones(o.classes)
                if i > 0:
                    prior = prior * follows[classes[i - 1]]
                if i + 1 < n:
                    prior = prior * follows[:, classes[i + 1]]
                weight = prior[:, None] * (lengths == length)  # [classes, spellings]
                candidates = np.argwhere(weight > 0)
                p = weight[candidates[:, 0], candidates[:, 1]]
                p = p / p.sum()
                word = self.lexicon[c][s]
                for j in range(length):
                    same = [self.lexicon[k][t][j] == word[j] for k, t in candidates]
                    mlm_bits -= log2(float(p[same].sum()))
                mlm_bytes += length
        return {
            "bits_per_byte": info_bits / info_bytes,
            "mlm_floor_bits_per_masked_byte": mlm_bits / mlm_bytes,
            "letters_at_random": log2(26),
        }
