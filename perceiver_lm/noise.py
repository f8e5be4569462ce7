"""Deterministic text noise for robustness evaluation: the noise kinds of ByT5 (Xue et al. 2022,
"Robustness to noise") - drop, add, mutate, repeat, uppercase, random case and antspeak.

A byte-level model is claimed to cope with misspellings and odd casing better than a subword one;
these corruptions let an evaluation measure that. They work on Unicode characters (code points), never
on bytes, so a corrupted text is still valid UTF-8 and a non-Latin script is damaged the way a typist
would damage it, not by splitting a character's bytes.

Every corruption is a pure function of (text, noise, seed): the random stream comes from
``numpy.random.default_rng`` seeded with the seed and a CRC-32 of the kind's name (Python's ``hash()``
is salted per process, so it would give another corruption on every run). The draws are made for every
character whatever the rate, and a character is hit when its uniform draw is below the rate, so with one
seed a higher rate hits a superset of the characters a lower rate hits.
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from perceiver_lm.errors import PerceiverLMError, clipped
from perceiver_lm.validation import NUMBER_TEXT

NOISE_KINDS: dict[str, str] = {
    "drop": "each character is deleted with probability RATE",
    "add": "a random character is inserted after each character with probability RATE",
    "mutate": "each character is replaced by a random different character with probability RATE",
    "repeat": "each character is followed by 1-3 copies of itself with probability RATE",
    "uppercase": "each character is upper-cased with probability RATE",
    "random_case": "each character gets a random case (upper or lower, 50/50) with probability RATE",
    "antspeak": "each non-space character is upper-cased and set off by spaces with probability RATE",
}

# Used for add/mutate when the text itself offers fewer than two characters to choose from.
FALLBACK_ALPHABET = "abcdefghijklmnopqrstuvwxyz"

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Noise:
    """One corruption: a kind from ``NOISE_KINDS`` applied at a rate in [0, 1]."""

    kind: str
    rate: float

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise PerceiverLMError(
                f"--noise {self.kind}: unknown noise kind (expected one of: {', '.join(NOISE_KINDS)})"
            )
        # bool is a Real too, but True as a rate is surely a mistake.
        if not isinstance(self.rate, numbers.Real) or isinstance(self.rate, bool):
            raise PerceiverLMError(f"--noise {self.kind}: rate must be a number from 0 to 1, got {self.rate!r}")
        rate = float(self.rate)
        if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
            raise PerceiverLMError(f"--noise {self.kind}:{rate}: rate must be a finite number from 0 to 1")
        object.__setattr__(self, "rate", rate)

    def __str__(self) -> str:
        return f"{self.kind}:{self.rate:g}"


def parse_noise(spec: str, option: str = "--noise") -> Noise:
    """Parse a ``--noise`` value of the form KIND:RATE, e.g. ``drop:0.1`` (``option`` names it in errors).

    RATE is written in ASCII (digits, a point, an exponent), as every number option takes it: ``drop:０.５``
    (full-width digits, which Python's float() would take) is refused like ``--lr ０.５`` is.
    """
    shown = clipped(" ".join(spec.split()))  # the message stays on one line, and short, whatever was typed
    kind, colon, rate_text = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in NOISE_KINDS:
        raise PerceiverLMError(
            f"{option} {shown}: unknown noise kind {clipped(repr(kind))} (expected KIND:RATE with KIND one of: "
            f"{', '.join(NOISE_KINDS)})"
        )
    if not colon or not rate_text.strip():
        raise PerceiverLMError(f"{option} {shown}: the rate is missing (expected KIND:RATE, e.g. {kind}:0.1)")
    if not NUMBER_TEXT.fullmatch(rate_text.strip()):
        raise PerceiverLMError(
            f"{option} {shown}: rate {clipped(repr(rate_text.strip()))} is not a number in ASCII digits 0-9 "
            f"(expected KIND:RATE, e.g. {kind}:0.1)"
        )
    rate = float(rate_text)
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):  # named as typed: 1e999 is no "inf" to the user
        raise PerceiverLMError(f"{option} {shown}: rate must be a finite number from 0 to 1")
    return Noise(kind, rate)


def apply_noise(text: str, noise: Noise, seed: int) -> str:
    """``text`` corrupted by one noise; the same (text, noise, seed) always gives the same result."""
    return _corrupt(text, noise, _rng(seed, noise.kind, 0))


def apply_all(text: str, noises: Sequence[Noise], seed: int) -> str:
    """``text`` corrupted by each noise in turn, each from its own random stream."""
    seen: dict[str, int] = {}
    for noise in noises:
        # A kind listed twice gets a fresh stream the second time, else its draws would repeat;
        # the first of each kind uses apply_noise's stream, so one noise here equals apply_noise.
        occurrence = seen.get(noise.kind, 0)
        seen[noise.kind] = occurrence + 1
        text = _corrupt(text, noise, _rng(seed, noise.kind, occurrence))
    return text


def example_seed(seed: int, index: int) -> int:
    """The seed example ``index`` of a dataset is corrupted with: a function of (seed, index) only."""
    words = _words(seed) + _words(index)
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def noisy_texts(texts: Sequence[str], noises: Sequence[Noise], seed: int) -> list[str]:
    """Each text corrupted by ``noises`` with its own ``example_seed(seed, i)``, so the corruption of an
    example does not depend on the batch it is in or on the examples around it."""
    return [apply_all(text, noises, example_seed(seed, i)) for i, text in enumerate(texts)]


def _words(value: int) -> list[int]:
    # Fixed-width 32-bit words: SeedSequence packs a big int into as many words as it needs, so
    # [a, b] and [c] could otherwise give the same entropy. Seeds are taken modulo 2**64.
    value = int(value) & _MASK64
    return [value & 0xFFFFFFFF, value >> 32]


def _rng(seed: int, kind: str, occurrence: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence(_words(seed) + _words(zlib.crc32(kind.encode())) + _words(occurrence))
    )


def _codes(text: str) -> np.ndarray:
    # surrogatepass: a lone surrogate (already invalid UTF-8) passes through instead of raising.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _text(codes: np.ndarray) -> str:
    return codes.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


def _alphabet(text: str) -> np.ndarray:
    """The code points add/mutate draw from, sorted: the text's own non-whitespace characters."""
    own = sorted({c for c in text if not c.isspace()})
    return _codes("".join(own) if len(own) >= 2 else FALLBACK_ALPHABET)


def _corrupt(text: str, noise: Noise, rng: np.random.Generator) -> str:
    n = len(text)
    if n == 0:
        return text
    hit = rng.random(n) < noise.rate
    kind = noise.kind
    if kind == "drop":
        return _text(_codes(text)[~hit])
    if kind == "add":
        alphabet = _alphabet(text)
        added = alphabet[rng.integers(0, len(alphabet), n)]
        # Column 0 is each character, column 1 what may follow it; row-major order interleaves them.
        pairs = np.stack([_codes(text), added], axis=1)
        keep = np.stack([np.ones(n, dtype=bool), hit], axis=1)
        return _text(pairs[keep])
    if kind == "mutate":
        codes = _codes(text)
        alphabet = _alphabet(text)
        where = np.searchsorted(alphabet, codes).clip(max=len(alphabet) - 1)
        own = alphabet[where] == codes
        # Draw among the other characters: skip over the original's slot so the choice is uniform.
        pick = rng.integers(0, len(alphabet) - own)
        pick += own & (pick >= where)
        return _text(np.where(hit, alphabet[pick], codes))
    if kind == "repeat":
        copies = rng.integers(1, 4, n)
        return _text(np.repeat(_codes(text), 1 + hit * copies))
    if kind == "uppercase":
        return "".join(c.upper() if h else c for c, h in zip(text, hit.tolist(), strict=True))
    if kind == "random_case":
        upper = (rng.random(n) < 0.5).tolist()
        return "".join(
            (c.upper() if u else c.lower()) if h else c for c, h, u in zip(text, hit.tolist(), upper, strict=True)
        )
    if kind == "antspeak":
        return _antspeak(text, hit)
    raise AssertionError(f"unhandled noise kind {kind}")  # Noise validates kinds; a new one needs a branch


def _antspeak(text: str, hit: np.ndarray) -> str:
    """Upper-case the hit non-whitespace characters and put one space on each side of them.

    Two neighbours share the space between them, and whitespace is never hit itself (spacing out a
    space only widens a gap), so the rate is the share of non-whitespace characters affected and at rate 1
    every non-whitespace character is upper-cased and separated: "an owl" -> " A N   O W L ".
    """
    chosen = hit & ~np.fromiter((c.isspace() for c in text), dtype=bool, count=len(text))
    # Boundary b lies before character b (b = n: after the last); it gets a space if it touches a chosen one.
    edges = np.concatenate(([False], chosen, [False]))
    pad = (edges[:-1] | edges[1:]).tolist()
    out = []
    # pad has one more entry than text: the boundary after the last character, handled below.
    for c, chose, space in zip(text, chosen.tolist(), pad, strict=False):
        if space:
            out.append(" ")
        out.append(c.upper() if chose else c)
    if pad[-1]:
        out.append(" ")
    return "".join(out)
