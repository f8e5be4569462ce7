"""Masked-LM pretraining through Hugging Face Accelerate: one loop from one CPU to many GPUs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from perceiver_lm import checkpoint as ckpt
from perceiver_lm.config import PerceiverConfig
from perceiver_lm.data import (
    CorpusRange,
    MaskedWindows,
    MaskingOptions,
    StreamingWindows,
    builtin_corpus,
    collate_masked,
    corpus_from_texts,
    load_files,
    load_hf_texts,
    split_corpus,
)
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.model import PerceiverLM
from perceiver_lm.optim import Lamb, adamw, parameter_groups, warmup_cosine
from perceiver_lm.options import TrainingOptions, flag
from perceiver_lm.run_dir import (
    check_output_folder,
    claim_folder,
    clean_stale,
    finite_json,
    refuse_non_empty,
    remove_tree,
    user_entries,
)

LN2 = math.log(2.0)
# Options that decide which windows each step sees: a resumed run must keep them to continue the same order.
DATA_ORDER_OPTIONS = (
    "data",
    "dataset",
    "dataset_config",
    "dataset_split",
    "text_column",
    "streaming",
    "val_data",
    "val_fraction",
    "batch_size",
    "grad_accum",
    "seed",
    "mask_rate",
    "mask_unit",
)
METRICS_FILE = "metrics.jsonl"
# Instruction sets that run bf16 matmuls natively (oneDNN); without them bf16 is emulated and slower than fp32.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass
class PretrainResult:
    """What `pretrain` returns: where the run lives and how it ended."""

    output_dir: Path
    step: int
    checkpoint: Path | None
    eval_metrics: dict[str, float]
    main_process: bool = True


@dataclass
class PretrainData:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    description: str


def build_data(options: TrainingOptions, window: int) -> PretrainData:
    """Training windows and fixed validation windows from the configured source."""
    masking = MaskingOptions(options.mask_rate, options.mask_unit == "word")
    val_seed = options.seed + 7919  # validation masking never changes between evaluations
    if options.dataset and options.streaming:

        def texts():
            return load_hf_texts(
                options.dataset, options.dataset_config, options.dataset_split, options.text_column, True
            )

        head = StreamingWindows(texts, window, masking, val_seed)
        val = [example for _, example in zip(range(options.eval_windows), head, strict=False)]
        if len(val) < options.eval_windows:
            raise PerceiverLMError(
                f"--dataset {options.dataset}: stream holds fewer than {options.eval_windows + 1} windows"
            )
        train = StreamingWindows(texts, window, masking, options.seed, skip_windows=len(val))
        return PretrainData(train, val, f"{options.dataset} (streaming)")
    if options.dataset:
        corpus = corpus_from_texts(
            load_hf_texts(options.dataset, options.dataset_config, options.dataset_split, options.text_column, False),
            f"--dataset {options.dataset}",
        )
    elif options.data:
        corpus = load_files(options.data)
    else:
        corpus = builtin_corpus()
    if options.val_data:
        val_corpus = load_files(options.val_data)
        train_part, val_part = CorpusRange(corpus, 0, len(corpus)), CorpusRange(val_corpus, 0, len(val_corpus))
    else:
        train_part, val_part = split_corpus(corpus, window, options.val_fraction)
    train = MaskedWindows(train_part, window, masking, options.seed)
    val_all = MaskedWindows(val_part, window, masking, val_seed, shuffle=False)
    picks = np.unique(np.linspace(0, len(val_all) - 1, min(options.eval_windows, len(val_all))).round().astype(int))
    description = f"{corpus.name}: {len(train_part):,} training bytes, {len(val_part):,} validation bytes"
    return PretrainData(train, Subset(val_all, picks.tolist()), description)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the masked positions only (labels -100 are padding)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction=reduction)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, accelerator) -> dict[str, float]:
    """Masked-byte loss (nats), bits per masked byte and accuracy over the validation loader."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    for batch in loader:
        logits = model(batch["input_ids"], query_positions=batch["query_positions"]).logits
        labels = batch["labels"]
        valid = labels != -100
        per_byte = masked_lm_loss(logits, labels, reduction="none").view(labels.shape)  # [B, Q]
        stats = torch.stack(
            [per_byte.sum(1), ((logits.argmax(-1) == labels) & valid).sum(1).float(), valid.sum(1).float()], dim=1
        )  # [B, 3]
        totals += accelerator.gather_for_metrics(stats).sum(0).double().cpu()
    model.train()
    loss = (totals[0] / totals[2].clamp(min=1)).item()
    return {"loss": loss, "bits_per_byte": loss / LN2, "accuracy": (totals[1] / totals[2].clamp(min=1)).item()}


