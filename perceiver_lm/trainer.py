"""The one training loop: masked-LM pretraining and GLUE fine-tuning plug into it as jobs.

The loop has the canonical Accelerate shape (prepare -> accumulate -> backward -> clip -> step ->
evaluate with gather_for_metrics -> save). What it carries from step to step lives in `TrainState`
and is what a checkpoint stores, so every job resumes the same way. What differs between jobs (the
loss of a batch, what evaluation means, what else a run writes) is a `Job`. The caller owns the
Accelerator; `use_accelerator` checks it, or builds the usual one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from perceiver_lm import checkpoint as ckpt
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.optim import warmup_cosine
from perceiver_lm.options import flag
from perceiver_lm.run_dir import (
    check_output_folder,
    claim_folder,
    clean_stale,
    finite_json,
    refuse_non_empty,
    remove_tree,
    user_entries,
)

METRICS_FILE = "metrics.jsonl"
# Instruction sets that run bf16 matmuls natively (oneDNN); without them bf16 is emulated and slower than fp32.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Schedule:
    """When the loop steps, logs, evaluates, saves and stops; a job builds it from its options."""

    max_steps: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    clip_norm: float
    seed: int
    log_every: int
    eval_every: int
    save_every: int
    keep_checkpoints: int
    max_minutes: float | None = None
    steps_per_epoch: int = 0  # for reports only; 0 where there are no epochs (a stream)

    @classmethod
    def of(cls, options: Any, **fields: Any) -> Schedule:
        """The schedule an options dataclass asks for: its fields of the same names, unless given in ``fields``."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in fields]
        return cls(**{name: getattr(options, name) for name in names if hasattr(options, name)}, **fields)

    def lr_at(self, step: int) -> float:
        return self.lr * warmup_cosine(step, self.warmup_steps, self.max_steps, self.min_lr_ratio)


@dataclass
class TrainState:
    """Everything the loop carries between steps; a checkpoint stores it and a resumed run starts from it."""

    step: int = 0
    elapsed_s: float = 0.0  # training seconds so far, earlier invocations of a resumed run included
    last_eval: dict[str, float] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)  # the job's own records (GLUE: best scores, history)
    checkpoint: Path | None = None


class Job(Protocol):
    """What a training job plugs into `fit`."""

    name: str  # progress-bar label
    slots: tuple[str, ...]  # names of the running training losses (one per GLUE task)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """The batch's loss and the slot it counts towards."""

    def validate(self, run: Run, state: TrainState, train_loss: dict[str, float]) -> dict[str, float]:
        """Evaluate, record and report; returns the numbers a checkpoint keeps as its last evaluation."""


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Tell a (prepared) loader which epoch it starts.

    Accelerate's loaders call set_epoch(their own iteration count) on their dataset and sampler when
    iterated; setting theirs makes a resumed run's first full pass epoch ``epoch``, not 0.
    """
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


@dataclass
class Run:
    """One training run once `accelerator.prepare` has run: what the loop drives and where it writes."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    output: Path
    schedule: Schedule
    options: Any  # the job's options dataclass, stored with every checkpoint
    throughput: tuple[str, int]  # ("bytes", bytes per optimizer step) for the logged rate
    set_epoch: Callable[[Any, int], None] = set_loader_epoch
    streaming: bool = False
    place_batches: bool = False  # the train loader is not Accelerate's: move its batches to the device here

    def say(self, message: str) -> None:
        self.accelerator.print(message, file=sys.stderr, flush=True)

    def log(self, record: dict[str, Any]) -> None:
        """One record to the trackers and to ``metrics.jsonl`` (main process)."""
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if self.accelerator.is_main_process:
            with open(self.output / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(finite_json(record), allow_nan=False) + "\n")


class _RunningLoss:
    """Training-loss sums per slot on the device: adding a step costs no host sync, reading costs one."""

    SINCE_LOG, SINCE_EVAL = 0, 1

    def __init__(self, slots: tuple[str, ...], device: torch.device) -> None:
        self.slots = slots
        self.sums = torch.zeros(2, len(slots), 2, device=device)  # [window, slot, (sum, count)]

    def add(self, loss: torch.Tensor, slot: int) -> None:
        self.sums[:, slot, 0] += loss.detach().float()
        self.sums[:, slot, 1] += 1

    def read(
        self, window: int, accelerator: Any, flag_up: bool = False, reset: bool = True
    ) -> tuple[dict[str, float], bool]:
        """Mean loss per slot over all processes since the window was last reset, and whether any process
        raised its flag (processes agree on stopping this way)."""
        values = torch.cat([self.sums[window].flatten(), torch.tensor([float(flag_up)], device=self.sums.device)])
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, "sum")
        host = values.tolist()
        if reset:
            self.sums[window].zero_()
        means = {s: host[2 * i] / host[2 * i + 1] for i, s in enumerate(self.slots) if host[2 * i + 1]}
        return means, host[-1] > 0


