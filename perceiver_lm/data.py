"""Pretraining data: byte corpora (files, globs, folders, Hugging Face datasets), windows, masking.

A corpus is a virtual stream of documents, each followed by one ``[SEP]`` id. Local files are read a
window at a time (``pread``, a few descriptors cached), so corpora larger than memory work, a corpus
of 100,000 files stays under the usual descriptor limit, and a file changed under a run is an error
naming it (a memory map would end the process with SIGBUS).
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import sys
import threading
from collections import OrderedDict
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

    buffers: tuple[Buffer, ...]  # in-memory bytes, or files read a slice at a time
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

    @property
    def file_paths(self) -> list[Path]:
        """The files the corpus reads (none for text held in memory)."""
        return [b.path for b in self.buffers if isinstance(b, FileBytes)]

    def read(self, start: int, length: int, doc_starts: np.ndarray | None = None) -> np.ndarray:
        """Token ids [length] of the stream from ``start`` (must lie inside the stream)."""
        doc_starts = self.doc_starts if doc_starts is None else doc_starts
        ids = np.full(length, SEP_ID, dtype=np.int64)
        first = int(np.searchsorted(doc_starts, start, side="right")) - 1
        last = int(np.searchsorted(doc_starts, start + length - 1, side="right")) - 1
        for doc in range(first, last + 1):  # a window is contiguous: one slice of each document it touches
            buffer_index, begin, end = (int(x) for x in self.spans[doc])
            lo = max(start, int(doc_starts[doc]))  # stream positions of this document's text in the window
            hi = min(start + length, int(doc_starts[doc]) + end - begin)
            if hi > lo:
                offset = begin + lo - int(doc_starts[doc])
                ids[lo - start : hi - start] = self.document_bytes(buffer_index, offset, offset + hi - lo)
                ids[lo - start : hi - start] += NUM_SPECIAL
        return ids

    def document_bytes(self, buffer_index: int, start: int, stop: int) -> np.ndarray:
        """Bytes ``[start, stop)`` of one buffer (uint8)."""
        return _slice(self.buffers[buffer_index], start, stop)


@dataclass(frozen=True)
class CorpusRange:
    """A contiguous part ``[start, stop)`` of a corpus stream (train or validation)."""

    corpus: ByteCorpus
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def file_kind(path: Path) -> str | None:
    """What a path that exists but is no regular file is ("a character device", "a FIFO", ...), else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    for test, kind in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return None


