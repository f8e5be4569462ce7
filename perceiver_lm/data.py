"""Pretraining data: byte corpora (files, globs, folders, Hugging Face datasets), windows, masking.

A corpus is a virtual stream of documents, each followed by one ``[SEP]`` id. Local files are
memory-mapped and read a window at a time with vectorised gathers, so corpora larger than memory
work and no Python runs per byte.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.masking import mask_tokens
from perceiver_lm.tokenizer import NUM_SPECIAL, SEP_ID

WIKIEXTRACTOR_HEADER = b"<doc "
WIKIEXTRACTOR_FOOTER = b"</doc>"
SCAN_CHUNK = 1 << 26


@dataclass(frozen=True)
class ByteCorpus:
    """Documents as spans of byte buffers, read as one stream with ``[SEP]`` after each document.

    ``spans`` is [D, 3] int64: (buffer index, start, end) of each document.
    """

    buffers: tuple[np.ndarray, ...]
    spans: np.ndarray
    name: str = "corpus"

    @property
    def doc_lengths(self) -> np.ndarray:
        return self.spans[:, 2] - self.spans[:, 1] + 1  # +1 for the [SEP] after each document

    @property
    def doc_starts(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.doc_lengths)[:-1])).astype(np.int64)

    def __len__(self) -> int:
        return int(self.doc_lengths.sum())

    def read(self, start: int, length: int, doc_starts: np.ndarray | None = None) -> np.ndarray:
        """Token ids [length] of the stream from ``start`` (must lie inside the stream)."""
        doc_starts = self.doc_starts if doc_starts is None else doc_starts
        positions = np.arange(start, start + length, dtype=np.int64)
        doc = np.searchsorted(doc_starts, positions, side="right") - 1
        offset = positions - doc_starts[doc]
        buffer_index, begin, end = self.spans[doc].T
        is_sep = begin + offset >= end
        ids = np.full(length, SEP_ID, dtype=np.int64)
        for b in np.unique(buffer_index[~is_sep]):
            take = (~is_sep) & (buffer_index == b)
            ids[take] = self.buffers[b][begin[take] + offset[take]].astype(np.int64) + NUM_SPECIAL
        return ids


@dataclass(frozen=True)
class CorpusRange:
    """A contiguous part ``[start, stop)`` of a corpus stream (train or validation)."""

    corpus: ByteCorpus
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def _expand_paths(specs: Sequence[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for spec in specs:
        spec = str(spec)
        path = Path(spec)
        if path.is_dir() and path.resolve() == Path(path.resolve().anchor):
            raise PerceiverLMError(
                f"--data {spec}: the filesystem root is not a corpus; give the folder or files of your text"
            )
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts)
            )
            if not found:
                raise PerceiverLMError(f"--data {spec}: folder holds no files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(spec):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not found:
                raise PerceiverLMError(f"--data {spec}: pattern matches no files")
            files.extend(found)
        else:
            raise PerceiverLMError(f"--data {spec}: no such file or folder")
    return files


def _line_starts_with(buffer: np.ndarray, line_starts: np.ndarray, prefix: bytes) -> np.ndarray:
    starts = line_starts[line_starts + len(prefix) <= len(buffer)]
    hit = np.ones(len(starts), dtype=bool)
    for i, byte in enumerate(prefix):
        hit &= buffer[starts + i] == byte
    return starts[hit]


def wikiextractor_spans(buffer: np.ndarray) -> np.ndarray | None:
    """Document spans [D, 2] of a wikiextractor file (``<doc ...>`` ... ``</doc>``), else None.

    The markup lines themselves are left out: they are not text, and would be ~10 % of enwiki.
    """
    if bytes(buffer[: len(WIKIEXTRACTOR_HEADER)]) != WIKIEXTRACTOR_HEADER:
        return None
    headers, footers = [], []
    for chunk_start in range(0, len(buffer), SCAN_CHUNK):
        chunk = buffer[chunk_start : chunk_start + SCAN_CHUNK]
        line_starts = np.flatnonzero(chunk == ord("\n")) + 1 + chunk_start
        if chunk_start == 0:
            line_starts = np.concatenate(([0], line_starts))
        headers.append(_line_starts_with(buffer, line_starts, WIKIEXTRACTOR_HEADER))
        footers.append(_line_starts_with(buffer, line_starts, WIKIEXTRACTOR_FOOTER))
    header_starts, footer_starts = np.concatenate(headers), np.concatenate(footers)
    if len(header_starts) != len(footer_starts) or np.any(footer_starts < header_starts):
        return None
    try:
        content_starts = np.array(
            [h + bytes(buffer[h : h + 65536]).index(b"\n") + 1 for h in header_starts.tolist()], dtype=np.int64
        )
    except ValueError:  # a header line without an end: not wikiextractor output after all
        return None
    return np.stack([content_starts, footer_starts], axis=1).astype(np.int64)


def _utf8_note(path: Path, buffer: np.ndarray) -> None:
    head = bytes(buffer[: 1 << 20])
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut at the 1 MiB boundary
            print(
                f"note: {path} is not valid UTF-8 (byte {err.start}); training on its raw bytes anyway, "
                "and text shown from it will use U+FFFD for the broken sequences",
                file=sys.stderr,
            )


def load_files(specs: Sequence[str | os.PathLike]) -> ByteCorpus:
    """Memory-map text files, globs and folders into a corpus (one document per file, or per
    ``<doc>`` for wikiextractor output)."""
    buffers, spans = [], []
    for path in _expand_paths(specs):
        if path.stat().st_size == 0:
            continue
        try:
            buffer = np.memmap(path, dtype=np.uint8, mode="r")
        except OSError as err:
            raise PerceiverLMError(f"--data {path}: cannot read ({err.strerror or err})") from None
        _utf8_note(path, buffer)
        docs = wikiextractor_spans(buffer)
        if docs is None:
            docs = np.array([[0, len(buffer)]], dtype=np.int64)
        index = len(buffers)
        buffers.append(buffer)
        spans.append(np.column_stack([np.full(len(docs), index, dtype=np.int64), docs]))
    if not buffers:
        raise PerceiverLMError(f"--data {', '.join(map(str, specs))}: corpus is empty (all files have 0 bytes)")
    name = str(specs[0]) if len(specs) == 1 else f"{len(specs)} paths"
    return ByteCorpus(tuple(buffers), np.concatenate(spans), name)


def corpus_from_texts(texts: Iterator[str] | Sequence[str], name: str, errors: str = "strict") -> ByteCorpus:
    """Build an in-memory corpus from texts, one document each (``errors``: how str.encode treats lone surrogates)."""
    encoded = [t.encode("utf-8", errors) for t in texts if t]
    if not encoded:
        raise PerceiverLMError(f"{name}: corpus is empty")
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    ends = np.cumsum(lengths)
    buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    spans = np.column_stack([np.zeros(len(ends), dtype=np.int64), ends - lengths, ends])
    return ByteCorpus((buffer,), spans, name)


def builtin_corpus() -> ByteCorpus:
    """English prose that ships with every CPython: the ~470 KB of Python documentation topics."""
    from pydoc_data.topics import topics

    return corpus_from_texts((topics[k] for k in sorted(topics)), "builtin:pydoc-topics")


def load_hf_texts(name: str, config: str | None, split: str, text_column: str, streaming: bool):
    """An iterable of texts from a Hugging Face dataset, with one-line errors when it cannot load."""
    try:
        import datasets
    except ImportError:
        raise PerceiverLMError("--dataset needs the 'datasets' package (pip install datasets)") from None
    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError, ...)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = " (the Hub is unreachable or offline mode is on: use --data with local files)" if offline else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PerceiverLMError(f"--dataset {name}: cannot load split {split!r}{hint}: {first}") from None
    columns = dataset.column_names
    if columns is not None and text_column not in columns:
        raise PerceiverLMError(
            f"--dataset {name}: no column {text_column!r} (columns: {', '.join(columns)}); set --text-column"
        )
    return (row[text_column] for row in dataset)


def load_corpus(options: Any, default: Callable[[], ByteCorpus] | None = None) -> ByteCorpus:
    """The text an options dataclass names: ``--dataset`` (a Hugging Face dataset), ``--data`` (files), or
    ``default`` (None: one of them is required)."""
    if options.dataset:
        texts = load_hf_texts(
            options.dataset, options.dataset_config, options.dataset_split, options.text_column, False
        )
        return corpus_from_texts(texts, f"--dataset {options.dataset}")
    if options.data:
        return load_files(options.data)
    if default is None:
        raise PerceiverLMError("give the text to score: --data FILES or --dataset NAME")
    return default()


def spread(n: int, count: int) -> list[int]:
    """At most ``count`` of the indices ``0..n-1``, spread evenly from the first to the last."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int)).tolist()


