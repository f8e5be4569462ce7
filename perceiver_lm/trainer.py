"""The one training loop, and `train`: the order every job's run follows, owned in one place.

`train(options, job)` claims the run folder, builds the Accelerator, seeds, asks the job for its
model, checks a ``--resume`` checkpoint against it before any data is read, asks the job for its
data and optimizer, prepares them, restores the checkpoint after `prepare`, and runs `fit`. `fit` has
the canonical Accelerate shape (prepare -> accumulate -> backward -> clip -> step -> evaluate with
gather_for_metrics -> save). What a job decides (its model, data, optimizer, schedule, the loss of a
batch, what evaluating means, what else it writes) is the `Job` protocol; masked-LM pretraining
(`perceiver_lm.training`) and GLUE fine-tuning (`tasks.finetune.finetune`) are the two jobs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from perceiver_lm.errors import PerceiverLMError, Terminated
from perceiver_lm.optim import warmup_cosine
from perceiver_lm.options import flag
from perceiver_lm.resume import (
    TrainState,
    check_resume,
    data_fingerprints,
    newest_checkpoint,
    restore,
    resume_source,
    save_checkpoint,
)
from perceiver_lm.run_dir import finite_json, run_folder
from perceiver_lm.runtime import finish_trackers, on_main, use_accelerator

METRICS_FILE = "metrics.jsonl"


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


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Tell a (prepared) loader which epoch it starts.

    Accelerate's loaders call set_epoch(their own iteration count) on their dataset and sampler when
    iterated; setting theirs makes a resumed run's first full pass epoch ``epoch``, not 0.
    """
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


@dataclass
class Data:
    """What a job's data gives the loop, before `accelerator.prepare`."""

    train: DataLoader
    evaluation: list[DataLoader]  # prepared with the model; the job finds them again as ``run.eval_loaders``
    unit: str  # what a step reads, for the logged rate: "bytes", "examples"
    per_step: int  # units per optimizer step on one process and one micro-batch
    streaming: bool = False  # the train loader is a stream that splits itself by process: not prepared
    sampler: Any = None  # a batch sampler whose order follows its epoch (``set_epoch``), told each epoch


class Job(Protocol):
    """What a training job decides; `train` calls these in this order, `fit` the last two on every step."""

    name: str  # progress-bar label
    slots: tuple[str, ...]  # names of the running training losses (one per GLUE task)
    produced: tuple[str, ...]  # files/folders a run writes besides checkpoints (``--overwrite`` removes them)
    options: Any  # the run's options dataclass; `build_model` may fill defaults that depend on the model
    # Optional: option names that fix this run's data order beyond the fields marked ``data_order`` (a stream's
    # --eval-windows); `train` reads it with getattr, so a job without it has none.
    also_data_order: tuple[str, ...]

    def accelerator_kwargs(self, output: Path) -> dict[str, Any]:
        """More arguments for the run's Accelerator (trackers, DDP settings)."""

    def build_model(self, source: Path | None) -> torch.nn.Module:
        """The model to train, before `prepare`; ``source`` is the checkpoint a resumed run will load."""

    def build_data(self, model: torch.nn.Module, accelerator: Any) -> Data:
        """The training and evaluation loaders (not yet prepared); may print what it loaded."""

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimizer over ``model``'s parameter groups."""

    def schedule(self, batches_per_epoch: int | None) -> Schedule:
        """The schedule; ``batches_per_epoch`` is the prepared train loader's length (None for a stream)."""

    def started(self, run: Run, state: TrainState, source: Path | None) -> str:
        """Last checks once the state is restored (and trackers started); returns the job's part of the start line."""

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """The batch's loss and the slot it counts towards."""

    def validate(self, run: Run, state: TrainState, train_loss: dict[str, float]) -> dict[str, float]:
        """Evaluate, record and report; returns the numbers a checkpoint keeps as its last evaluation."""

    def card(self) -> list[str]:
        """Lines the model card of every saved model says about how it was trained (its data, its start)."""


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
    eval_loaders: list[Any] = field(default_factory=list)
    sampler: Any = None  # the job's epoch-ordered batch sampler, if any
    streaming: bool = False
    place_batches: bool = False  # the train loader is not Accelerate's: move its batches to the device here
    card: list[str] = field(default_factory=list)  # the job's model-card lines
    fingerprints: dict[str, str] = field(default_factory=dict)  # what the data files hold (`data_fingerprints`)

    def say(self, message: str) -> None:
        self.accelerator.print(message, file=sys.stderr, flush=True)

    def log(self, record: dict[str, Any]) -> None:
        """One record to the trackers and to ``metrics.jsonl`` (main process)."""
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if self.accelerator.is_main_process:
            with open(self.output / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(finite_json(record), allow_nan=False) + "\n")


