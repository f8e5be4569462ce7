import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.noise import (
    FALLBACK_ALPHABET,
    NOISE_KINDS,
    Noise,
    apply_all,
    apply_noise,
    example_seed,
    noisy_texts,
    parse_noise,
)

MIXED = "Straße naïve café, 中文字 and an owl 🦉 (e\u0301 combines)\ttabs\nnew line"


def _words(seed: int, count: int, letters: str = "abcdefghijklmnopqrstuvwxyz") -> str:
    rng = np.random.default_rng(seed)
    return " ".join("".join(rng.choice(list(letters), rng.integers(1, 9))) for _ in range(count))


# ~20k characters of lowercase words with non-ASCII characters mixed in.
LONG = _words(0, 2500, "abcdefghijklmnopqrstuvwxyzéü中文字🦉")[:20_000]


def _is_subsequence(short: str, long: str) -> bool:
    rest = iter(long)
    return all(c in rest for c in short)


@pytest.mark.parametrize("kind", list(NOISE_KINDS))
def test_rate_zero_leaves_text_unchanged(kind):
    for seed in range(3):
        assert apply_noise(MIXED, Noise(kind, 0.0), seed) == MIXED
    assert apply_noise("", Noise(kind, 1.0), 0) == ""


@pytest.mark.parametrize("kind", list(NOISE_KINDS))
def test_deterministic_and_seed_dependent(kind):
    noise = Noise(kind, 0.3)
    first = apply_noise(LONG, noise, 7)
    assert first == apply_noise(LONG, noise, 7)
    assert first != LONG
    assert first != apply_noise(LONG, noise, 8)


@pytest.mark.parametrize("kind", list(NOISE_KINDS))
@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_output_is_valid_utf8_text(kind, rate):
    for text in (MIXED, LONG[:2000], "🦉", "中文"):
        out = apply_noise(text, Noise(kind, rate), 3)
        assert out.encode("utf-8").decode("utf-8") == out  # raises on a lone surrogate
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in out)


def test_same_corruption_in_a_fresh_process_with_another_hash_seed():
    noises = [Noise(kind, 0.4) for kind in NOISE_KINDS]
    script = (
        "import json, sys; from perceiver_lm.noise import Noise, apply_noise; "
        "text = sys.stdin.read(); "
        f"print(json.dumps([apply_noise(text, Noise(k, 0.4), 11) for k in {list(NOISE_KINDS)!r}]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], input=MIXED, capture_output=True, text=True, env=env, cwd=REPO, check=True
    )
    assert json.loads(done.stdout) == [apply_noise(MIXED, noise, 11) for noise in noises]


def test_pinned_outputs():
    # Fixed values: a change in the seed derivation or numpy's streams shows up here, not in a result table.
    text = "an owl, 中文 café"
    got = {kind: apply_noise(text, Noise(kind, 0.5), 0) for kind in NOISE_KINDS}
    assert got == {
        "drop": "awl, 文cé",
        "add": "anw oawl,, o中l文, fc中awfé",
        "mutate": "aoéoalc né lc中a",
        "repeat": "aann  owl,, 中文  caffé",
        "uppercase": "aN oWL, 中文 Café",
        "random_case": "an owl, 中文 cAfé",
        "antspeak": "an  O W l ,   中 文  C a F é",
    }


def test_drop_removes_rate_of_characters_and_keeps_order():
    out = apply_noise(LONG, Noise("drop", 0.1), 0)
    assert abs((len(LONG) - len(out)) / len(LONG) - 0.1) < 0.01
    assert _is_subsequence(out, LONG)
    assert apply_noise(LONG, Noise("drop", 1.0), 0) == ""


def test_add_inserts_rate_of_characters_from_the_texts_alphabet():
    out = apply_noise(LONG, Noise("add", 0.1), 0)
    assert abs((len(out) - len(LONG)) / len(LONG) - 0.1) < 0.01
    assert _is_subsequence(LONG, out)
    assert set(out) <= set(LONG)  # the script stays itself: nothing from outside the text
    # After every character of "xy" at rate 1 comes one drawn from {x, y}.
    out = apply_noise("xy", Noise("add", 1.0), 0)
    assert len(out) == 4 and out[0] == "x" and out[2] == "y" and set(out) <= {"x", "y"}