def split_corpus(
    corpus: ByteCorpus, window: int, val_fraction: float, min_val_windows: int = 8
) -> tuple[CorpusRange, CorpusRange]:
    """Carve a held-out validation range from the end of the stream."""
    total = len(corpus)
    val = max(int(total * val_fraction), min_val_windows * window)
    if total - val < window:
        val = max(window, total - window)
    if total < 2 * window:
        raise PerceiverLMError(
            f"{corpus.name}: corpus has {total} bytes, fewer than two {window}-byte windows "
            "(one to train on, one to validate); add data or use a smaller --window"
        )
    return CorpusRange(corpus, 0, total - val), CorpusRange(corpus, total - val, total)


@dataclass(frozen=True)
class MaskingOptions:
    rate: float = 0.15
    whole_words: bool = True


def collate_masked(examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    width = max(1, max(len(e["positions"]) for e in examples))
    batch = len(examples)
    positions = np.zeros((batch, width), dtype=np.int64)
    labels = np.full((batch, width), -100, dtype=np.int64)
    for row, example in enumerate(examples):
        positions[row, : len(example["positions"])] = example["positions"]
        labels[row, : len(example["labels"])] = example["labels"]
    return {
        "input_ids": torch.from_numpy(np.stack([e["input_ids"] for e in examples])),
        "query_positions": torch.from_numpy(positions),
        "labels": torch.from_numpy(labels),
    }


class MaskedWindows(Dataset):
    """Fixed-length windows of a corpus range, masked deterministically from (seed, epoch, index).

    Each epoch shifts the window grid by a seeded offset and visits windows in a seeded order, so
    a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(
        self, part: CorpusRange, window: int, masking: MaskingOptions, seed: int, shuffle: bool = True
    ) -> None:
        if len(part) < window:
            raise PerceiverLMError(f"{part.corpus.name}: {len(part)} bytes is less than one {window}-byte window")
        self.part, self.window, self.masking, self.seed, self.shuffle = part, window, masking, seed, shuffle
        self._doc_starts = part.corpus.doc_starts
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch, 0])
        shifting = self.shuffle and len(self.part) >= 2 * self.window
        self.shift = int(rng.integers(self.window)) if shifting else 0
        # The same number of windows whatever the shift, so a step maps to the same (epoch, batch) on resume.
        count = (len(self.part) - (self.window - 1 if shifting else 0)) // self.window
        self.order = rng.permutation(count) if self.shuffle else np.arange(count)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        window_index = int(self.order[index])
        start = self.part.start + self.shift + window_index * self.window
        ids = self.part.corpus.read(start, self.window, self._doc_starts)
        rng = np.random.default_rng([self.seed, self.epoch, window_index, 1])
        masked = mask_tokens(ids, rng, self.masking.rate, self.masking.whole_words)
        return {"input_ids": masked.input_ids, "positions": masked.positions, "labels": masked.labels}


class StreamingWindows(IterableDataset):
    """Windows cut from a stream of texts (e.g. a streaming Hugging Face dataset), masked on the fly.

    The first ``skip_windows`` windows are skipped (they are held out for validation). With several
    processes (``rank`` of ``world``) and DataLoader workers, window i of the stream goes to one
    (process, worker) shard, and only whole rounds are kept (one window for every shard), so that
    every process gets the same number of windows and none waits for another at the stream's end.
    Each process reads the stream itself: no process feeds the others.
    """

    def __init__(
        self,
        texts_factory,
        window: int,
        masking: MaskingOptions,
        seed: int,
        skip_windows: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.texts_factory, self.window, self.masking, self.seed = texts_factory, window, masking, seed
        self.skip, self.rank, self.world = skip_windows, rank, world

    def windows(self) -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        size = 0
        for text in self.texts_factory():
            raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + NUM_SPECIAL
            pending.append(np.append(raw, SEP_ID))
            size += len(raw) + 1
            while size >= self.window:
                joined = np.concatenate(pending)
                yield joined[: self.window]
                rest = joined[self.window :]
                pending, size = [rest], len(rest)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        worker = torch.utils.data.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        shards, shard = self.world * workers, self.rank * workers + worker_id
        mine = None
        for index, ids in enumerate(self.windows()):
            if index < self.skip:
                continue
            turn = (index - self.skip) % shards
            if turn == shard:
                mine = (index, ids)
            if turn == shards - 1:  # the round is complete: every shard has its window
                yield self._masked(*mine)

    def _masked(self, index: int, ids: np.ndarray) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index, 1])
        masked = mask_tokens(ids, rng, self.masking.rate, self.masking.whole_words)
        return {"input_ids": masked.input_ids, "positions": masked.positions, "labels": masked.labels}
