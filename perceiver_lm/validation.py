"""Checks of values that come from files (config files, checkpoint metadata) against dataclass fields.

A config file can hold anything JSON or TOML can say: a string where a list belongs, ``"3"`` where
a number belongs, ``"false"`` (truthy) where a boolean belongs, NaN. Each would fail late, far from
its cause, or silently do something else; here each is refused naming the field and what it expects.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from perceiver_lm.errors import PerceiverLMError


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a binary blob cannot flood the one-line error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
) -> None:
    """Refuse ``value`` outside [low, high] (an open end with ``*_open``); None passes (an unset option)."""
    if value is None:
        return
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
    raise PerceiverLMError(f"{label} must be {want}, got {value}")


def read_json(path: str | Path, what: str, limit: int = 1 << 24) -> Any:
    """The JSON value in a small metadata file, or one line saying why it cannot be read.

    ``limit`` bytes at most: metadata is small, and a huge file in its place is not metadata.
    """
    path = Path(path)
    try:
        if path.stat().st_size > limit:
            raise PerceiverLMError(f"{path}: {path.stat().st_size:,} bytes, too large for a {what} file")
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise PerceiverLMError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise PerceiverLMError(f"{path}: is a folder, expected a {what} file") from None
    except UnicodeDecodeError as err:
        raise PerceiverLMError(f"{path}: not a {what} file (not UTF-8 text at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise PerceiverLMError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise PerceiverLMError(f"{path}: JSON nested too deeply for a {what} file") from None
