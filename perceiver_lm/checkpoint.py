"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint directory holds ``config.json`` + ``model.safetensors`` (all that loading a model
needs) and, for training checkpoints, ``trainer_state.json`` + ``optimizer.safetensors``. It is
written under a hidden temporary name and renamed into place, so a run killed mid-write never
leaves a directory that looks complete.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from perceiver_lm import model_card
from perceiver_lm.config import MultiTaskConfig, PerceiverConfig
from perceiver_lm.errors import PerceiverLMError, one_line, os_errno
from perceiver_lm.validation import expected, matches, read_json, shown

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TASKS_FILE = "tasks.json"  # present for task-decoder (fine-tuned) models
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
CARD_FILE = "README.md"  # the model card (see model_card.py)
OWN_FILES = frozenset({MODEL_FILE, CONFIG_FILE, TASKS_FILE, STATE_FILE, OPTIMIZER_FILE, CARD_FILE})


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(final: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``final`` only once everything in it is written.

    An existing ``final`` is replaced only with ``replace`` and only when it holds nothing but files
    this toolkit writes (a checkpoint or export of ours); anything else there is refused, never lost.
    """
    final = Path(final)
    if final.exists() or final.is_symlink():
        if not final.is_dir():
            raise PerceiverLMError(f"{final}: exists and is not a folder; not replaced")
        foreign = sorted(p.name for p in final.iterdir() if p.name not in OWN_FILES)
        if foreign:
            raise PerceiverLMError(
                f"{final}: holds files that are not ours ({', '.join(foreign[:3])}); not replaced, pick another folder"
            )
        if not replace and any(final.iterdir()):
            raise PerceiverLMError(f"{final}: already exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except (OSError, SafetensorError) as err:  # safetensors reports a failed write as a SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        if os_errno(err) in (errno.ENOSPC, errno.EDQUOT):
            raise PerceiverLMError(
                f"{final}: disk full while writing the checkpoint; nothing was written there "
                "(free some space, then rerun with --resume to continue from the last checkpoint)"
            ) from None
        raise PerceiverLMError(f"{final}: could not write checkpoint ({one_line(err)})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``save_file`` with a reproducible header: the same tensors and metadata give the same bytes.

    safetensors writes its ``__metadata__`` map in hash order, which differs between processes, so two
    identical runs would write files whose hashes differ. The header is rewritten in place with the
    metadata keys sorted: the same length (the same JSON, reordered), so no tensor moves.
    """
    save_file(tensors, str(path), metadata=metadata)
    if not metadata or len(metadata) < 2:
        return
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        raw = handle.read(size)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        ordered = {"__metadata__": header.pop("__metadata__"), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # cannot happen for the same JSON; keep the library's header rather than break the file
            return
        handle.seek(8)
        handle.write(text.ljust(size, b" "))  # safetensors pads its header with spaces too


def write_model_files(
    model: torch.nn.Module,
    config: PerceiverConfig,
    directory: Path,
    training: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write config.json, model.safetensors (+ tasks.json) and the model card into an existing (temporary)
    directory.

    Args:
        model: the (unwrapped) model; its weights are written unless ``state`` is given.
        config: its shape.
        directory: the folder to write into.
        training: what the model card says about how the model was trained.
        state: the full state dict gathered from a sharded model (see `trainer.gather_state`).
    """
    config.save(directory / CONFIG_FILE)
    tasks = getattr(model, "tasks", None)
    if isinstance(tasks, MultiTaskConfig):
        tasks.save(directory / TASKS_FILE)
    state = model.state_dict() if state is None else state
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_safetensors(tensors, directory / MODEL_FILE, metadata={"format": "pt", "library": "perceiver-lm"})
    names = {name for name, _ in model.named_parameters()}
    parameters = sum(v.numel() for k, v in tensors.items() if k in names)
    card = model_card.render(config, tasks if isinstance(tasks, MultiTaskConfig) else None, parameters, training)
    (directory / CARD_FILE).write_text(card, encoding="utf-8", errors="backslashreplace")  # a path that is not UTF-8


def save_model(
    model: torch.nn.Module,
    directory: str | Path,
    training: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save a model's weights (or the gathered ``state``), config and model card atomically; returns the directory."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        write_model_files(model, model.config, tmp, training, state)
    return directory


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-N`` directories of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_model_dir(path: str | Path) -> Path:
    """A directory holding a model: the path itself, or the latest checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise PerceiverLMError(f"{path}: no such checkpoint or run directory")
    if (path / CONFIG_FILE).is_file():
        return path
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return checkpoints[-1]
    raise PerceiverLMError(f"{path}: not a checkpoint (no {CONFIG_FILE}) and holds no checkpoint-N directories")


@contextmanager
def safetensors_name(file: Path) -> Iterator[str]:
    """A name of ``file`` that safetensors can open: safetensors takes only UTF-8 paths, and any other name (a
    POSIX path may hold any bytes) is reached through the open file's /dev/fd entry instead."""
    try:
        name = os.fsencode(file).decode("utf-8")
    except UnicodeDecodeError:
        fd = os.open(file, os.O_RDONLY)
        try:
            yield f"/dev/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield name


def load_state_dict(directory: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    file = directory / MODEL_FILE
    if not file.is_file():
        raise PerceiverLMError(f"{directory}: {MODEL_FILE} is missing")
    try:
        with safetensors_name(file) as name:
            return load_file(name, device=str(map_location))
    except (SafetensorError, OSError) as err:
        raise PerceiverLMError(f"{file}: unreadable safetensors file ({err})") from None


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Fail with one line if ``state`` does not fit ``model`` exactly (names and shapes)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatch(es), e.g. {k}: checkpoint {tuple(state[k].shape)} "
                f"vs model {tuple(expected[k].shape)}"
            )
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise PerceiverLMError(f"{source}: weights do not match the model config ({'; '.join(parts)})")


def read_model_dir(path: str | Path, kind: str = "any") -> tuple[Path, PerceiverConfig, MultiTaskConfig | None]:
    """The directory, model config and task config (None for a masked LM) of a saved model, checked.

    ``kind`` "lm" or "classifier" refuses the other kind with one line; the model classes build
    themselves from what this returns (`perceiver_lm.model.read_buildable`, which also refuses a config
    that describes a far bigger model than the weights on disk).
    """
    directory = resolve_model_dir(path)
    has_tasks = (directory / TASKS_FILE).is_file()
    if kind == "lm" and has_tasks:
        raise PerceiverLMError(
            f"{directory}: a fine-tuned task model, not a masked LM (load it with PerceiverClassifier)"
        )
    if kind == "classifier" and not has_tasks:
        raise PerceiverLMError(f"{directory}: no {TASKS_FILE}; this is a masked LM, not a fine-tuned task model")
    config = PerceiverConfig.load(directory / CONFIG_FILE)
    tasks = MultiTaskConfig.load(directory / TASKS_FILE) if has_tasks else None
    return directory, config, tasks


def load_weights(model: torch.nn.Module, directory: Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Fill ``model`` with the weights saved in ``directory`` (names and shapes must match exactly)."""
    state = load_state_dict(directory, map_location)
    check_state_dict(model, state, str(directory / MODEL_FILE))
    model.load_state_dict(state)
    return model.to(map_location).eval()


def stored_parameters(file: Path) -> int:
    """How many numbers a safetensors file holds, from its header alone (no weight is read)."""
    try:
        with safetensors_name(file) as name, safe_open(name, framework="pt") as handle:
            return sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    except FileNotFoundError:
        raise PerceiverLMError(f"{file.parent}: {file.name} is missing") from None
    except (SafetensorError, OSError) as err:
        raise PerceiverLMError(f"{file}: unreadable safetensors file ({err})") from None


def optimizer_to_safetensors(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _parameter_key(name: str) -> int | str:
    # Parameters are named by their index (optimizer.state_dict(), older checkpoints) or by their name in
    # the model (torch.distributed.checkpoint's full state dict, which sharded training needs).
    return int(name) if name.isdigit() else name


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int | str, dict[str, Any]] = {}
    for name, value in tensors.items():
        param, key = name.rsplit(".", 1)  # state keys (exp_avg, step) hold no dots; parameter names do
        state.setdefault(_parameter_key(param), {})[key] = value
    for param, entry in meta["scalars"].items():
        state.setdefault(_parameter_key(param), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def write_training_files(directory: Path, optimizer_state: dict[str, Any], trainer_state: dict[str, Any]) -> None:
    tensors, meta = optimizer_to_safetensors(optimizer_state)
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    _write_json(directory / STATE_FILE, {**trainer_state, "optimizer": meta})


def pretrained_window(directory: Path, config: PerceiverConfig) -> int | None:
    """The window (bytes) a pretrained checkpoint was trained on when shorter than its ``max_seq_len``, else None.

    Read from its ``trainer_state.json`` (the pretraining options' ``window``). Positions past it never trained,
    nor (with trimmed latents) the latents over them, so its users read longer inputs as windows of this size.
    A checkpoint without a trainer state (converted, or saved by hand) says nothing: None.
    """
    if not (directory / STATE_FILE).is_file():
        return None
    window = read_trainer_state(directory).get("options", {}).get("window")
    if not matches(int, window) or not 1 <= window < config.max_seq_len:
        return None
    return window


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a training checkpoint, checked: a dict with an integer ``step``."""
    state = read_json(directory / STATE_FILE, "trainer state")
    if not isinstance(state, dict) or not matches(int, state.get("step")) or state["step"] < 0:
        raise PerceiverLMError(
            f"{directory / STATE_FILE}: not a trainer state (expected an object with an integer step >= 0, got "
            f"{shown(state)})"
        )
    for key, ok, want in (
        (
            "eval",
            lambda v: isinstance(v, dict) and all(matches(float, x) for x in v.values()),
            "an object of finite numbers",
        ),
        ("options", lambda v: isinstance(v, dict), "an object"),
        ("elapsed_s", lambda v: matches(float, v), expected(float)),
        ("num_processes", lambda v: matches(int, v) and v >= 1, "a positive integer"),
    ):
        if key in state and not ok(state[key]):
            raise PerceiverLMError(f"{directory / STATE_FILE}: {key} must be {want}, got {shown(state[key])}")
    return state


def read_training_files(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(optimizer_state_dict, trainer_state)`` of a training checkpoint."""
    trainer_state = read_trainer_state(directory)
    try:
        with safetensors_name(directory / OPTIMIZER_FILE) as name:
            tensors = load_file(name)
    except FileNotFoundError:
        raise PerceiverLMError(f"{directory}: not a training checkpoint ({OPTIMIZER_FILE} missing)") from None
    except SafetensorError as err:
        raise PerceiverLMError(f"{directory / OPTIMIZER_FILE}: unreadable safetensors file ({err})") from None
    meta = trainer_state.pop("optimizer", None)
    try:
        return optimizer_from_safetensors(tensors, meta), trainer_state
    except (TypeError, KeyError, ValueError, AttributeError):
        raise PerceiverLMError(
            f"{directory}: corrupt training checkpoint (the optimizer entry of {STATE_FILE} does not describe "
            f"{OPTIMIZER_FILE})"
        ) from None


def describe(path: str | Path) -> str:
    """A human-readable summary of a checkpoint: shape, parameter count, step, last evaluation."""
    directory = resolve_model_dir(path)
    config = PerceiverConfig.load(directory / CONFIG_FILE)
    # Count parameters from the safetensors header: no need to read every weight.
    count = stored_parameters(directory / MODEL_FILE)
    lines = [f"checkpoint: {directory}", f"parameters: {count:,}", "model config:"]
    lines += [f"  {k}: {v}" for k, v in config.to_dict().items()]
    if (directory / STATE_FILE).is_file():
        trainer = read_trainer_state(directory)
        lines.append(
            f"training step: {trainer['step']} ({trainer.get('num_processes', 1)} process(es), "
            f"{trainer.get('elapsed_s', 0) / 60:.1f} min)"
        )
        last = trainer.get("eval") or {}
        if matches(float, last.get("bits_per_byte")) and matches(float, last.get("accuracy")):
            lines.append(
                f"last evaluation: {last['bits_per_byte']:.3f} bits per masked byte, accuracy {last['accuracy']:.3f}"
            )
        options = trainer.get("options") or {}
        data = options.get("data") if matches(list[str], options.get("data")) else []
        if options:
            lines.append("data: " + (", ".join(data) or str(options.get("dataset") or "built-in corpus")))
    return "\n".join(lines)