def train(options: Any, job: Job, accelerator: Any = None) -> TrainState:
    """Run ``job`` from its options to the end of its schedule (or its time limit), resuming with ``--resume``.

    The run holds a lock on ``options.output_dir`` while it runs (a second run there is refused).

    Args:
        options: the job's options dataclass: output_dir, resume, overwrite, seed, mixed_precision, cpu,
            grad_accum, compile (optional) and the schedule's fields, as `TrainingOptions` and `GlueOptions` have them.
        job: what is trained and how (see `Job`).
        accelerator: the Accelerator to train with; default: one built from the options.
    """
    with run_folder(options, (METRICS_FILE, *job.produced)) as output:
        accelerator, precision = use_accelerator(
            accelerator,
            options.mixed_precision,
            options.cpu,
            options.grad_accum,
            compile=getattr(options, "compile", False),  # optional: a job of your own may leave it out
            **job.accelerator_kwargs(output),
        )
        try:
            with _sigterm_stops_at_a_step():
                run, state = _prepare_run(job, output, accelerator, precision)
                return fit(run, job, state)
        finally:
            finish_trackers(accelerator)


# Set by SIGTERM while `train` runs: the loop checkpoints after the step in progress and stops (`_after_step`).
_SIGTERM = threading.Event()


@contextlib.contextmanager
def _sigterm_stops_at_a_step() -> Iterator[None]:
    """SIGTERM (what SLURM and Kubernetes send before they kill a job) ends the current step, writes a
    checkpoint and raises `Terminated`, instead of killing the run with nothing saved since the last one."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    _SIGTERM.clear()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _SIGTERM.set())
    try:
        yield  # a SIGTERM after the last step changes nothing: the run ends as it would have
    finally:
        signal.signal(signal.SIGTERM, previous)


def _prepare_run(job: Job, output: Path, accelerator: Any, precision: str) -> tuple[Run, TrainState]:
    """The fixed order of a run's start: seed, model, resume check, data, optimizer, prepare, restore."""
    from accelerate.utils import set_seed

    processes = accelerator.num_processes
    set_seed(job.options.seed)
    source = resume_source(output, job.options.resume)
    model = job.build_model(source)
    options = job.options  # with the defaults the model decided, which the resume check compares
    fingerprints = data_fingerprints(options)
    if source is not None:  # before the data is loaded: a refused resume says only why
        check_resume(source, model, options, processes, getattr(job, "also_data_order", ()), fingerprints)
    elif options.resume:
        accelerator.print(f"note: no checkpoint in {output} yet; starting from scratch", file=sys.stderr)
    data = job.build_data(model, accelerator)
    optimizer = job.build_optimizer(model)
    if data.streaming:  # the stream splits itself by process; Accelerate would dispatch every batch from process 0
        model, optimizer, *evaluation = accelerator.prepare(model, optimizer, *data.evaluation)
        train_loader = data.train
    else:
        model, optimizer, train_loader, *evaluation = accelerator.prepare(
            model, optimizer, data.train, *data.evaluation
        )
    schedule = job.schedule(None if data.streaming else len(train_loader))
    per_step = data.per_step * processes * options.grad_accum
    run = Run(accelerator, model, optimizer, train_loader, output, schedule, options, (data.unit, per_step))
    run.eval_loaders, run.sampler, run.card = evaluation, data.sampler, job.card()
    run.fingerprints = fingerprints
    run.streaming = run.place_batches = data.streaming
    state = restore(run, source) if source is not None else TrainState()
    detail = job.started(run, state, source)
    run.say(
        f"model: {sum(p.numel() for p in model.parameters()):,} parameters; {processes} process(es) on "
        f"{accelerator.device}, {precision}; {detail}"
    )
    return run, state


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
        self, window: int, accelerator: Any, flags: tuple[bool, ...] = (), reset: bool = True
    ) -> tuple[dict[str, float], list[bool]]:
        """Mean loss per slot over all processes since the window was last reset, and for each of ``flags``
        whether any process raised it (processes agree on stopping this way)."""
        raised = torch.tensor([float(f) for f in flags], device=self.sums.device)
        values = torch.cat([self.sums[window].flatten(), raised])
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, "sum")
        host = values.tolist()
        if reset:
            self.sums[window].zero_()
        means = {s: host[2 * i] / host[2 * i + 1] for i, s in enumerate(self.slots) if host[2 * i + 1]}
        return means, [v > 0 for v in host[len(host) - len(flags) :]]


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
        set_loader_epoch(loader, epoch)
        if run.sampler is not None:
            run.sampler.set_epoch(epoch)
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
    terminated = _SIGTERM.is_set()
    single = accelerator.num_processes == 1
    if not (log_due or eval_due or save_due or (single and (out_of_time or terminated))):
        return False  # no host sync on an ordinary step
    # The processes agree here on stopping (one reduce); several processes check the clock and SIGTERM only here.
    means, (out_of_time, terminated) = losses.read(
        losses.SINCE_LOG, accelerator, (out_of_time, terminated), reset=log_due or done
    )
    if not all(map(math.isfinite, means.values())):
        raise PerceiverLMError(
            f"step {step}: the training loss is not finite (lr {lr:g}); stopped without saving these weights (the "
            f"newest checkpoint is {newest_checkpoint(run.output)}); lower --lr, keep --clip-norm on, or try "
            "--mixed-precision no"
        )
    if terminated and not done:  # no evaluation: a scheduler's grace period is short
        state.elapsed_s = clock.elapsed()
        save_checkpoint(run, state)
        raise Terminated(f"terminated (SIGTERM) after step {step}: saved {state.checkpoint}; continue with --resume")
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