def _step_seed(seed: int, micro_step: int, world: int, rank: int) -> int:
    # Dropout randomness is a pure function of (seed, step, rank): resuming needs no RNG state.
    return (seed * 1_000_003 + micro_step * world + rank) % (2**63 - 1)


def _tracker_config(options: TrainingOptions, config: PerceiverConfig) -> dict[str, Any]:
    flat = {**{f"model/{k}": v for k, v in config.to_dict().items()}, **dataclasses.asdict(options)}
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}


def _write_checkpoint(accelerator, model, optimizer, config, options, step: int, state: dict[str, Any]) -> Path:
    output = Path(options.output_dir)
    path = output / f"checkpoint-{step:07d}"
    if accelerator.is_main_process:
        with ckpt.atomic_directory(path) as tmp:
            ckpt.write_model_files(accelerator.unwrap_model(model), config, tmp)
            ckpt.write_training_files(tmp, optimizer.state_dict(), {**state, "step": step})
        for old in ckpt.list_checkpoints(output)[: -options.keep_checkpoints]:
            remove_tree(old)
    accelerator.wait_for_everyone()
    return path


def _check_resume_config(saved: PerceiverConfig, config: PerceiverConfig, source: Path) -> None:
    if saved != config:
        diffs = [
            f"{k}: checkpoint {v!r} vs now {getattr(config, k)!r}"
            for k, v in saved.to_dict().items()
            if getattr(config, k) != v
        ]
        raise PerceiverLMError(
            f"{source}: checkpoint is from a different model config ({'; '.join(diffs)}); use the same "
            "--preset/--config"
        )


def _check_resume_order(
    trainer_state: dict[str, Any],
    options: TrainingOptions,
    window: int,
    config: PerceiverConfig,
    processes: int,
    source: Path,
) -> None:
    """Refuse to resume when an option that decides the data order changed since the checkpoint."""
    saved = trainer_state.get("options", {})
    changes = [
        f"{flag(name)} {saved[name]!r} -> {getattr(options, name)!r}"
        for name in DATA_ORDER_OPTIONS
        if name in saved and saved[name] != getattr(options, name)
    ]
    saved_window = saved.get("window") or config.max_seq_len
    if saved_window != window:
        changes.append(f"--window {saved_window} -> {window}")
    if trainer_state.get("num_processes", processes) != processes:
        changes.append(f"processes {trainer_state['num_processes']} -> {processes}")
    if changes:
        raise PerceiverLMError(
            f"{source}: cannot resume, {'; '.join(changes)}: which windows each step sees follows from these, "
            "so the run would not continue the checkpoint's data order; rerun with the checkpoint's values, "
            "or start over with --overwrite"
        )


def _trim_metrics(path: Path, step: int) -> int:
    """Keep the metrics records up to ``step`` (a killed run may have logged past its last checkpoint,
    and may have left half a line); returns how many records were dropped."""
    if not path.is_file():
        return 0
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
    return dropped


def _check_output(output: Path, options: TrainingOptions) -> None:
    """Refuse a non-empty --output-dir unless the user said what to do with it."""
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


