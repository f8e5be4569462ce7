"""The one exception type the toolkit raises for bad input, and one-line descriptions of the
other failures a user can cause (a full disk, a read-only folder, a corrupt file)."""

from __future__ import annotations

import errno
import json
import re

# What an OSError means for the file it names; strerror is the fallback for the rest.
_OS_MEANING = {
    errno.ENOSPC: "disk full (no space left on the device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "a part of this path is a file, expected a folder",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTEMPTY: "folder is not empty",
}


SHOWN_CHARACTERS = 80  # of a value a message echoes; the rest is counted, not printed
_LONG_WORD = 200  # a run of characters without a space longer than this is an echoed value, cut to SHOWN_CHARACTERS
_LONG_MESSAGE = 2000  # a message longer than this keeps its start and its end


def clipped(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """``text`` itself, or its first ``limit`` characters and how long it was: ``abc…(100,000 characters)``."""
    return text if len(text) <= limit else f"{text[:limit]}…({len(text):,} characters)"


def bounded_message(text: str) -> str:
    """One line of bounded length: every long unbroken run (an echoed value, a path, a blob) `clipped`, and a
    message still too long cut in the middle, so that its start (what failed) and end (what was expected) stay."""
    text = " ".join(clipped(word) if len(word) > _LONG_WORD else word for word in text.split(" "))
    if len(text) > _LONG_MESSAGE:
        text = f"{text[:1200]} …({len(text) - 1800:,} characters)… {text[-600:]}"
    return text


class PerceiverLMError(ValueError):
    """A user-facing error: the message names the file, option or field and what was expected.

    A ValueError, so code that caught the ValueErrors of bad input before still does.
    """


class Terminated(BaseException):  # noqa: N818 (like KeyboardInterrupt: a stop asked for, not an error)
    """The run stopped on SIGTERM (a scheduler's preemption) after writing a resumable checkpoint.

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way treats it as a failure;
    the CLI prints its one-line message and exits 143 (128 + SIGTERM), as the shell reports such a stop.
    """


def os_errno(err: BaseException) -> int | None:
    """The OS error number behind ``err``: an OSError's, or the "(os error N)" a Rust library
    (safetensors) puts in its message when a write fails; None otherwise."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found.group(1)) if found else None


def one_line(err: BaseException) -> str | None:
    """One line naming what failed and why, for the failures bad input or a bad environment cause;
    None for anything else (a bug, which deserves its traceback)."""
    if isinstance(err, PerceiverLMError):
        text = str(err)
    elif isinstance(err, OSError):
        meaning = _OS_MEANING.get(err.errno, err.strerror or type(err).__name__)
        names = [str(n) for n in (err.filename, err.filename2) if n is not None]
        text = f"{' -> '.join(names)}: {meaning}" if names else meaning
    elif isinstance(err, UnicodeDecodeError):
        text = f"not valid UTF-8 text (byte {err.start}: {err.reason})"
    elif isinstance(err, UnicodeError):
        text = f"text is not valid Unicode ({err})"
    elif isinstance(err, json.JSONDecodeError):
        text = f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
    elif isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        first = (str(err).strip().splitlines() or [""])[0]
        text = (
            "out of memory"
            + (f" ({first[:200]})" if first else "")
            + "; ask for less (a shorter text, a smaller batch or model)"
        )
    elif type(err).__name__ == "SafetensorError":
        number = os_errno(err)
        text = f"safetensors: {_OS_MEANING.get(number, err)}" if number else f"safetensors: {err}"
    else:
        return None
    # Exactly one line, whatever a message quoted (a file name with a newline, a library's multi-line text), and of
    # bounded length, whatever value it echoes.
    return bounded_message(" ".join(text.split("\n")).strip())