def step_seed(seed: int, micro_step: int, world: int, rank: int) -> int:
    """Dropout randomness as a pure function of (seed, step, rank): resuming needs no RNG state."""
    return (seed * 1_000_003 + micro_step * world + rank) % (2**63 - 1)


def fit(run: Run, job: Job, state: TrainState) -> TrainState:
    """Train from ``state.step`` to the end of the schedule (or its time limit): log, evaluate and save on the way.

    Args:
        run: the prepared model, optimizer and loader, with the schedule and output folder.
        job: the loss and evaluation of the task being trained.
        state: where to start (a fresh state, or one restored by `restore`); updated in place.
    """
    accelerator, model, schedule = run.accelerator, run.model, run.schedule
    clock = _Clock(state)
    losses = _RunningLoss(job.slots, accelerator.device)
    micro_step = state.step * accelerator.gradient_accumulation_steps
    on_main(accelerator, lambda: _trim_metrics(run.output / METRICS_FILE, state.step, run), "tidying metrics.jsonl")
    if state.step >= schedule.max_steps:  # a finished run resumed: nothing left to train
        run.say(f"note: the run is at step {state.step}, its --max-steps; nothing to train")
        return state
    progress = _progress_bar(run, job, state)
    try:
        model.train()
        _set_lr(run, state.step)
        for batch in _batches(run, state):
            torch.manual_seed(
                step_seed(schedule.seed, micro_step, accelerator.num_processes, accelerator.process_index)
            )
            with accelerator.accumulate(model):
                loss, slot = job.loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and schedule.clip_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), schedule.clip_norm)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
            micro_step += 1
            losses.add(loss, slot)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            lr = run.schedule.lr_at(state.step - 1)  # the schedule's rate this step used
            _set_lr(run, state.step)
            if progress is not None:
                progress.update(1)
            if _after_step(run, job, state, losses, clock, lr, progress):
                break
        else:  # only a stream runs out before the schedule ends
            run.say("note: the stream ended before --max-steps")
            if state.step > clock.start_step:
                state.elapsed_s = clock.elapsed()
                state.last_eval = job.validate(run, state, losses.read(losses.SINCE_EVAL, accelerator)[0])
                save_checkpoint(run, state)
    finally:
        # closed before any error is reported, so that the error is the last line the user sees
        if progress is not None:
            progress.close()
    return state


class _Clock:
    def __init__(self, state: TrainState) -> None:
        self.started, self.before, self.start_step = time.monotonic(), state.elapsed_s, state.step

    def this_run(self) -> float:
        return time.monotonic() - self.started

    def elapsed(self) -> float:
        return self.before + self.this_run()


def _progress_bar(run: Run, job: Job, state: TrainState):
    if not run.accelerator.is_main_process:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.schedule.max_steps, initial=state.step, desc=job.name, dynamic_ncols=True, file=sys.stderr)


def _set_lr(run: Run, step: int) -> None:
    """The schedule's rate for ``step``, times each group's ``lr_scale``; 0 before its ``start_step``."""
    rate = run.schedule.lr_at(step)
    for group in run.optimizer.param_groups:
        group["lr"] = rate * group.get("lr_scale", 1.0) if step >= group.get("start_step", 0) else 0.0


def _batches(run: Run, state: TrainState) -> Iterator[dict[str, Any]]:
    """Batches from where ``state`` left off: epoch after epoch, or once through a stream."""
    per_epoch = None if run.streaming else len(run.train_loader)
    if per_epoch == 0:  # every process needs a full batch, or the loop would never reach a step
        raise PerceiverLMError(
            f"the training data gives this process no full batch; add data or lower {flag('batch_size')}"
        )
    micro_step = state.step * run.accelerator.gradient_accumulation_steps
    epoch, skip = divmod(micro_step, per_epoch) if per_epoch else (0, micro_step)
    while True:
        loader = run.accelerator.skip_first_batches(run.train_loader, skip) if skip else run.train_loader
        run.set_epoch(loader, epoch)
        if run.place_batches:
            from accelerate.utils import send_to_device

            device = run.accelerator.device
            yield from (send_to_device(batch, device, non_blocking=device.type == "cuda") for batch in loader)
        else:
            yield from loader
        if run.streaming:
            return
        epoch, skip = epoch + 1, 0