def shown_path(path: str | os.PathLike) -> str:
    """A path as text that every file and terminal can hold: bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _listed(spec: str, path: Path, option: str) -> list[Path]:
    """The regular files a folder or glob holds, each real file once (symlink loops and aliases collapse)."""
    if path.is_dir():
        found = sorted(p for p in _walk(path, option) if not any(x.startswith(".") for x in p.relative_to(path).parts))
        if not found:
            raise PerceiverLMError(f"{option} {shown_path(spec)}: folder holds no files")
        return found
    found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not found:
        raise PerceiverLMError(f"{option} {shown_path(spec)}: pattern matches no files")
    return found


def _walk(folder: Path, option: str) -> Iterator[Path]:
    """Regular files under ``folder``, following links to folders but entering each real folder once; a device,
    FIFO or socket there (or a link to one) is refused by name rather than skipped."""
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs.sort()
        for name in files:
            path = Path(root) / name
            if path.is_file():
                yield path
            elif (kind := file_kind(path)) is not None:
                raise PerceiverLMError(f"{option} {shown_path(path)}: is {kind}, not a regular file")


def expand_paths(
    specs: Sequence[str | os.PathLike], option: str = "--data", exclude: Path | None = None, quiet: bool = False
) -> list[Path]:
    """The files that files, folders and globs name, in order, each real file once.

    A file reached twice (given twice, through a link, or a glob through a symlink loop) is read once, with a
    note (unless ``quiet``). ``exclude`` (a run's output folder) must hold none of them: a run never trains on its
    own outputs.
    """
    files: list[Path] = []
    seen: dict[tuple[int, int], Path] = {}
    repeats = 0
    for spec in specs:
        spec = os.fspath(spec)
        path = Path(spec)
        if path.is_dir() and path.resolve() == Path(path.resolve().anchor):
            raise PerceiverLMError(
                f"{option} {shown_path(spec)}: the filesystem root is not a corpus; give the folder or files of your "
                "text"
            )
        kind = file_kind(path)
        if kind is not None:
            raise PerceiverLMError(f"{option} {shown_path(spec)}: is {kind}, not a regular file or folder")
        if path.is_file():
            listed = [path]
        elif path.is_dir() or glob.has_magic(spec):
            listed = _listed(spec, path, option)
        else:
            raise PerceiverLMError(f"{option} {shown_path(spec)}: no such file or folder")
        for file in listed:
            info = file.stat()
            key = (info.st_dev, info.st_ino)
            if key in seen:
                repeats += 1
                continue
            seen[key] = file
            files.append(file)
    if repeats and not quiet:
        print(
            f"note: {option}: {repeats} path(s) name a file already read (given twice, or through a link); "
            "each file is read once",
            file=sys.stderr,
        )
    if exclude is not None:
        inside = _inside(files, exclude)
        if inside is not None:
            raise PerceiverLMError(
                f"{option} {shown_path(inside)}: lies inside --output-dir {shown_path(exclude)}; the run would read "
                "its own checkpoints as text: put the run folder outside the data"
            )
    return files


FULL_HASH_BYTES = 1 << 25
SAMPLED_BLOCKS, BLOCK_BYTES = 64, 1 << 16


def fingerprint(specs: Sequence[str | os.PathLike], option: str) -> str:
    """A digest of what ``specs`` name: the files in order, their sizes and contents, however the paths are spelt.

    A file up to 32 MiB is hashed whole; a larger one by its size and 64 blocks of 64 KiB spread over it, so that
    checking a corpus of many GB costs milliseconds (an edit that keeps the size and misses every block passes).
    """
    digest = hashlib.blake2b(digest_size=16)
    for path in expand_paths(specs, option, quiet=True):
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest.update(size.to_bytes(8, "little"))
            if size <= FULL_HASH_BYTES:
                while block := handle.read(1 << 20):
                    digest.update(block)
                continue
            for offset in np.linspace(0, size - BLOCK_BYTES, SAMPLED_BLOCKS).astype(np.int64).tolist():
                handle.seek(offset)
                digest.update(handle.read(BLOCK_BYTES))
    return digest.hexdigest()


def _inside(files: Sequence[Path], folder: Path) -> Path | None:
    """The first of ``files`` that lies in ``folder`` (links resolved), or None."""
    try:
        root = folder.resolve()
    except OSError:
        return None
    return next((f for f in files if root in f.resolve().parents), None)


def file_overlap(train: Sequence[Path], val: Sequence[Path]) -> Path | None:
    """A validation file that is also a training file (the same real file), or None."""
    keys = {(s.st_dev, s.st_ino) for s in map(os.stat, train)}
    return next((v for v in val if (lambda s: (s.st_dev, s.st_ino))(os.stat(v)) in keys), None)


class _OpenFiles:
    """A few descriptors kept open between reads (least recently used closed first): a corpus of 100,000
    files reads under ``ulimit -n 1024``, and a file is opened again only when its turn comes round."""

    def __init__(self, limit: int = 64) -> None:
        self.limit, self.fds, self.lock = limit, OrderedDict(), threading.Lock()
        self.pid = os.getpid()

    def get(self, path: Path) -> int:
        if os.getpid() != self.pid:  # a forked DataLoader worker: the parent's cache is not ours to share
            self.fds, self.lock, self.pid = OrderedDict(), threading.Lock(), os.getpid()
        with self.lock:
            fd = self.fds.pop(path, None)
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                while len(self.fds) >= self.limit:
                    os.close(self.fds.popitem(last=False)[1])
            self.fds[path] = fd
            return fd


OPEN_FILES = _OpenFiles()


@dataclass(frozen=True)
class FileBytes:
    """The bytes of one corpus file, read a slice at a time (``pread``): nothing mapped, so a file cut short
    under a running job is an error naming it, not a SIGBUS; no descriptor held for long (`_OpenFiles`)."""

    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileBytes:
        info = path.stat()
        return cls(path, info.st_size, info.st_mtime_ns)

    def __len__(self) -> int:
        return self.size

    def read(self, start: int, stop: int) -> np.ndarray:
        """Bytes ``[start, stop)`` as uint8; a file that changed since it was listed is an error."""
        stop = min(stop, self.size)
        if stop <= start:
            return np.zeros(0, dtype=np.uint8)
        try:
            fd = OPEN_FILES.get(self.path)
            info = os.fstat(fd)
            data = os.pread(fd, stop - start, start)
        except OSError as err:
            raise PerceiverLMError(f"{shown_path(self.path)}: cannot read ({err.strerror or err})") from None
        if (info.st_size, info.st_mtime_ns) != (self.size, self.mtime_ns) or len(data) != stop - start:
            raise PerceiverLMError(
                f"{shown_path(self.path)}: changed while being read (was {self.size:,} bytes, now {info.st_size:,}); "
                "a corpus must stay as it was when the run started: restore the file, or start again"
            )
        return np.frombuffer(data, dtype=np.uint8)

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(self.size)
        return self.read(start, stop)


Buffer = np.ndarray | FileBytes


def _slice(buffer: Buffer, start: int, stop: int) -> np.ndarray:
    return buffer.read(start, stop) if isinstance(buffer, FileBytes) else buffer[start:stop]


def wikiextractor_spans(buffer: Buffer) -> np.ndarray | None:
    """Document spans [D, 2] of a wikiextractor file (``<doc ...>`` ... ``</doc>``), else None.

    The markup lines themselves are left out: they are not text, and would be ~10 % of enwiki.
    Read a chunk at a time, so a file larger than memory is scanned in bounded memory.
    """
    size = len(buffer)
    if bytes(_slice(buffer, 0, len(WIKIEXTRACTOR_HEADER))) != WIKIEXTRACTOR_HEADER:
        return None
    headers, footers, contents = [], [], []
    reach = 65536  # how far past a chunk a header line may end
    for chunk_start in range(0, size, SCAN_CHUNK):
        chunk = _slice(buffer, chunk_start, chunk_start + SCAN_CHUNK + reach)
        newlines = np.flatnonzero(chunk == ord("\n"))
        line_starts = newlines + 1
        if chunk_start == 0:
            line_starts = np.concatenate(([0], line_starts))
        line_starts = line_starts[line_starts < min(SCAN_CHUNK, len(chunk))]
        found_headers = _line_starts_with(chunk, line_starts, WIKIEXTRACTOR_HEADER)
        footers.append(_line_starts_with(chunk, line_starts, WIKIEXTRACTOR_FOOTER) + chunk_start)
        ends = np.searchsorted(newlines, found_headers)
        if np.any(ends >= len(newlines)) or np.any(
            newlines[np.minimum(ends, len(newlines) - 1)] - found_headers >= reach
        ):
            return None  # a header line without an end: not wikiextractor output after all
        headers.append(found_headers + chunk_start)
        contents.append(newlines[ends] + 1 + chunk_start)
    header_starts, footer_starts = np.concatenate(headers), np.concatenate(footers)
    if len(header_starts) != len(footer_starts) or np.any(footer_starts < header_starts):
        return None
    return np.stack([np.concatenate(contents), footer_starts], axis=1).astype(np.int64)


def _line_starts_with(buffer: np.ndarray, line_starts: np.ndarray, prefix: bytes) -> np.ndarray:
    starts = line_starts[line_starts + len(prefix) <= len(buffer)]
    hit = np.ones(len(starts), dtype=bool)
    for i, byte in enumerate(prefix):
        hit &= buffer[starts + i] == byte
    return starts[hit]


def _utf8_error(buffer: Buffer) -> int | None:
    """Where the first MiB of a file stops being UTF-8 (a byte offset), or None."""
    head = bytes(_slice(buffer, 0, 1 << 20))
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut at the 1 MiB boundary
            return err.start
    return None


def load_files(specs: Sequence[str | os.PathLike], option: str = "--data", exclude: Path | None = None) -> ByteCorpus:
    """Text files, globs and folders as a corpus (one document per file, or per ``<doc>`` for wikiextractor
    output), read from disk a window at a time. ``exclude``: see `expand_paths`."""
    buffers, spans, not_utf8 = [], [], []
    for path in expand_paths(specs, option, exclude):
        buffer = FileBytes.of(path)
        if len(buffer) == 0:
            continue
        broken = _utf8_error(buffer)
        if broken is not None:
            not_utf8.append(f"{shown_path(path)} (byte {broken})")
        docs = wikiextractor_spans(buffer)
        if docs is None:
            docs = np.array([[0, len(buffer)]], dtype=np.int64)
        index = len(buffers)
        buffers.append(buffer)
        spans.append(np.column_stack([np.full(len(docs), index, dtype=np.int64), docs]))
    if not buffers:
        raise PerceiverLMError(
            f"{option} {', '.join(map(shown_path, specs))}: corpus is empty (all files have 0 bytes)"
        )
    if not_utf8:
        more = f" and {len(not_utf8) - 3:,} more files" if len(not_utf8) > 3 else ""
        verb, them = ("is", "it") if len(not_utf8) == 1 else ("are", "them")
        print(
            f"note: {', '.join(not_utf8[:3])}{more} {verb} not valid UTF-8; training on the raw bytes anyway, and "
            f"text shown from {them} will use U+FFFD for the broken sequences",
            file=sys.stderr,
        )
    name = shown_path(specs[0]) if len(specs) == 1 else f"{len(specs)} paths"
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


def load_corpus(
    options: Any, default: Callable[[], ByteCorpus] | None = None, exclude: Path | None = None
) -> ByteCorpus:
    """The text an options dataclass names: ``--dataset`` (a Hugging Face dataset), ``--data`` (files), or
    ``default`` (None: one of them is required); ``exclude``: a folder no data file may lie in (`expand_paths`)."""
    if options.dataset:
        texts = load_hf_texts(
            options.dataset, options.dataset_config, options.dataset_split, options.text_column, False
        )
        return corpus_from_texts(texts, f"--dataset {options.dataset}")
    if options.data:
        return load_files(options.data, exclude=exclude)
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
