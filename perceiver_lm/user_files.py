"""Reading a file a user names (an options file, a text, a task file, a checkpoint's metadata): a regular file
only, and never more of it than the command can use.

A path can name a character device (``/dev/zero`` never ends), a FIFO (opening it waits for a writer), a socket
or a file far larger than anything the command reads. Each is refused here by what it is, with one line naming
the option and the path, before its contents are read; and a file that grows while it is read is read no further
than its limit (at most ``limit + 1`` bytes are ever read).
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from perceiver_lm.errors import PerceiverLMError, clipped, one_line

MiB = 1 << 20
OPTIONS_FILE_LIMIT = 4 * MiB  # --config, --task-file: a few lines of options
METADATA_FILE_LIMIT = 16 * MiB  # config.json, tasks.json, trainer_state.json of a checkpoint

# What a path that is not a regular file is, by its stat mode.
_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _label(path: Path, label: str | None) -> str:
    return label if label is not None else str(path)


def kind_of(mode: int) -> str | None:
    """What a stat mode names when it is not a regular file or a folder ("a character device", ...); None else."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "a special file"


def _refuse_kind(mode: int, label: str, what: str) -> None:
    if stat.S_ISDIR(mode):
        raise PerceiverLMError(f"{label}: is a folder, expected a {what}")
    kind = kind_of(mode)
    if kind is not None:
        raise PerceiverLMError(f"{label}: is {kind}, not a regular file")


def _cannot(label: str, err: OSError) -> PerceiverLMError:
    if isinstance(err, FileNotFoundError):
        return PerceiverLMError(f"{label}: no such file or folder")
    return PerceiverLMError(f"{label}: cannot read ({(one_line(err) or str(err)).rpartition(': ')[2]})")


def check_regular_file(path: str | Path, label: str | None = None, what: str = "file") -> os.stat_result:
    """The stat of ``path`` if it is a regular file (symbolic links followed); else one line saying what it is.

    Args:
        path: the file.
        label: how messages name it ("--file notes.txt"); default: the path.
        what: what the file should be, for the message about a folder ("options file").
    """
    path = Path(path)
    label = _label(path, label)
    try:
        status = path.stat()
    except OSError as err:
        raise _cannot(label, err) from None
    except ValueError:  # a NUL in the name
        raise PerceiverLMError(f"{label}: not a valid file name") from None
    _refuse_kind(status.st_mode, label, what)
    return status


def check_size(size: int, limit: int, label: str, what: str) -> None:
    if size > limit:
        raise PerceiverLMError(f"{label}: {size:,} bytes, more than a {what} may hold ({limit:,} bytes)")


def read_prefix(path: str | Path, limit: int, label: str | None = None, what: str = "file") -> bytes:
    """The first ``limit`` bytes (or fewer: all there are) of the regular file ``path``; refused (one line) when it
    is no regular file. Reads no further, so a huge, growing or endless file costs no more than ``limit`` bytes."""
    path = Path(path)
    label = _label(path, label)
    check_regular_file(path, label, what)
    try:
        # O_NONBLOCK: should the path have become a FIFO since the stat, opening it does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        raise _cannot(label, err) from None
    with os.fdopen(fd, "rb") as handle:
        _refuse_kind(os.fstat(fd).st_mode, label, what)
        try:
            return handle.read(limit)
        except OSError as err:
            raise _cannot(label, err) from None


def read_bounded(path: str | Path, limit: int, label: str | None = None, what: str = "file") -> bytes:
    """The contents of the regular file ``path``, refused (one line) when it is no regular file or holds more than
    ``limit`` bytes. Reads at most ``limit + 1`` bytes, so a file growing meanwhile cannot exhaust memory."""
    path = Path(path)
    label = _label(path, label)
    check_size(check_regular_file(path, label, what).st_size, limit, label, what)
    data = read_prefix(path, limit + 1, label, what)
    check_size(len(data), limit, label, what)
    return data


def read_bounded_text(path: str | Path, limit: int, label: str | None = None, what: str = "file") -> str:
    """`read_bounded`, decoded as UTF-8 (a byte-order mark dropped), or one line naming the first bad byte."""
    data = read_bounded(path, limit, label, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PerceiverLMError(
            f"{_label(Path(path), label)}: not UTF-8 text (byte {err.start}); expected a {what}"
        ) from None


def check_input_file(path: str | Path, label: str | None = None, what: str = "file") -> Path:
    """``path`` when it exists and is a regular file: for files a library (datasets) opens itself."""
    check_regular_file(path, label, what)
    return Path(path)


def long_number_error(text: str, label: str) -> PerceiverLMError:
    """One line for the ValueError Python's integer parsing raises on an integer of more digits than
    ``sys.get_int_max_str_digits()`` (the JSON and TOML readers let it through): where it is, and its key when
    one stands before it on its line."""
    limit = sys.get_int_max_str_digits()
    found = re.search(rf"\d{{{limit + 1},}}", text) if limit else None
    if found is None:
        return PerceiverLMError(f"{label}: holds an integer of more than {limit:,} digits, more than can be read")
    line = text.count("\n", 0, found.start()) + 1
    start = text.rfind("\n", 0, found.start()) + 1
    key = re.search(r"""["']?([\w.\-]+)["']?\s*[:=]\s*[-+]?$""", text[start : found.start()])
    return PerceiverLMError(
        f"{label}: line {line}: {'' if key is None else clipped(key.group(1)) + ': '}an integer of "
        f"{len(found.group()):,} digits, more than can be read (at most {limit:,})"
    )


def parse_json(text: str, label: str) -> Any:
    """``json.loads(text)``, with an integer too long to convert as one line naming ``label`` (other errors pass)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:
        raise long_number_error(text, label) from None


def parse_toml(text: str, label: str) -> dict[str, Any]:
    """``tomllib.loads(text)``, with an integer too long to convert as one line naming ``label``."""
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise
    except ValueError:
        raise long_number_error(text, label) from None