def _after_step(
    run: Run, job: Job, state: TrainState, losses: _RunningLoss, clock: _Clock, lr: float, progress
) -> bool:
    """Log, evaluate and save when due; returns whether training is over."""
    schedule, accelerator, step = run.schedule, run.accelerator, state.step
    limit = None if schedule.max_minutes is None else schedule.max_minutes * 60
    out_of_time = limit is not None and clock.this_run() >= limit
    done = step >= schedule.max_steps
    log_due, eval_due, save_due = (
        step % every == 0 or done for every in (schedule.log_every, schedule.eval_every, schedule.save_every)
    )
    single = accelerator.num_processes == 1
    if not (log_due or eval_due or save_due or (single and out_of_time)):
        return False  # no host sync on an ordinary step
    # The processes agree here on stopping (one reduce); several processes check the clock only here.
    means, out_of_time = losses.read(losses.SINCE_LOG, accelerator, out_of_time, reset=log_due or done)
    if not all(map(math.isfinite, means.values())):
        raise PerceiverLMError(
            f"step {step}: the training loss is not finite (lr {lr:g}); stopped without saving these weights (the "
            f"newest checkpoint is {_newest(run.output)}); lower --lr, keep --clip-norm on, or try --mixed-precision no"
        )
    done = done or out_of_time
    state.elapsed_s = clock.elapsed()
    if log_due or done:
        this_run = max(clock.this_run(), 1e-9)
        unit, per_step = run.throughput
        record = {"step": step, "train_loss": sum(means.values()) / max(len(means), 1), "lr": lr}
        if len(means) > 1:
            record.update({f"train_loss/{slot}": value for slot, value in means.items()})
        rate = (step - clock.start_step) * per_step / this_run
        run.log({**record, f"{unit}_per_s": rate, "elapsed_s": state.elapsed_s})
        if progress is not None:
            progress.set_postfix(loss=f"{record['train_loss']:.3f}", **{f"{unit}_s": f"{rate:,.0f}"})
    if eval_due or done:
        state.last_eval = job.validate(run, state, losses.read(losses.SINCE_EVAL, accelerator)[0])
    if save_due or done:
        save_checkpoint(run, state)
    return done


def _newest(output: Path) -> str:
    found = ckpt.list_checkpoints(output)
    return str(found[-1]) if found else "none"


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


def on_main(accelerator: Any, action: Callable[[], Any], what: str) -> Any:
    """Run ``action`` on the main process only, and let every process know whether it failed.

    A write that fails on the main process (full disk, permissions) would otherwise leave the other
    processes waiting in their next collective until the timeout; here all of them stop together.
    """
    error, result = None, None
    if accelerator.is_main_process:
        try:
            result = action()
        except Exception as err:  # re-raised below, after the other processes have heard of it
            error = err
    failed = error is not None
    if accelerator.num_processes > 1:
        flag = torch.tensor([float(failed)], device=accelerator.device)
        failed = bool(accelerator.reduce(flag, "sum").item())
    if error is not None:
        raise error
    if failed:
        raise PerceiverLMError(f"{what} failed on the main process (its error is in that process's output)")
    return result


def run_record(run: Run, state: TrainState) -> dict[str, Any]:
    """What a checkpoint (and a model card) records about the run so far."""
    return {
        "step": state.step,
        "eval": state.last_eval,
        "job": state.job,
        "options": dataclasses.asdict(run.options),
        "num_processes": run.accelerator.num_processes,
        "elapsed_s": state.elapsed_s,
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
                f"{_newest(run.output)}); lower --lr"
            )

    on_main(accelerator, check_finite, f"step {step}: checking the weights")
    path = run.output / f"checkpoint-{step:07d}"
    trainer_state = run_record(run, state)

    def write() -> None:
        model = accelerator.unwrap_model(run.model)
        with ckpt.atomic_directory(path) as tmp:
            ckpt.write_model_files(model, model.config, tmp, trainer_state, model_state)
            ckpt.write_training_files(tmp, optimizer_state, finite_json(trainer_state))
        for old in ckpt.list_checkpoints(run.output)[: -run.schedule.keep_checkpoints]:
            remove_tree(old)

    on_main(accelerator, write, f"writing {path}")
    state.checkpoint = path
    return path


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


