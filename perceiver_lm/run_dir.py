"""Output folders that belong to one run at a time and never lose a user's files.

A command that writes a folder (pretraining, GLUE fine-tuning, conversion, predictions) refuses a
folder that already holds files unless the user said what to do with them (``--resume`` or
``--overwrite``), holds a lock on it while it runs (a second run on the same folder is refused,
naming the first one's pid), and removes only what it or an earlier run of it wrote.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from perceiver_lm.errors import PerceiverLMError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".perceiver-lm.lock"
# Hidden siblings that checkpoint.atomic_directory and checkpoint pruning leave when a run is killed.
STALE_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|deleting)-\d+$")


def user_entries(folder: Path) -> list[str]:
    """Names in ``folder`` other than the lock file, sorted; [] when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (nothing can be made under it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_folder(folder: str | Path, option: str) -> Path:
    """Refuse an output path that cannot be a folder: an existing file, or a path under a file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PerceiverLMError(f"{option} {folder}: exists and is not a folder; give a folder path")
    if (blocker := _file_above(folder)) is not None:
        raise PerceiverLMError(f"{option} {folder}: {blocker} is a file, not a folder")
    return folder


def check_output_file(path: str | Path | None, option: str, replace: bool = True) -> Path | None:
    """Refuse an output path that cannot be a file: an existing folder, or a path under a file; and,
    unless ``replace``, an existing file (the user's, as far as we know)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise PerceiverLMError(f"{option} {path}: is a folder, expected a file name")
    if not replace and path.exists():
        raise PerceiverLMError(f"{option} {path}: already exists; pass --overwrite to replace it, or pick another name")
    if (blocker := _file_above(path)) is not None:
        raise PerceiverLMError(f"{option} {path}: {blocker} is a file, not a folder")
    return path


def refuse_non_empty(folder: Path, option: str, hint: str) -> None:
    """Refuse a folder that holds anything (besides a lock file), naming a few of its entries and ``hint``."""
    entries = user_entries(folder)
    if entries:
        listed = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise PerceiverLMError(f"{option} {folder}: folder is not empty (holds {listed}); {hint}")


def remove_tree(path: Path) -> None:
    """Delete a folder this toolkit wrote: renamed aside first, so a kill mid-delete leaves a hidden
    stale name (cleaned on the next start), never a half-deleted folder under its real name."""
    if not path.exists():
        return
    aside = path.parent / f".{path.name}.deleting-{os.getpid()}"
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def clean_stale(folder: Path) -> list[str]:
    """Remove the hidden temporaries of killed runs in ``folder`` (call it holding the folder's lock).

    A folder set aside while being replaced whose replacement never arrived is put back instead.
    Returns what was done, one entry per name, for a note.
    """
    done = []
    if not folder.is_dir():
        return done
    for path in sorted(folder.iterdir()):
        match = STALE_PATTERN.match(path.name)
        if not match:
            continue
        final = folder / match["name"]
        if match["kind"] == "old" and not final.exists():
            os.replace(path, final)
            done.append(f"restored {final.name}")
        else:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            done.append(f"removed {path.name}")
    return done


@contextlib.contextmanager
def claim_folder(folder: Path, option: str, refuse: Callable[[], None], lock: bool = True) -> Iterator[None]:
    """Hold ``folder`` for one run: refuse it while another run holds it (naming that run's pid) or
    when ``refuse()`` raises, before anything is written there; then lock it and check once more
    under the lock (another run may have filled it meanwhile). ``lock=False`` (the non-main
    processes of a multi-process run) checks nothing: the main process holds the lock and does the
    checks, and its own writes may already be there when another process would look (a refusal on
    the main process ends the launch)."""
    if not lock:
        yield
        return
    FolderLock(folder, option).probe()
    refuse()
    with FolderLock(folder, option):
        refuse()
        yield


class FolderLock:
    """An exclusive lock on a folder for the life of one run (``with FolderLock(folder): ...``).

    An OS file lock (flock) on ``folder/.perceiver-lm.lock``, which holds the owner's pid: the OS
    releases it when the owner exits, however it exits, so a killed run never leaves a stale lock.
    """

    def __init__(self, folder: str | Path, option: str = "--output-dir") -> None:
        self.folder, self.option, self.handle = Path(folder), option, None
        self.created: list[Path] = []  # folders this lock made, innermost first

    def _refuse(self, handle) -> None:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise PerceiverLMError(
            f"{self.option} {self.folder}: another run (pid {owner}) is using this folder; wait for it to finish, or "
            "pick another folder"
        )

    def probe(self) -> None:
        """Refuse the folder if another run holds its lock now; creates nothing."""
        if fcntl is None or not (self.folder / LOCK_FILE).is_file():
            return
        with open(self.folder / LOCK_FILE) as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                self._refuse(handle)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def __enter__(self) -> FolderLock:
        if fcntl is None:  # no flock (Windows): runs are not protected from each other there
            return self
        self.created = [p for p in [self.folder, *self.folder.parents] if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._refuse(handle)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is None:
            return
        # A run that failed before writing anything leaves no folder behind that it created.
        if self.created and not user_entries(self.folder):
            try:
                (self.folder / LOCK_FILE).unlink()
                for folder in self.created:
                    folder.rmdir()
            except OSError:
                pass
        self.handle.close()  # closing releases the flock
        self.handle = None


def finite_json(value: Any) -> Any:
    """``value`` with NaN and infinities as null, so that every line stays JSON (``json.loads`` of
    bare NaN works only in Python; other readers refuse it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary sibling and a rename: readers (and a full disk) never leave half a file."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")  # paths that are not UTF-8
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """`write_text_atomic` of JSON, NaN and infinities written as null."""
    write_text_atomic(path, json.dumps(finite_json(data), indent=2, allow_nan=False) + "\n")


def is_main_rank() -> bool:
    """Whether this process will be Accelerate's main one (``RANK`` 0 or unset), before any Accelerator exists."""
    return int(os.environ.get("RANK", "0")) == 0


# ---- the run folder of a training run -------------------------------------------------------------------------


@contextlib.contextmanager
def run_folder(options: Any, produced: tuple[str, ...]) -> Iterator[Path]:
    """Claim ``options.output_dir`` for one run (a lock; a second run there is refused) and tidy it.

    A non-empty folder needs ``--resume`` or ``--overwrite``; with ``--overwrite`` the earlier run's
    checkpoints and the ``produced`` files/folders are removed (only those: other files are the user's).
    """
    output = check_output_folder(options.output_dir, "--output-dir")
    main_rank = is_main_rank()
    with claim_folder(output, "--output-dir", lambda: _check_output(output, options), lock=main_rank):
        if main_rank:  # the others write nothing here, and must not create it before the main one has checked it
            _tidy(output, options.overwrite, produced)
            output.mkdir(parents=True, exist_ok=True)
        yield output


def _check_output(output: Path, options: Any) -> None:
    from perceiver_lm import checkpoint as ckpt  # torch: imported by a run, not by the CLI's --help

    if options.resume or options.overwrite or not user_entries(output):
        return
    if ckpt.list_checkpoints(output):
        raise PerceiverLMError(
            f"{output} already holds checkpoints; pass --resume to continue, --overwrite to start over, or pick "
            "another --output-dir"
        )
    refuse_non_empty(
        output,
        "--output-dir",
        "pick another --output-dir, or pass --overwrite to write the run there (its files are kept)",
    )


def _tidy(output: Path, overwrite: bool, produced: tuple[str, ...]) -> None:
    """Remove what killed runs left half-written, and with ``overwrite`` the earlier run's outputs."""
    from perceiver_lm import checkpoint as ckpt

    notes = clean_stale(output)
    if overwrite:
        earlier = ckpt.list_checkpoints(output)
        for path in earlier:
            remove_tree(path)
        if earlier:
            notes.append(f"removed {len(earlier)} earlier checkpoint(s)")
        for name in produced:
            path = output / name
            if path.is_file():
                path.unlink()
                notes.append(f"removed {name}")
            elif path.is_dir() and not {p.name for p in path.iterdir()} - ckpt.OWN_FILES:
                remove_tree(path)
                notes.append(f"removed {name}/")
    if notes:
        print(f"note: {output}: {'; '.join(notes)}", file=sys.stderr, flush=True)