def test_add_never_inserts_whitespace():
    text = "ab cd\tef\ngh " * 50
    out = apply_noise(text, Noise("add", 1.0), 1)
    assert sum(c.isspace() for c in out) == sum(c.isspace() for c in text)


def test_mutate_changes_rate_of_positions_to_other_characters():
    out = apply_noise(LONG, Noise("mutate", 0.1), 0)
    assert len(out) == len(LONG)
    changed = sum(a != b for a, b in zip(LONG, out, strict=True))
    assert abs(changed / len(LONG) - 0.1) < 0.01
    assert set(out) <= set(LONG)
    # At rate 1 every character is replaced, and never by itself.
    out = apply_noise(LONG, Noise("mutate", 1.0), 0)
    assert all(a != b for a, b in zip(LONG, out, strict=True))
    assert apply_noise("ab" * 100, Noise("mutate", 1.0), 0) == "ba" * 100


def test_mutate_falls_back_to_ascii_letters_for_a_one_character_alphabet():
    for text in ("aaaaaaaa", "中 中 中", "   "):
        out = apply_noise(text, Noise("mutate", 1.0), 2)
        assert len(out) == len(text)
        assert set(out) <= set(FALLBACK_ALPHABET)
        assert all(a != b for a, b in zip(text, out, strict=True))


def test_higher_rate_hits_a_superset_of_a_lower_ones_positions():
    low = apply_noise(LONG, Noise("mutate", 0.1), 4)
    high = apply_noise(LONG, Noise("mutate", 0.2), 4)
    changed_low = [i for i, (a, b) in enumerate(zip(LONG, low, strict=True)) if a != b]
    assert changed_low and all(high[i] == low[i] for i in changed_low)


def test_repeat_selects_rate_of_characters_and_adds_one_to_three_copies():
    # No two neighbours alike, so each run of the output is exactly one input character.
    text = "".join(c for c, _ in itertools.groupby(LONG))
    out = apply_noise(text, Noise("repeat", 0.2), 0)
    runs = [(c, len(list(group))) for c, group in itertools.groupby(out)]
    assert "".join(c for c, _ in runs) == text
    copies = np.array([n - 1 for _, n in runs])
    assert copies.max() == 3
    assert abs((copies > 0).mean() - 0.2) < 0.01
    assert abs((len(out) - len(text)) / len(text) - 0.2 * 2) < 0.03
    shares = np.bincount(copies[copies > 0], minlength=4)[1:] / (copies > 0).sum()
    assert np.allclose(shares, 1 / 3, atol=0.03)


def test_uppercase_rate_one_is_str_upper_and_lower_rates_hit_that_share_of_letters():
    assert apply_noise(MIXED, Noise("uppercase", 1.0), 0) == MIXED.upper()  # "ß" becomes "SS" as in str.upper
    text = _words(1, 4000)
    out = apply_noise(text, Noise("uppercase", 0.3), 0)
    assert out.lower() == text
    letters = [c for c in out if c.isalpha()]
    assert abs(sum(c.isupper() for c in letters) / len(letters) - 0.3) < 0.01


def test_random_case_gives_each_hit_letter_a_fair_coin_case():
    for source in (_words(2, 4000), _words(2, 4000).upper()):
        out = apply_noise(source, Noise("random_case", 1.0), 0)
        assert out.lower() == source.lower()
        letters = [c for c in out if c.isalpha()]
        assert abs(sum(c.isupper() for c in letters) / len(letters) - 0.5) < 0.01
    # At rate 0.4 on lowercase text, 40% are hit and half of those come out upper-case.
    out = apply_noise(_words(2, 4000), Noise("random_case", 0.4), 0)
    letters = [c for c in out if c.isalpha()]
    assert abs(sum(c.isupper() for c in letters) / len(letters) - 0.2) < 0.01


def test_antspeak_exact_at_rate_one():
    def ant(text):
        return apply_noise(text, Noise("antspeak", 1.0), 0)

    assert ant("an owl") == " A N   O W L "
    assert ant("owl!") == " O W L ! "
    assert ant("a  b") == " A    B "  # whitespace is kept, not spaced out itself
    assert ant("中文 🦉") == " 中 文   🦉 "
    assert ant(" ") == " "


