"""The GLUE distribution's files: the original unquoted TSVs, read with quoting off (many rows hold a literal
``"``) and ``utf-8-sig`` (MRPC starts with a byte-order mark). A row with the wrong number of columns, an unknown
label or an unreadable score stops loading with ``file:line`` in the message, unless ``skip_bad_rows`` is set;
then such rows are counted and reported, never dropped silently.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.user_files import check_regular_file, check_size
from perceiver_lm.validation import shown
from tasks.finetune.data import CLEAN, Corruption, GlueSplit, nonblocking
from tasks.glue.tasks import Columns, GlueTask

TSV_FILE_LIMIT = 4 << 30  # bytes of one GLUE TSV file; MNLI's train.tsv, the largest, has ~0.4 GB
MIN_ROW_CHARACTERS = 1 << 16  # the longest row any GLUE TSV may have, whatever the examples read (RTE's: ~1.5 K)
ROW_LENGTHS_READ = 8  # ...or this many times the bytes an example reads (--max-length), if more


def row_limit(max_length: int) -> int:
    """The longest row (line) of a GLUE TSV that is read, in characters: far above what an example of
    ``max_length`` bytes uses (a longer one is a bad row, never read whole into memory)."""
    return max(MIN_ROW_CHARACTERS, ROW_LENGTHS_READ * max_length)


def _label_value(task: GlueTask, raw: str) -> float:
    """The target of a label string; ValueError is reported with the line by the caller."""
    return task.kind.target(raw, task.labels)


def _column(header: list[str] | None, spec: str | int | None, path: Path) -> int | None:
    if spec is None or isinstance(spec, int):
        return spec
    if spec not in header:
        raise PerceiverLMError(f"{path}: line 1: header has no column {shown(spec)} (found: {', '.join(header)})")
    return header.index(spec)


def _bounded_lines(handle, limit: int, overlong: set[int]):
    """The lines of ``handle``, each of at most ``limit`` characters (and its line end); a longer line is
    skipped unread in pieces of ``limit``, yielded as an empty line, and its number put into ``overlong``."""
    ends = ("\n", "\r")
    number = 0
    while line := handle.readline(limit + 1):
        number += 1
        if len(line) > limit and not line.endswith(ends):
            overlong.add(number)
            while (rest := handle.readline(limit + 1)) and not rest.endswith(ends):
                pass
            line = "\n"
        yield line


def read_tsv(
    task: GlueTask,
    path: Path,
    columns: Columns,
    name: str,
    max_length: int,
    skip_bad_rows: bool,
    corruption: Corruption = CLEAN,
) -> GlueSplit:
    """Read one GLUE TSV file of ``task`` laid out as ``columns``."""
    split = GlueSplit(task, name, str(path) + corruption.describe())
    first_error = None
    not_found = f"{path}: GLUE file not found (expected the original GLUE layout, {task.directory}/{path.name})"
    if not os.path.lexists(path):
        raise PerceiverLMError(not_found)
    # A regular file (a FIFO would block the open, a device never end), of a size a GLUE file can have.
    check_size(check_regular_file(path, what="GLUE TSV file").st_size, TSV_FILE_LIMIT, str(path), "GLUE TSV file")
    limit = row_limit(max_length)
    overlong: set[int] = set()
    field_limit = csv.field_size_limit()
    try:
        # O_NONBLOCK: should the path have become a FIFO since the check, the open does not wait for a writer.
        handle = open(path, encoding="utf-8-sig", newline="", opener=nonblocking)
    except FileNotFoundError:
        raise PerceiverLMError(not_found) from None
    with handle:
        # Rows are lines (quoting is off) of at most `limit` characters, so no field is longer: the csv module's
        # own limit (131,072 characters) is raised to it for this file, and a longer row is a bad row.
        csv.field_size_limit(max(field_limit, limit + 2))
        reader = csv.reader(_bounded_lines(handle, limit, overlong), delimiter="\t", quoting=csv.QUOTE_NONE)
        header = None
        try:
            if columns.header:
                try:
                    header = next(reader, None)
                except csv.Error as err:
                    raise PerceiverLMError(f"{path}: line 1: {err}") from None
                if header is None:
                    raise PerceiverLMError(f"{path}: empty file")
                if reader.line_num in overlong:
                    raise PerceiverLMError(f"{path}: line 1: a header of more than {limit:,} characters")
            width = len(header) if header else 4  # CoLA's headerless files have 4 columns
            where = [_column(header, c, path) for c in (columns.text_a, columns.text_b, columns.label, columns.index)]
            a_col, b_col, label_col, index_col = where
            while True:
                try:
                    row = next(reader, None)
                    if row is None:
                        break
                    if reader.line_num in overlong:
                        raise ValueError(
                            f"a row of more than {limit:,} characters (an example reads at most {max_length:,} bytes)"
                        )
                    if not row or row == [""]:
                        continue
                    if len(row) != width:
                        raise ValueError(f"expected {width} tab-separated columns, got {len(row)}")
                    label = _label_value(task, row[label_col]) if label_col is not None else None
                except UnicodeDecodeError:
                    raise  # the file, not a row, is broken: reported below
                except (ValueError, csv.Error) as err:
                    message = f"{path}: line {reader.line_num}: {err}"
                    if not skip_bad_rows:
                        raise PerceiverLMError(
                            message + " (pass --skip-bad-rows to count and skip such rows)"
                        ) from None
                    split.skipped += 1
                    first_error = first_error or message
                    continue
                ids = corruption.encode(
                    row[a_col], row[b_col] if b_col is not None else None, len(split.ids), max_length
                )
                split.ids.append(ids)
                if label is not None:
                    split.labels.append(label)
                if index_col is not None:
                    split.index.append(row[index_col])
        except UnicodeDecodeError as err:
            raise PerceiverLMError(f"{path}: line {reader.line_num + 1}: not valid UTF-8 ({err.reason})") from None
        finally:
            csv.field_size_limit(field_limit)
    if split.skipped:
        print(f"note: skipped {split.skipped} malformed row(s) of {path}; first: {first_error}", file=sys.stderr)
    if not split.ids:
        raise PerceiverLMError(f"{path}: no examples")
    return split