# ---- resuming ------------------------------------------------------------------------------------------------


def resume_source(output: Path, resume: bool) -> Path | None:
    """The checkpoint a ``--resume`` run continues from, or None (no --resume, or nothing saved yet)."""
    existing = ckpt.list_checkpoints(output)
    return existing[-1] if resume and existing else None


def check_resume(source: Path, model: torch.nn.Module, options: Any, order: tuple[str, ...], processes: int) -> None:
    """Refuse a checkpoint that cannot continue this run: another model shape or task set, or a change in
    an option that decides which examples each step sees (``order``), or another number of processes."""
    _, config, tasks = ckpt.read_model_dir(source)
    if config != model.config:
        diffs = config.differences(model.config, "checkpoint", "now")
        raise PerceiverLMError(
            f"{source}: checkpoint is from a different model config ({diffs}); use the same --preset/--config"
        )
    if tasks != getattr(model, "tasks", None):
        raise PerceiverLMError(f"{source}: checkpoint holds other task heads than this run; use the same --tasks")
    trainer_state = ckpt.read_trainer_state(source)
    saved = trainer_state.get("options", {})
    changes = [
        f"{flag(name)} {saved[name]!r} -> {getattr(options, name)!r}"
        for name in order
        if name in saved and saved[name] != getattr(options, name)
    ]
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
    ckpt.check_state_dict(run.accelerator.unwrap_model(run.model), weights, str(source / ckpt.MODEL_FILE))
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


