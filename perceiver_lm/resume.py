"""What a run carries from step to step, and the rules for saving it and resuming from it.

`TrainState` is everything the loop carries; a checkpoint (``checkpoint-<step>/``) stores it with the
model and optimizer state, gathered from every process. `resume_source` finds the checkpoint a
``--resume`` run continues, `check_resume` refuses one that cannot continue this run (another shape,
another data order), `restore` loads it into a prepared run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from perceiver_lm import checkpoint as ckpt
from perceiver_lm.data import fingerprint
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.options import data_order_fields, flag, options_record
from perceiver_lm.run_dir import finite_json, remove_tree
from perceiver_lm.runtime import on_main

# A run is a `perceiver_lm.trainer.Run` (typed Any here: the trainer imports this module).
Run = Any


@dataclass
class TrainState:
    """Everything the loop carries between steps; a checkpoint stores it and a resumed run starts from it."""

    step: int = 0
    elapsed_s: float = 0.0  # training seconds so far, earlier invocations of a resumed run included
    last_eval: dict[str, float] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)  # the job's own records (GLUE: best scores, history)
    checkpoint: Path | None = None


def gather_state(model: torch.nn.Module, optimizer: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The whole model (and optimizer) state on the CPU, gathered from every process's shards.

    A collective call under FSDP (every process must make it); the same for DDP and one process.
    The optimizer state is keyed by parameter name, so it loads into any sharding of the same model.
    Under FSDP only the main process gets the tensors (the others get empty dicts).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return get_model_state_dict(model, options=options), {}
    return get_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=options)


def data_fingerprints(options: Any) -> dict[str, str]:
    """What the options' fields marked ``files`` name, as `fingerprint`s: how ``--resume`` knows the data again."""
    prints = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.metadata.get("files") and value:
            prints[f.name] = fingerprint(value if isinstance(value, list) else [value], flag(f.name))
    return prints


def run_record(run: Run, state: TrainState) -> dict[str, Any]:
    """What a checkpoint (and a model card) records about the run so far."""
    return {
        "data_fingerprints": run.fingerprints,
        "step": state.step,
        "eval": state.last_eval,
        "job": state.job,
        "options": options_record(run.options),
        "num_processes": run.accelerator.num_processes,
        "elapsed_s": state.elapsed_s,
        "card": run.card,
    }


def save_checkpoint(run: Run, state: TrainState) -> Path:
    """Write ``checkpoint-<step>`` (model, optimizer, `TrainState`) atomically; keep the newest few.

    Every process takes part (the state is gathered from all of them); the main process writes.
    """
    accelerator, step = run.accelerator, state.step
    model_state, optimizer_state = gather_state(run.model, run.optimizer)

    def check_finite() -> None:  # on the main process, which holds the gathered weights
        if not all(bool(torch.isfinite(t).all()) for t in model_state.values()):
            raise PerceiverLMError(
                f"step {step}: the weights are not finite; not saved (the newest checkpoint is "
                f"{newest_checkpoint(run.output)}); lower --lr"
            )

    on_main(accelerator, check_finite, f"step {step}: checking the weights")
    path = run.output / f"checkpoint-{step:07d}"
    trainer_state = run_record(run, state)

    def write() -> None:
        model = accelerator.unwrap_model(run.model, keep_torch_compile=False)
        with ckpt.atomic_directory(path) as tmp:
            ckpt.write_model_files(model, model.config, tmp, trainer_state, model_state)
            ckpt.write_training_files(tmp, optimizer_state, finite_json(trainer_state))
        for old in ckpt.list_checkpoints(run.output)[: -run.schedule.keep_checkpoints]:
            remove_tree(old)

    on_main(accelerator, write, f"writing {path}")
    state.checkpoint = path
    return path


def save_model_copy(run: Run, state: TrainState, folder: Path, scores: dict[str, float]) -> None:
    """Write the run's current model (weights and model card, no optimizer: not resumable) to ``folder``,
    e.g. the best model so far; ``scores`` are the evaluation its card names. Every process takes part."""
    weights, _ = gather_state(run.model)  # collective: the model may be sharded
    card = {**run_record(run, state), "eval": scores}
    model = run.accelerator.unwrap_model(run.model, keep_torch_compile=False)
    on_main(run.accelerator, lambda: ckpt.save_model(model, folder, card, weights), f"writing {folder}")