def _tidy(output: Path, options: TrainingOptions) -> None:
    """Under the folder's lock: remove what killed runs left half-written, and with --overwrite the
    earlier run's checkpoints and metrics (only those: other files in the folder are the user's)."""
    notes = clean_stale(output)
    if options.overwrite:
        earlier = ckpt.list_checkpoints(output)
        for path in earlier:
            remove_tree(path)
        if (output / METRICS_FILE).is_file():
            (output / METRICS_FILE).unlink()
            notes.append(f"removed {METRICS_FILE}")
        if earlier:
            notes.append(f"removed {len(earlier)} earlier checkpoint(s)")
    if notes:
        print(f"note: {output}: {'; '.join(notes)}", file=sys.stderr, flush=True)


def _newest(output: Path) -> str:
    found = ckpt.list_checkpoints(output)
    return str(found[-1]) if found else "none"


def _all_finite(model: torch.nn.Module) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all().item())


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


def resolve_precision(
    mixed_precision: str, cpu: bool, flags: frozenset[str] | None = None, gpu: bool | None = None
) -> Precision:
    """Pick the autocast mode for ``--mixed-precision`` (``auto`` decides by the hardware).

    Args:
        mixed_precision: "auto", "no", "bf16" or "fp16".
        cpu: the run is forced onto the CPU (``--cpu`` or ``ACCELERATE_USE_CPU``).
        flags: CPU feature flags; default: this machine's (tests inject them).
        gpu: whether a CUDA GPU is there; default: ask torch.
    """
    cpu = cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    on_gpu = (torch.cuda.is_available() if gpu is None else gpu) and not cpu
    if not on_gpu and mixed_precision == "fp16":
        raise PerceiverLMError(
            "--mixed-precision fp16: CPU autocast has no fp16 path (it would silently run fp32); use bf16, no or auto"
        )
    flags = cpu_flags() if flags is None else flags
    native = [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]
    if mixed_precision == "no":
        return Precision("no", "fp32 (--mixed-precision no)")
    if mixed_precision in ("bf16", "fp16"):
        slow = "" if on_gpu or native else "; this CPU has no native bf16, so expect it slower than fp32"
        return Precision(mixed_precision, f"{mixed_precision} autocast (--mixed-precision {mixed_precision}{slow})")
    if on_gpu:
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "bf16 autocast (auto: a GPU with bf16)")
        return Precision("no", "fp32 (auto: this GPU has no bf16)")
    if native:
        return Precision("bf16", f"bf16 autocast (auto: this CPU has native bf16, {native[0]})")
    return Precision(
        "no", "fp32 (auto: this CPU has no native bf16, AVX512-BF16 or AMX, so bf16 would be emulated and slower)"
    )


def pretrain(options: TrainingOptions, config: PerceiverConfig) -> PretrainResult:
    """Pretrain a masked byte LM with Accelerate (one process or ``accelerate launch``).

    The run holds a lock on ``options.output_dir`` while it runs: a second run there is refused.

    Args:
        options: training options (data, schedule, evaluation, checkpoints).
        config: model shape, usually a preset.
    """
    window = options.window or config.max_seq_len
    if window > config.max_seq_len:
        raise PerceiverLMError(f"--window {window} is longer than the model's max_seq_len ({config.max_seq_len})")
    output = check_output_folder(options.output_dir, "--output-dir")
    main_rank = int(os.environ.get("RANK", "0")) == 0  # the process that will be Accelerate's main one
    with claim_folder(output, "--output-dir", lambda: _check_output(output, options), lock=main_rank):
        if main_rank:
            _tidy(output, options)
        return _pretrain(options, config, window, output)


