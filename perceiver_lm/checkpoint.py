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

from perceiver_lm.config import MultiTaskConfig, PerceiverConfig
from perceiver_lm.errors import PerceiverLMError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TASKS_FILE = "tasks.json"  # present for task-decoder (fine-tuned) models
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


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
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``final`` only once everything in it is written."""
    final = Path(final)
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
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PerceiverLMError(
                f"{final}: disk full while writing the checkpoint; nothing was written there "
                "(free some space, then rerun with --resume to continue from the last checkpoint)"
            ) from None
        raise PerceiverLMError(f"{final}: could not write checkpoint ({err.strerror or err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_model_files(model: torch.nn.Module, config: PerceiverConfig, directory: Path) -> None:
    """Write config.json and model.safetensors into an existing (temporary) directory."""
    config.save(directory / CONFIG_FILE)
    tasks = getattr(model, "tasks", None)
    if isinstance(tasks, MultiTaskConfig):
        tasks.save(directory / TASKS_FILE)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / MODEL_FILE), metadata={"format": "pt", "library": "perceiver-lm"})


def save_model(model: torch.nn.Module, directory: str | Path) -> Path:
    """Save a model's weights and config atomically; returns the directory."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        write_model_files(model, model.config, tmp)
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


def load_state_dict(directory: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    file = directory / MODEL_FILE
    if not file.is_file():
        raise PerceiverLMError(f"{directory}: {MODEL_FILE} is missing")
    try:
        return load_file(str(file), device=str(map_location))
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


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a ``PerceiverLM`` from a checkpoint directory or a run directory (latest checkpoint)."""
    directory = resolve_model_dir(path)
    if (directory / TASKS_FILE).is_file():
        raise PerceiverLMError(f"{directory}: a fine-tuned task model, not a masked LM (load it with PerceiverClassifier)")
    return _load(directory, None, map_location)


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a ``PerceiverClassifier`` (task-query decoder) from a checkpoint or run directory."""
    directory = resolve_model_dir(path)
    if not (directory / TASKS_FILE).is_file():
        raise PerceiverLMError(f"{directory}: no {TASKS_FILE}; this is a masked LM, not a fine-tuned task model")
    return _load(directory, MultiTaskConfig.load(directory / TASKS_FILE), map_location)


def load_any(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Load whichever model a checkpoint holds: a ``PerceiverLM`` or a ``PerceiverClassifier``."""
    directory = resolve_model_dir(path)
    tasks = MultiTaskConfig.load(directory / TASKS_FILE) if (directory / TASKS_FILE).is_file() else None
    return _load(directory, tasks, map_location)


def _load(directory: Path, tasks: MultiTaskConfig | None, map_location: str | torch.device) -> torch.nn.Module:
    from perceiver_lm.model import PerceiverClassifier, PerceiverLM

    config = PerceiverConfig.load(directory / CONFIG_FILE)
    model = PerceiverLM(config) if tasks is None else PerceiverClassifier(config, tasks)
    state = load_state_dict(directory, map_location)
    check_state_dict(model, state, str(directory / MODEL_FILE))
    model.load_state_dict(state)
    return model.to(map_location).eval()


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


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entry in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def write_training_files(
    directory: Path, optimizer_state: dict[str, Any], trainer_state: dict[str, Any]
) -> None:
    tensors, meta = optimizer_to_safetensors(optimizer_state)
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    _write_json(directory / STATE_FILE, {**trainer_state, "optimizer": meta})


def read_training_files(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(optimizer_state_dict, trainer_state)`` of a training checkpoint."""
    state_file = directory / STATE_FILE
    try:
        trainer_state = json.loads(state_file.read_text())
        tensors = load_file(str(directory / OPTIMIZER_FILE))
    except FileNotFoundError as err:
        raise PerceiverLMError(f"{directory}: not a training checkpoint ({Path(err.filename).name} missing)") from None
    except (json.JSONDecodeError, SafetensorError) as err:
        raise PerceiverLMError(f"{directory}: corrupt training checkpoint ({err})") from None
    meta = trainer_state.pop("optimizer")
    return optimizer_from_safetensors(tensors, meta), trainer_state


def describe(path: str | Path) -> str:
    """A human-readable summary of a checkpoint: shape, parameter count, step, last evaluation."""
    directory = resolve_model_dir(path)
    config = PerceiverConfig.load(directory / CONFIG_FILE)
    # Count parameters from the safetensors header: no need to read every weight.
    try:
        with safe_open(str(directory / MODEL_FILE), framework="pt") as handle:
            count = sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    except (SafetensorError, OSError) as err:
        raise PerceiverLMError(f"{directory / MODEL_FILE}: unreadable safetensors file ({err})") from None
    lines = [f"checkpoint: {directory}", f"parameters: {count:,}", "model config:"]
    lines += [f"  {k}: {v}" for k, v in config.to_dict().items()]
    state_file = directory / STATE_FILE
    if state_file.is_file():
        trainer = json.loads(state_file.read_text())
        lines.append(f"training step: {trainer.get('step')} ({trainer.get('num_processes', 1)} process(es), {trainer.get('elapsed_s', 0) / 60:.1f} min)")
        if trainer.get("eval"):
            e = trainer["eval"]
            lines.append(f"last evaluation: {e['bits_per_byte']:.3f} bits per masked byte, accuracy {e['accuracy']:.3f}")
        options = trainer.get("options", {})
        if options:
            lines.append("data: " + (", ".join(options.get("data") or []) or options.get("dataset") or "built-in corpus"))
    return "\n".join(lines)