def load_state(
    model: torch.nn.Module, optimizer: Any, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any]
) -> None:
    """Load a whole (gathered) model and optimizer state into a model that may be sharded, on every process.

    Call it after `accelerator.prepare`: the optimizer's tensors then land where the prepared
    optimizer keeps its own (AdamW's step counters among them).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    options = StateDictOptions(full_state_dict=True)
    inner = getattr(optimizer, "optimizer", optimizer)
    if all(isinstance(k, int) for k in optimizer_state.get("state", {})):
        # Written by optimizer.state_dict() (parameters by index, as older checkpoints are): load the usual way.
        set_model_state_dict(model, model_state, options=options)
        inner.load_state_dict(optimizer_state)
        return
    set_state_dict(model, inner, model_state_dict=model_state, optim_state_dict=optimizer_state, options=options)


def resume_source(output: Path, resume: bool) -> Path | None:
    """The checkpoint a ``--resume`` run continues from, or None (no --resume, or nothing saved yet)."""
    existing = ckpt.list_checkpoints(output)
    return existing[-1] if resume and existing else None


def check_resume(
    source: Path,
    model: torch.nn.Module,
    options: Any,
    processes: int,
    also: tuple[str, ...] = (),
    fingerprints: dict[str, str] | None = None,
) -> None:
    """Refuse a checkpoint that cannot continue this run: another model shape or task set, a change in an
    option that decides which examples each step sees (the options' fields marked ``data_order``, and
    ``also``; for files, a change in what they hold: ``fingerprints``, default `data_fingerprints`), or another
    number of processes."""
    order = data_order_fields(type(options)) + also
    _, config, tasks = ckpt.read_model_dir(source)
    if config != model.config:
        diffs = config.differences(model.config, "checkpoint", "now")
        raise PerceiverLMError(
            f"{source}: checkpoint is from a different model config ({diffs}); use the same --preset/--config"
        )
    if tasks != getattr(model, "tasks", None):
        raise PerceiverLMError(f"{source}: checkpoint holds other task heads than this run; use the same --tasks")
    trainer_state = ckpt.read_trainer_state(source)
    saved, now = trainer_state.get("options", {}), options_record(options)
    saved_prints = trainer_state.get("data_fingerprints")  # None in checkpoints older than fingerprints
    prints = fingerprints if fingerprints is not None else data_fingerprints(options)
    changes = []
    for name in order:
        if isinstance(saved_prints, dict) and (name in saved_prints or name in prints):
            # files: the same content under any spelling is the same data, and other content is not
            if saved_prints.get(name) != prints.get(name):
                changes.append(f"{flag(name)} {now[name]!r}: its files hold other data than the checkpoint's run read")
        elif name in saved and saved[name] != now[name]:
            changes.append(f"{flag(name)} {saved[name]!r} -> {now[name]!r}")
    if trainer_state.get("num_processes", processes) != processes:
        changes.append(f"processes {trainer_state['num_processes']} -> {processes}")
    if changes:
        raise PerceiverLMError(
            f"{source}: cannot resume, {'; '.join(changes)}: which examples each step sees follows from these, "
            "so the run would not continue the checkpoint's data order; rerun with the checkpoint's values, "
            "or start over with --overwrite"
        )


def restore(run: Run, source: Path) -> TrainState:
    """Load a checkpoint's weights, optimizer state and `TrainState` into a prepared run.

    The optimizer state is loaded after `accelerator.prepare`, so that its tensors (AdamW's step
    counters among them) land where the prepared optimizer keeps its own.
    """
    optimizer_state, trainer_state = ckpt.read_training_files(source)
    weights = ckpt.load_state_dict(source)
    ckpt.check_state_dict(
        run.accelerator.unwrap_model(run.model, keep_torch_compile=False), weights, str(source / ckpt.MODEL_FILE)
    )
    try:
        load_state(run.model, run.optimizer, weights, optimizer_state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PerceiverLMError(f"{source}: state does not fit this model and optimizer ({first[:300]})") from None
    step = trainer_state["step"]
    run.say(f"resuming from {source} at step {step}")
    return TrainState(
        step=step,
        elapsed_s=float(trainer_state.get("elapsed_s") or 0.0),
        last_eval=trainer_state.get("eval", {}),
        job=trainer_state.get("job", {}),
        checkpoint=source,
    )


def newest_checkpoint(output: Path) -> str:
    found = ckpt.list_checkpoints(output)
    return str(found[-1]) if found else "none"