def _pretrain(options: TrainingOptions, config: PerceiverConfig, window: int, output: Path) -> PretrainResult:
    from accelerate.utils import GradientAccumulationPlugin, set_seed

    existing = ckpt.list_checkpoints(output)
    source = existing[-1] if options.resume and existing else None
    if source is not None:  # refuse a checkpoint that cannot continue this run before building anything
        _check_resume_config(PerceiverConfig.load(source / ckpt.CONFIG_FILE), config, source)
        optimizer_state, trainer_state = ckpt.read_training_files(source)

    report = options.report_to
    if report == "auto":
        try:
            import tensorboard  # noqa: F401

            report = "tensorboard"
        except ImportError:
            report = "none"
    precision = resolve_precision(options.mixed_precision, options.cpu)
    accelerator = make_accelerator(
        cpu=options.cpu,
        mixed_precision=precision.mode,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=options.grad_accum, sync_with_dataloader=False
        ),
        log_with=None if report == "none" else report,
        project_dir=str(output),
    )
    main = accelerator.is_main_process

    def say(message: str) -> None:
        if main:
            print(message, file=sys.stderr, flush=True)

    processes = accelerator.num_processes
    if source is not None:
        _check_resume_order(trainer_state, options, window, config, processes, source)
    data = build_data(options, window)
    if not isinstance(data.train, StreamingWindows) and len(data.train) < options.batch_size * processes:
        raise PerceiverLMError(
            f"training data ({data.description}) holds {len(data.train)} window(s) of {window} bytes, "
            f"fewer than one batch ({options.batch_size} x {processes} process(es)); "
            "add data, or lower --batch-size or --window"
        )
    set_seed(options.seed)
    model = PerceiverLM(config)
    model.gradient_checkpointing_enable(options.gradient_checkpointing)
    groups = parameter_groups(model, options.weight_decay)
    optimizer = (Lamb if options.optimizer == "lamb" else adamw)(groups, lr=options.lr)

    step = 0
    elapsed_before = 0.0  # training time of earlier invocations of a resumed run
    last_eval: dict[str, float] = {}
    if source is not None:
        state = ckpt.load_state_dict(source)
        ckpt.check_state_dict(model, state, str(source / ckpt.MODEL_FILE))
        model.load_state_dict(state)
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            raise PerceiverLMError(
                f"{source}: optimizer state does not fit this model and --optimizer ({err})"
            ) from None
        step = trainer_state["step"]
        last_eval = trainer_state.get("eval", {})
        elapsed_before = float(trainer_state.get("elapsed_s") or 0.0)
        say(f"resuming from {source} at step {step}")
    elif options.resume:
        say(f"note: no checkpoint in {output} yet; starting from scratch")

    is_streaming = isinstance(data.train, StreamingWindows)
    loader_args = dict(batch_size=options.batch_size, collate_fn=collate_masked, num_workers=options.num_workers)
    # Full batches only: every step sees the same number of windows, in a resumed run too.
    train_loader = DataLoader(data.train, drop_last=not is_streaming, **loader_args)
    val_loader = DataLoader(data.val, **loader_args)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)

    metrics_file = output / METRICS_FILE
    if main:
        output.mkdir(parents=True, exist_ok=True)
        dropped = _trim_metrics(metrics_file, step)
        if dropped:
            say(
                f"note: dropped {dropped} record(s) of {metrics_file} past step {step} (logged after the last "
                "checkpoint)"
            )
    accelerator.init_trackers("pretrain", config=_tracker_config(options, config))
    say(
        f"{data.description}\nmodel: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{processes} process(es) on {accelerator.device}, {precision.reason}; "
        f"batch {options.batch_size}x{processes}x{options.grad_accum} windows of {window} bytes"
    )

    def log(record: dict[str, Any]) -> None:
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if main:
            with open(metrics_file, "a") as handle:
                handle.write(json.dumps(finite_json(record), allow_nan=False) + "\n")

    def set_lr(at_step: int) -> None:
        scale = warmup_cosine(at_step, options.warmup_steps, options.max_steps, options.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = options.lr * scale

    micro_step = step * options.grad_accum
    per_epoch = None if is_streaming else len(train_loader)
    if per_epoch == 0:  # every process needs a full batch, or the loop below would never reach a step
        raise PerceiverLMError(
            f"training data ({data.description}) gives this process no full batch of {options.batch_size}; add data or "
            "lower --batch-size"
        )
    epoch, skip = divmod(micro_step, per_epoch) if per_epoch else (0, micro_step)
    bytes_per_step = window * options.batch_size * processes * options.grad_accum
    started = time.monotonic()
    start_step = step
    checkpoint_path = None
    running_loss, running_count = torch.zeros((), device=accelerator.device), 0
    progress = None
    if main:
        from tqdm.auto import tqdm

        progress = tqdm(total=options.max_steps, initial=step, desc="pretrain", dynamic_ncols=True, file=sys.stderr)

    def evaluate_and_save(elapsed: float, run_eval: bool, save: bool) -> None:
        nonlocal last_eval, checkpoint_path
        if run_eval:
            last_eval = evaluate(model, val_loader, accelerator)
            log({"step": step, **{f"eval_{k}": v for k, v in last_eval.items()}, "elapsed_s": elapsed})
            say(
                f"\nstep {step}: eval loss {last_eval['loss']:.4f}, {last_eval['bits_per_byte']:.3f} bits/masked byte, "
                f"accuracy {last_eval['accuracy']:.3f}"
            )
        if save:
            if not _all_finite(model):
                raise PerceiverLMError(
                    f"step {step}: the weights are not finite; not saved (the newest checkpoint is {_newest(output)}); "
                    "lower --lr"
                )
            state = {
                "eval": last_eval,
                "options": dataclasses.asdict(options),
                "num_processes": processes,
                "elapsed_s": elapsed,
            }
            checkpoint_path = _write_checkpoint(accelerator, model, optimizer, config, options, step, state)

    try:
        model.train()
        set_lr(step)
        done = step >= options.max_steps
        while not done:
            loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            if not is_streaming:
                # Accelerate's loaders call dataset.set_epoch(their own iteration count) when iterated;
                # set theirs, so a resumed run's first full pass is epoch `epoch`, not 0.
                loader.set_epoch(epoch)
            for batch in loader:
                torch.manual_seed(_step_seed(options.seed, micro_step, processes, accelerator.process_index))
                with accelerator.accumulate(model):
                    logits = model(batch["input_ids"], query_positions=batch["query_positions"]).logits
                    loss = masked_lm_loss(logits, batch["labels"])
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and options.clip_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), options.clip_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                micro_step += 1
                running_loss += loss.detach().float()
                running_count += 1
                if not accelerator.sync_gradients:
                    continue
                step += 1
                lr = optimizer.param_groups[0]["lr"]  # the rate this step used
                set_lr(step)
                elapsed = elapsed_before + time.monotonic() - started
                out_of_time = options.max_minutes is not None and elapsed - elapsed_before >= options.max_minutes * 60
                # One check per step, agreed by all processes, so that they stop together.
                stop = torch.tensor(
                    [float(out_of_time), float(not torch.isfinite(running_loss).item())], device=accelerator.device
                )
                if processes > 1:
                    stop = accelerator.reduce(stop, "max")
                out_of_time = bool(stop[0].item())
                if stop[1].item():
                    raise PerceiverLMError(
                        f"step {step}: the training loss is not finite (lr {lr:g}); stopped without saving these "
                        f"weights (the newest checkpoint is {_newest(output)}); lower --lr, keep --clip-norm on, "
                        "or try --mixed-precision no"
                    )
                if step % options.log_every == 0 or step == options.max_steps:
                    rate = (step - start_step) * bytes_per_step / max(elapsed - elapsed_before, 1e-9)
                    train_loss = running_loss.item() / running_count
                    log({"step": step, "train_loss": train_loss, "lr": lr, "bytes_per_s": rate, "elapsed_s": elapsed})
                    if progress is not None:
                        progress.set_postfix(loss=f"{train_loss:.3f}", bytes_s=f"{rate:,.0f}")
                    running_loss, running_count = torch.zeros_like(running_loss), 0
                if progress is not None:
                    progress.update(1)
                done = step >= options.max_steps or out_of_time
                evaluate_and_save(
                    elapsed, step % options.eval_every == 0 or done, step % options.save_every == 0 or done
                )
                if done:
                    break
            if not done and is_streaming:
                say("note: the stream ended before --max-steps")
                if step > start_step:
                    evaluate_and_save(elapsed_before + time.monotonic() - started, True, True)
                break
            epoch, skip = epoch + 1, 0
    finally:
        # closed before any error is reported, so that the error is the last line the user sees
        if progress is not None:
            progress.close()
        accelerator.end_training()
    return PretrainResult(output, step, checkpoint_path, last_eval, main)
