"""Checks of values that come from files (config files, checkpoint metadata) against dataclass fields.

A config file can hold anything JSON or TOML can say: a string where a list belongs, ``"3"`` where
a number belongs, ``"false"`` (truthy) where a boolean belongs, NaN. Each would fail late, far from
its cause, or silently do something else; here each is refused naming the field and what it expects.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from perceiver_lm.errors import SHOWN_CHARACTERS, PerceiverLMError, clipped
from perceiver_lm.user_files import METADATA_FILE_LIMIT, parse_json, read_bounded

MAX_INTEGER = 2**63 - 1  # no integer option or field holds more (torch and numpy take at most int64)
MAX_DIGITS = 18  # of an integer written in an option (ASCII digits); more cannot be below MAX_INTEGER anyway


def shown(value: Any, limit: int = SHOWN_CHARACTERS) -> str:
    """``repr(value)`` cut to ``limit`` characters and its length (`perceiver_lm.errors.clipped`), so that a
    binary blob or a 100 KB option cannot flood the one-line error; an integer too long to print, by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {int(math.log10(abs(value))) + 1:,} digits"
    try:
        text = repr(value)
    except ValueError:  # a container of integers too long to print
        return f"a {type(value).__name__} too large to show"
    return clipped(text, limit)


# Integers and numbers as the command line writes them (ASCII only: str.isdigit and float() take far more).
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf|infinity)", re.I)


def parse_int(text: str, label: str) -> int:
    """An integer written in ASCII digits (with an optional sign and surrounding spaces), as the command line's
    integer options take them; anything else (``²``, full-width ``１０``, ``1_000``, 5,000 digits) is refused with
    one line naming ``label``."""
    body = text.strip(" \t")
    if not INTEGER_TEXT.fullmatch(body):
        raise PerceiverLMError(f"{label}: expected an integer in ASCII digits 0-9, got {shown(text)}")
    if len(body.lstrip("+-")) > MAX_DIGITS:
        raise PerceiverLMError(f"{label}: expected an integer of at most {MAX_DIGITS} digits, got {shown(text)}")
    return int(body)


def parse_float(text: str, label: str) -> float:
    """A number written in ASCII (digits, a point, an exponent; or nan/inf, refused later where a finite number
    belongs), as the command line's number options take them; anything else is refused naming ``label``."""
    body = text.strip(" \t")
    if not NUMBER_TEXT.fullmatch(body):
        raise PerceiverLMError(f"{label}: expected a number in ASCII digits 0-9 (e.g. 0.1, 1e-4), got {shown(text)}")
    return float(body)


def _alternatives(hint: Any) -> list[Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return list(typing.get_args(hint))
    return [hint]


def expected(hint: Any) -> str:
    """What a type hint accepts, in words ("an integer or null", "a list of strings", ...)."""
    words = []
    for alt in _alternatives(hint):
        origin = typing.get_origin(alt)
        if alt is type(None):
            words.append("null")
        elif origin is Literal:
            words.append("one of " + ", ".join(map(str, typing.get_args(alt))))
        elif origin is dict:
            words.append("a table")
        elif origin in (list, tuple):
            words.append(f"a list of {expected(typing.get_args(alt)[0]).removeprefix('a ').removeprefix('an ')}s")
        else:
            words.append(
                {
                    int: "an integer",
                    float: "a finite number",
                    bool: "true or false",
                    str: "a string",
                    Path: "a path",
                }.get(alt, str(alt))
            )
    return " or ".join(words)


def matches(hint: Any, value: Any) -> bool:
    """Whether ``value`` is of type ``hint`` with no coercion (booleans are not numbers; floats are finite)."""
    for alt in _alternatives(hint):
        origin = typing.get_origin(alt)
        if alt is type(None) and value is None:
            return True
        if origin is Literal and isinstance(value, str) and value in typing.get_args(alt):
            return True
        if (
            origin in (list, tuple)
            and isinstance(value, (list, tuple))
            and all(matches(typing.get_args(alt)[0], v) for v in value)
        ):
            return True
        if origin is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return True  # a table (a config file's [model]); its own class checks what is in it
        if alt is Path and isinstance(value, (str, Path)):
            return True
        if alt is bool and isinstance(value, bool):
            return True
        if alt is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if alt is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True
        if alt is str and isinstance(value, str):
            return True
    return False


def check_fields(cls: type, data: Any, source: str, kind: str) -> dict[str, Any]:
    """Refuse a ``data`` mapping for dataclass ``cls`` that is no mapping, has unknown keys or mistyped values.

    Args:
        cls: the dataclass whose fields the keys name.
        data: what a file held (any JSON/TOML value).
        source: the file or option, for messages ("--config run.toml", "ckpt/config.json").
        kind: what the fields are ("training option", "model config field").
    """
    if not isinstance(data, dict):
        raise PerceiverLMError(
            f"{source}: expected a table of {kind}s (a JSON object), got {'null' if data is None else shown(data)}"
        )
    hints = typing.get_type_hints(cls)
    unknown = sorted(str(k) for k in set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise PerceiverLMError(f"{source}: unknown {kind}(s): {', '.join(unknown)}")
    for name, value in data.items():
        if not matches(hints[name], value):
            raise PerceiverLMError(f"{source}: {name} must be {expected(hints[name])}, got {shown(value)}")
    return data


def check_instance(obj: Any, label: Callable[[str], str]) -> None:
    """Refuse a dataclass instance whose fields do not match their types (see `matches`); ``label`` names a field."""
    for name, hint in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, name)
        if not matches(hint, value):
            raise PerceiverLMError(f"{label(name)} must be {expected(hint)}, got {shown(value)}")


def check_range(
    label: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    cap: int | None = None,
) -> None:
    """Refuse ``value`` outside [low, high] (an open end with ``*_open``); None passes (an unset option).

    ``cap`` is a sanity ceiling rather than part of the range ("at most 1,000,000,000" steps), named on its
    own; an integer without ``high`` or ``cap`` is capped at `MAX_INTEGER` (int64, what tensors hold).
    """
    if value is None:
        return
    if cap is None and high is None and isinstance(value, int):
        cap = MAX_INTEGER
    if cap is not None and value > cap:
        raise PerceiverLMError(f"{label} must be at most {cap:,}, got {shown(value)}")
    ok = (low is None or (value > low if low_open else value >= low)) and (
        high is None or (value < high if high_open else value <= high)
    )
    if ok:
        return
    if high is None and low == 0:
        want = "positive" if low_open else "0 or more"
    else:
        want = (
            f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            if high is not None
            else f"at least {low}"
        )
    raise PerceiverLMError(f"{label} must be {want}, got {shown(value)}")


def read_json(path: str | Path, what: str, limit: int = METADATA_FILE_LIMIT) -> Any:
    """The JSON value in a small metadata file, or one line saying why it cannot be read.

    ``limit`` bytes at most (`perceiver_lm.user_files.read_bounded`: a regular file, never read past its limit):
    metadata is small, and a huge file in its place is not metadata.
    """
    path = Path(path)
    data = read_bounded(path, limit, str(path), f"{what} file")
    try:
        return parse_json(data.decode("utf-8"), str(path))
    except UnicodeDecodeError as err:
        raise PerceiverLMError(f"{path}: not a {what} file (not UTF-8 text at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise PerceiverLMError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise PerceiverLMError(f"{path}: JSON nested too deeply for a {what} file") from None