def test_antspeak_hits_rate_of_non_space_characters_with_shared_single_spaces():
    text = _words(3, 4000)
    out = apply_noise(text, Noise("antspeak", 0.3), 0)
    assert "".join(out.split()).lower() == "".join(text.split())
    # Lowercase input: the upper-case letters of the output are exactly the chosen ones.
    chosen = iter([c.isupper() for c in out if not c.isspace()])
    hit = np.array([not c.isspace() and next(chosen) for c in text])
    assert abs(hit.sum() / sum(not c.isspace() for c in text) - 0.3) < 0.01
    edges = np.concatenate(([False], hit, [False]))
    assert len(out) - len(text) == (edges[:-1] | edges[1:]).sum()  # one space per boundary touching a hit
    for i, c in enumerate(out):
        if c.isupper():
            assert out[i - 1] == " " and out[i + 1] == " "


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("drop:0.1", Noise("drop", 0.1)),
        ("uppercase:1", Noise("uppercase", 1.0)),
        ("antspeak:0", Noise("antspeak", 0.0)),
        (" Random_Case : 5e-1 ", Noise("random_case", 0.5)),
    ],
)
def test_parse_noise_accepts_kind_colon_rate(spec, expected):
    got = parse_noise(spec)
    assert got == expected and isinstance(got.rate, float)
    assert parse_noise(str(got)) == got


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("blur:0.1", "unknown noise kind 'blur'"),
        ("drop:1.5", "from 0 to 1"),
        ("drop:-0.1", "from 0 to 1"),
        ("drop:nan", "finite number from 0 to 1"),
        ("drop:inf", "finite number from 0 to 1"),
        ("drop:x", "rate 'x' is not a number"),
        ("drop", "the rate is missing"),
        ("drop:", "the rate is missing"),
        ("", "unknown noise kind"),
    ],
)
def test_parse_noise_rejects_bad_specs_with_one_line_naming_the_option(spec, fragment):
    with pytest.raises(PerceiverLMError) as err:
        parse_noise(spec)
    message = str(err.value)
    assert message.startswith("--noise") and "\n" not in message
    assert fragment in message
    if "unknown" in fragment:
        assert all(kind in message for kind in NOISE_KINDS)


@pytest.mark.parametrize("kind, rate", [("blur", 0.1), ("drop", 2), ("drop", True), ("drop", "0.1"), ("drop", None)])
def test_noise_validates_its_fields(kind, rate):
    with pytest.raises(PerceiverLMError, match="^--noise"):
        Noise(kind, rate)


def test_apply_all_applies_in_order_each_kind_from_its_own_stream():
    noises = [Noise("uppercase", 1.0), Noise("drop", 0.5)]
    assert apply_all(MIXED, noises, 5) == apply_noise(apply_noise(MIXED, noises[0], 5), noises[1], 5)
    assert apply_all(MIXED, noises[1:], 5) == apply_noise(MIXED, noises[1], 5)
    assert apply_all(MIXED, [], 5) == MIXED
    # A kind given twice draws afresh the second time: 1 - 0.9 * 0.9 = 19% dropped in all.
    out = apply_all(LONG, [Noise("drop", 0.1), Noise("drop", 0.1)], 0)
    assert abs((len(LONG) - len(out)) / len(LONG) - 0.19) < 0.01


def test_noisy_texts_depend_only_on_seed_index_and_text():
    noises = [Noise("mutate", 0.3), Noise("repeat", 0.2)]
    texts = ["the first sentence", "a second one", MIXED, "the first sentence"]
    out = noisy_texts(texts, noises, 9)
    assert out == noisy_texts(texts, noises, 9)
    for i, text in enumerate(texts):
        assert out[i] == apply_all(text, noises, example_seed(9, i))
    # Other examples changed, added or removed around it leave example 2 as it was.
    assert noisy_texts(["x", "something else", MIXED], noises, 9)[2] == out[2]
    assert noisy_texts(texts[:3], noises, 9) == out[:3]
    assert out[0] != out[3]  # the same text at another index gets its own corruption
    assert noisy_texts(texts, noises, 10) != out
    assert len({example_seed(9, i) for i in range(1000)}) == 1000
