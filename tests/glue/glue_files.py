"""Small GLUE directories written in the original distribution's layout, for loader and training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# header (None: no header), a row builder (text_a, text_b, label, index) -> columns, test header, test row builder
LAYOUTS = {
    "CoLA": (None, lambda a, b, y, i: ["gj04", y, "", a], ["index", "sentence"], lambda a, b, i: [i, a]),
    "SST-2": (["sentence", "label"], lambda a, b, y, i: [a, y], ["index", "sentence"], lambda a, b, i: [i, a]),
    "MRPC": (
        ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        lambda a, b, y, i: [y, "1", "2", a, b],
        ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        lambda a, b, i: [i, "1", "2", a, b],
    ),
    "STS-B": (
        ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
        lambda a, b, y, i: [i, "main-news", "f", "2012", "0", "none", "none", a, b, y],
        ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"],
        lambda a, b, i: [i, "main-news", "f", "2012", "0", "none", "none", a, b],
    ),
    "QQP": (
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        lambda a, b, y, i: [i, "1", "2", a, b, y],
        ["id", "question1", "question2"],
        lambda a, b, i: [i, a, b],
    ),
    "MNLI": (
        [
            "index",
            "promptID",
            "pairID",
            "genre",
            "sentence1_binary_parse",
            "sentence2_binary_parse",
            "sentence1_parse",
            "sentence2_parse",
            "sentence1",
            "sentence2",
            "label1",
            "gold_label",
        ],
        lambda a, b, y, i: [i, "1", "1e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b, y, y],
        [
            "index",
            "promptID",
            "pairID",
            "genre",
            "sentence1_binary_parse",
            "sentence2_binary_parse",
            "sentence1_parse",
            "sentence2_parse",
            "sentence1",
            "sentence2",
        ],
        lambda a, b, i: [i, "1", "1e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b],
    ),
    "QNLI": (
        ["index", "question", "sentence", "label"],
        lambda a, b, y, i: [i, a, b, y],
        ["index", "question", "sentence"],
        lambda a, b, i: [i, a, b],
    ),
    "RTE": (
        ["index", "sentence1", "sentence2", "label"],
        lambda a, b, y, i: [i, a, b, y],
        ["index", "sentence1", "sentence2"],
        lambda a, b, i: [i, a, b],
    ),
    "WNLI": (
        ["index", "sentence1", "sentence2", "label"],
        lambda a, b, y, i: [i, a, b, y],
        ["index", "sentence1", "sentence2"],
        lambda a, b, i: [i, a, b],
    ),
}


def write_file(path: Path, header: list[str] | None, rows: list[list[str]], trailing_newline: bool = True) -> None:
    lines = (["\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""), encoding="utf-8")


def write_task(
    root: Path, directory: str, examples: dict[str, list[tuple[str, str, str]]], tests: dict[str, list[tuple[str, str]]]
) -> None:
    """examples: file stem -> (a, b, label) rows; tests: test file stem -> (a, b) rows."""
    header, row, test_header, test_row = LAYOUTS[directory]
    for stem, items in examples.items():
        write_file(
            root / directory / f"{stem}.tsv",
            header,
            [row(a, b, y, str(i)) for i, (a, b, y) in enumerate(items)],
            trailing_newline=directory != "CoLA",
        )  # CoLA's dev file has no final newline
    for stem, items in tests.items():
        write_file(
            root / directory / f"{stem}.tsv", test_header, [test_row(a, b, str(i)) for i, (a, b) in enumerate(items)]
        )


def same_letter_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """Pairs of letter-run sentences; label "1" when both use the same letter: needs both texts."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = chr(97 + rng.integers(6))
        b = a if rng.random() < 0.5 else chr(97 + (ord(a) - 97 + 1 + rng.integers(5)) % 6)

        def words(c):
            return " ".join(c * int(k) for k in rng.integers(1, 5, rng.integers(2, 5)))

        out.append((words(a), words(b), "1" if a == b else "0"))
    return out


def share_scores(n: int, seed: int) -> list[tuple[str, str, str]]:
    """Pairs whose score in [0, 5] is 5 x the share of "x" words over both texts (STS-B-like regression)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        share = rng.random()
        words = ["xxx" if rng.random() < share else "ooo" for _ in range(8)]
        out.append((" ".join(words[:4]), " ".join(words[4:]), f"{5 * words.count('xxx') / 8:.3f}"))
    return out


def pair_and_regression_tasks(root: Path) -> Path:
    """An MRPC-layout pair task (same letter in both texts?) and an STS-B-layout regression task under ``root``."""

    def tests(rows):
        return {"test": [(a, b) for a, b, _ in rows[:20]]}

    write_task(
        root,
        "MRPC",
        {"train": same_letter_pairs(800, 0), "dev": same_letter_pairs(200, 1)},
        tests(same_letter_pairs(20, 2)),
    )
    write_task(root, "STS-B", {"train": share_scores(800, 0), "dev": share_scores(200, 1)}, tests(share_scores(20, 2)))
    return root