def _trim_metrics(path: Path, step: int, run: Run) -> None:
    """Keep the metrics records up to ``step``: a killed run may have logged past its last checkpoint,
    and may have left half a line."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += bool(line.strip())
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
        run.say(f"note: dropped {dropped} record(s) of {path} past step {step} (logged after the last checkpoint)")


# ---- the run folder ------------------------------------------------------------------------------------------


@contextmanager
def run_folder(options: Any, produced: tuple[str, ...]) -> Iterator[Path]:
    """Claim ``options.output_dir`` for one run (a lock; a second run there is refused) and tidy it.

    A non-empty folder needs ``--resume`` or ``--overwrite``; with ``--overwrite`` the earlier run's
    checkpoints and the ``produced`` files/folders are removed (only those: other files are the user's).
    """
    output = check_output_folder(options.output_dir, "--output-dir")
    main_rank = int(os.environ.get("RANK", "0")) == 0  # the process that will be Accelerate's main one
    with claim_folder(output, "--output-dir", lambda: _check_output(output, options), lock=main_rank):
        if main_rank:
            _tidy(output, options.overwrite, produced)
        output.mkdir(parents=True, exist_ok=True)
        yield output


def _check_output(output: Path, options: Any) -> None:
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


# ---- the Accelerator -----------------------------------------------------------------------------------------


def use_accelerator(
    accelerator: Any, mixed_precision: str, cpu: bool, grad_accum: int = 1, **kwargs: Any
) -> tuple[Any, str]:
    """The caller's Accelerator checked against the options, or (None) one built from them; and a line
    saying which precision it trains in and why.

    Args:
        accelerator: the caller's Accelerator, or None.
        mixed_precision, cpu, grad_accum: the run's options (``--mixed-precision``, ``--cpu``, ``--grad-accum``).
        kwargs: more arguments for a new Accelerator (trackers, DDP settings).
    """
    from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin

    if accelerator is not None:
        if accelerator.gradient_accumulation_steps != grad_accum:
            raise PerceiverLMError(
                f"--grad-accum {grad_accum}, but the Accelerator given accumulates "
                f"{accelerator.gradient_accumulation_steps} step(s); build it with the same number"
            )
        if grad_accum > 1 and getattr(accelerator.gradient_state, "sync_with_dataloader", True):
            raise PerceiverLMError(
                "the Accelerator given syncs gradients at the end of each dataloader pass, so optimizer steps would "
                "not fall every --grad-accum batches (and a resumed run would start elsewhere); build it with "
                f"GradientAccumulationPlugin(num_steps={grad_accum}, sync_with_dataloader=False)"
            )
        check_launch(accelerator)
        return accelerator, f"{accelerator.mixed_precision} (the caller's Accelerator)"
    precision = resolve_precision(mixed_precision, cpu)
    gpu = torch.cuda.is_available() and not _cpu_forced(cpu)
    accelerator = make_accelerator(
        cpu=cpu,
        mixed_precision=precision.mode,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False),
        # Copies from pinned memory overlap the GPU's work instead of blocking the host.
        dataloader_config=DataLoaderConfiguration(non_blocking=gpu),
        **kwargs,
    )
    return accelerator, precision.reason


def finish_trackers(accelerator: Any) -> None:
    """End a run's trackers. Not `accelerator.end_training()`: that also ends the process group, which the
    caller's Accelerator (or the next run of a sweep under `accelerate launch`) still needs."""
    for tracker in accelerator.trackers:
        tracker.finish()


def end_processes() -> None:
    """End the process group at the end of a launched command (the CLI's, once its work is done)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def make_accelerator(**kwargs):
    """An Accelerator for one run, checked against the launch (see `check_launch`).

    Accelerate keeps its state process-wide and refuses a second Accelerator with another precision
    or device; a single-process run therefore starts from fresh state, so that runs one after another
    in one Python process (a notebook, a sweep, the test suite) may differ in precision.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not torch.distributed.is_initialized():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    accelerator = Accelerator(**kwargs)
    check_launch(accelerator)
    return accelerator


def check_launch(accelerator) -> None:
    """Fail when `accelerate launch` started several processes that do not train together."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != world:
        raise PerceiverLMError(
            f"launched {world} processes but Accelerate sees {accelerator.num_processes}; on CPU set "
            "ACCELERATE_USE_CPU=1"
        )


@dataclass(frozen=True)
class Precision:
    """The autocast mode a run uses and why; the why is printed in the run's first lines."""

    mode: str  # Accelerate's mixed_precision: "no", "bf16" or "fp16"
    reason: str


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def default_workers(gpu: bool) -> int:
    """DataLoader workers when none are asked for: on a GPU, workers prepare batches while it computes."""
    return min(4, os.cpu_count() or 1) if gpu else 0


def _cpu_forced(cpu: bool) -> bool:
    return cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def gpu_has_native_bf16(capability: tuple[int, int] | None = None) -> bool:
    """Whether the GPU computes in bf16 natively (Ampere, compute capability 8.0, and later); older GPUs
    (V100 7.0, T4 7.5) emulate it, slower than fp16. ``capability`` defaults to the current device's."""
    major, _ = torch.cuda.get_device_capability() if capability is None else capability
    return major >= 8


def resolve_precision(
    mixed_precision: str,
    cpu: bool,
    flags: frozenset[str] | None = None,
    gpu: bool | None = None,
    capability: tuple[int, int] | None = None,
) -> Precision:
    """Pick the autocast mode for ``--mixed-precision`` (``auto`` decides by the hardware).

    Args:
        mixed_precision: "auto", "no", "bf16" or "fp16".
        cpu: the run is forced onto the CPU (``--cpu`` or ``ACCELERATE_USE_CPU``).
        flags: CPU feature flags; default: this machine's (tests inject them).
        gpu: whether a CUDA GPU is there; default: ask torch.
        capability: the GPU's compute capability; default: ask torch (tests inject it).
    """
    on_gpu = (torch.cuda.is_available() if gpu is None else gpu) and not _cpu_forced(cpu)
    if not on_gpu and mixed_precision == "fp16":
        raise PerceiverLMError(
            "--mixed-precision fp16: CPU autocast has no fp16 path (it would silently run fp32); use bf16, no or auto"
        )
    flags = cpu_flags() if flags is None else flags
    native = [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]
    if mixed_precision == "no":
        return Precision("no", "fp32 (--mixed-precision no)")
    if on_gpu:
        native_gpu = gpu_has_native_bf16(capability)
        if mixed_precision == "auto":
            if native_gpu:
                return Precision("bf16", "bf16 autocast (auto: a GPU with native bf16)")
            return Precision("fp16", "fp16 autocast with a loss scaler (auto: this GPU has no native bf16)")
        slow = "" if native_gpu or mixed_precision == "fp16" else "; this GPU emulates bf16, so expect it slow"
        return Precision(mixed_precision, f"{mixed_precision} autocast (--mixed-precision {mixed_precision}{slow})")
    if mixed_precision == "bf16":
        slow = "" if native else "; this CPU has no native bf16, so expect it slower than fp32"
        return Precision("bf16", f"bf16 autocast (--mixed-precision bf16{slow})")
    if native:
        return Precision("bf16", f"bf16 autocast (auto: this CPU has native bf16, {native[0]})")
    return Precision(
        "no", "fp32 (auto: this CPU has no native bf16, AVX512-BF16 or AMX, so bf16 would be emulated and slower)"
    )
